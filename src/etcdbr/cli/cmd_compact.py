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
        "Accepted for compatibility; no effect.", defaults=CompactOptions),
    Opt("full-snapshot-lease-name", "extra.full_snapshot_lease_name", Text(),
        "Accepted for compatibility; no effect.", defaults=CompactOptions),
    Opt("delta-snapshot-lease-name", "extra.delta_snapshot_lease_name", Text(),
        "Accepted for compatibility; no effect.", defaults=CompactOptions),
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

    store = open_store(config.store)
    try:
        result = Compactor(store, config, defragment=config.extra.get("defragment", True),
                           snapshot_timeout=config.extra["etcd_snapshot_timeout"],
                           defrag_timeout=config.extra["etcd_defrag_timeout"]).run()
        if result.snapshot is not None:
            click.echo(result.snapshot.key)
    finally:
        store.close()
    return 0
