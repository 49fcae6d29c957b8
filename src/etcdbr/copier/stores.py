"""Opening the copier's two stores: the primary must work, a secondary that fails costs only the copier.

(These three functions move to ``snapstore/`` with the rest of store opening.)
"""

from __future__ import annotations

import logging
from typing import Callable

from ..config import Config, StoreConfig
from ..errors import ConfigError, EtcdbrError, StoreError
from ..logs import redact
from ..snapstore import SnapStore, open_store

log = logging.getLogger("etcdbr.copier")


def _open_checked(store_config: StoreConfig, opener: Callable[[StoreConfig], SnapStore]) -> SnapStore:
    store = opener(store_config)
    try:
        store.check()
    except BaseException:
        store.close()
        raise
    return store


def _same_location(a: StoreConfig, b: StoreConfig) -> bool:
    return (a.effective_provider, a.container, a.prefix_v2, a.endpoint_override) == (
        b.effective_provider, b.container, b.prefix_v2, b.endpoint_override)


def build_stores(config: Config, opener: Callable[[StoreConfig], SnapStore] = open_store
                 ) -> tuple[SnapStore, SnapStore | None]:
    """Open the primary and, when sync is enabled, the secondary store.

    Raises the primary's error when the primary cannot be opened and checked (fatal: snapshots
    would go nowhere). A secondary that fails only costs the copier: the caller gets ``None``.
    """
    primary: SnapStore | None = None
    primary_error: EtcdbrError | None = None
    try:
        primary = _open_checked(config.store, opener)
    except EtcdbrError as exc:
        primary_error = exc

    secondary: SnapStore | None = None
    secondary_error: EtcdbrError | None = None
    if config.sync.enabled:
        if not config.secondary_configured:
            secondary_error = ConfigError("--backup-sync-enabled is set but no --secondary-storage-provider is configured")
        elif _same_location(config.store, config.secondary):
            secondary_error = ConfigError("the secondary snapstore is the same location as the primary")
        else:
            try:
                secondary = _open_checked(config.secondary, opener)
            except EtcdbrError as exc:
                secondary_error = exc
    elif config.secondary_configured:
        log.info("secondary snapstore configured but --backup-sync-enabled is false; not using it",
                 extra={"secondary": config.secondary.display})

    if primary_error is not None:
        if secondary is not None:
            secondary.close()
        if secondary_error is not None:
            raise StoreError(f"both snapstores failed to initialise: primary: {primary_error}; "
                             f"secondary: {secondary_error}") from primary_error
        raise primary_error

    assert primary is not None
    if secondary_error is not None:
        log.warning("Only primary snapstore available, using single endpoint",
                    extra={"primary": primary.display, "secondary": config.secondary.display,
                           "reason": redact(str(secondary_error))})
        return primary, None
    if secondary is not None:
        log.info(f"Creating snapstore with backup copier - Primary: {primary.display}, Secondary: {secondary.display}")
    return primary, secondary
