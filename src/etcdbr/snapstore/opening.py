"""Opening stores: one endpoint (:func:`open_store`), or the primary and secondary of a server
(:func:`open_stores`).

Providers are imported on first use, so running against S3 never imports the Azure SDK, and a
provider whose SDK is not installed is refused with the command that installs it.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Callable

from ..errors import ConfigError, EtcdbrError, StoreError, not_installed
from ..logs import redact
from .base import SnapStore
from .providers import IMPLEMENTATIONS, PROVIDERS, UNSUPPORTED_PROVIDERS
from .rotating import RotatingStore

if TYPE_CHECKING:  # config imports the provider names from this package
    from ..config import Config, StoreConfig

# The dual-endpoint start-up lines are the copier's (the Go tool's sentences operators grep for).
log = logging.getLogger("etcdbr.copier")


def store_class(provider: str) -> type[SnapStore]:
    """The class of ``provider``'s store, imported now. ConfigError for an unknown provider, or
    for one whose SDK is not installed (naming the extra that installs it)."""
    if provider not in IMPLEMENTATIONS:
        if provider in UNSUPPORTED_PROVIDERS:
            raise ConfigError(f"storage provider {provider!r} is not supported by this tool; "
                              f"use one of {', '.join(PROVIDERS)}")
        raise ConfigError(f"unknown storage provider {provider!r}; "
                          f"expected one of {', '.join(PROVIDERS)} (case-sensitive)")
    impl = IMPLEMENTATIONS[provider]
    try:
        module = importlib.import_module(impl.module)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if impl.extra is None or not missing or missing.split(".")[0] == "etcdbr":
            raise
        raise not_installed(f"the {provider} store", missing, impl.extra) from None
    return getattr(module, impl.cls)


def open_store(config: "StoreConfig") -> SnapStore:
    """Build the store for ``config``. Raises ConfigError for bad settings or credentials.

    A store whose credentials are files comes wrapped in a :class:`RotatingStore`, which rebuilds
    it when they are rotated.
    """
    cls = store_class(config.effective_provider)
    store = cls(config)
    if store.credentials is not None and store.credentials.sources:
        return RotatingStore(store, cls)
    return store


def open_checked(config: "StoreConfig", *, sweep: bool = True,
                 opener: Callable[["StoreConfig"], SnapStore] = open_store) -> SnapStore:
    """Open a store and check that it is reachable (see ``SnapStore.check`` for ``sweep``);
    errors name the endpoint, and a store that fails its check is closed."""
    store = opener(config)
    try:
        store.check(sweep=sweep)
    except BaseException:
        store.close()
        raise
    return store


def same_location(a: "StoreConfig", b: "StoreConfig") -> bool:
    return (a.effective_provider, a.container, a.prefix_v2, a.endpoint_override) == (
        b.effective_provider, b.container, b.prefix_v2, b.endpoint_override)


def open_stores(config: "Config", opener: Callable[["StoreConfig"], SnapStore] = open_store
                ) -> tuple[SnapStore, SnapStore | None]:
    """Open the primary and, when sync is enabled, the secondary store (``spec/dual-endpoint.md``).

    Raises the primary's error when the primary cannot be opened and checked (fatal: snapshots
    would go nowhere). A secondary that fails only costs the copier: the caller gets ``None``,
    and ``Only primary snapstore available, using single endpoint`` is logged. Both failing is
    one error naming both.
    """
    primary: SnapStore | None = None
    primary_error: EtcdbrError | None = None
    try:
        primary = open_checked(config.store, opener=opener)
    except EtcdbrError as exc:
        primary_error = exc

    secondary: SnapStore | None = None
    secondary_error: EtcdbrError | None = None
    if config.sync.enabled:
        if not config.secondary_configured:
            secondary_error = ConfigError(
                "--backup-sync-enabled is set but no --secondary-storage-provider is configured")
        elif same_location(config.store, config.secondary):
            secondary_error = ConfigError("the secondary snapstore is the same location as the primary")
        else:
            try:
                secondary = open_checked(config.secondary, opener=opener)
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
