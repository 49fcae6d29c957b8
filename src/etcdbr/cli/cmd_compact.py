"""``compact``: fold the latest full snapshot and its deltas into one new full snapshot."""

from __future__ import annotations

import click

from ..config import CompactOptions
from .common import command_runner
from .flags import POSITIVE_DURATION
from .options import FlagCommand, Opt, add_options
from .types import Bool, Duration, Text

GROUPS = ("restoration", "store", "compression")
EXTRA = [
    Opt("defragment", "extra.defragment", Bool(), "Defragment the compacted data before the snapshot.",
        defaults=CompactOptions),
    Opt("etcd-snapshot-timeout", "extra.etcd_snapshot_timeout", POSITIVE_DURATION,
        "Timeout of the snapshot taken from the temporary etcd.", defaults=CompactOptions),
    Opt("etcd-defrag-timeout", "extra.etcd_defrag_timeout", POSITIVE_DURATION,
        "Timeout of the defragmentation of the temporary etcd.", defaults=CompactOptions),
    Opt("metrics-scrape-wait-duration", "extra.metrics_scrape_wait_duration", Duration(),
        "Accepted for compatibility; no effect (this command serves no metrics).", defaults=CompactOptions),
    Opt("enable-snapshot-lease-renewal", "extra.enable_snapshot_lease_renewal", Bool(),
        "Update the full snapshot revision lease with the new snapshot, as the Go tool does (needs "
        "POD_NAMESPACE and the k8s extra).", defaults=CompactOptions),
    Opt("full-snapshot-lease-name", "extra.full_snapshot_lease_name", Text(),
        "Name of the full snapshot revision lease.", defaults=CompactOptions),
    Opt("delta-snapshot-lease-name", "extra.delta_snapshot_lease_name", Text(),
        "Accepted for compatibility; compact takes no delta snapshot.", defaults=CompactOptions),
]


@click.command(name="compact", cls=FlagCommand)
@add_options(*GROUPS, extra=EXTRA)
@command_runner(*GROUPS, extra=EXTRA, restores=True)
def command(config, **_params) -> int:
    """Restore the latest chain into a temporary etcd, compact (and defragment) it and upload one
    new full snapshot at its head revision, so later restores need no long delta chain. Nothing
    in the store is modified or deleted."""
    from ..restore import Compactor
    from ..snapstore import open_store

    lease = config.extra.get("enable_snapshot_lease_renewal", False)
    if lease:
        from ..server.leases import kube_client

        kube_client()  # refuse at start, as the Go tool does, when the leases cannot be reached
    store = open_store(config.store)
    try:
        result = Compactor(store, config, defragment=config.extra.get("defragment", True),
                           snapshot_timeout=config.extra["etcd_snapshot_timeout"],
                           defrag_timeout=config.extra["etcd_defrag_timeout"]).run()
        if result.snapshot is not None:
            if lease:
                _update_full_snapshot_lease(config, result.snapshot)
            click.echo(result.snapshot.key)
    finally:
        store.close()
    return 0


def _update_full_snapshot_lease(config, snapshot) -> None:
    """The full snapshot lease after the compacted snapshot; a failure is a WARN (as with the Go tool)."""
    import asyncio
    import logging
    import time

    from ..server.leases import UPDATE_TIMEOUT, LeaseKeeper, LeaseSettings, kube_client

    settings = LeaseSettings(snapshot_leases=True, full_name=config.extra["full_snapshot_lease_name"])

    async def update() -> None:
        keeper = LeaseKeeper(settings, kube_client(), clock=time.time)
        await asyncio.wait_for(keeper.update_full(snapshot), UPDATE_TIMEOUT)

    try:
        asyncio.run(update())
    except Exception as exc:  # noqa: BLE001 - the snapshot is stored; the lease is only a signal
        logging.getLogger(__name__).warning("full snapshot lease update failed", extra={
            "lease": settings.full_name, "error": str(exc)})
