"""``compact``: fold the latest full snapshot and its deltas into one new full snapshot."""

from __future__ import annotations

from datetime import timedelta

import click

from ..config import parse_bool, parse_duration
from .common import command_runner
from .options import Opt, add_options, positive_duration, text

GROUPS = ("restoration", "store", "compression")
EXTRA = [
    Opt("defragment", "extra.defragment", parse_bool, True, "Defragment the compacted data before the snapshot.",
        is_bool=True),
    Opt("etcd-snapshot-timeout", "extra.etcd_snapshot_timeout", positive_duration, timedelta(minutes=30),
        "Timeout of the snapshot taken from the temporary etcd."),
    Opt("etcd-defrag-timeout", "extra.etcd_defrag_timeout", positive_duration, timedelta(minutes=8),
        "Timeout of the defragmentation of the temporary etcd."),
    Opt("metrics-scrape-wait-duration", "extra.metrics_scrape_wait_duration", parse_duration, timedelta(0),
        "Accepted for compatibility; no effect (this command serves no metrics)."),
    Opt("enable-snapshot-lease-renewal", "extra.enable_snapshot_lease_renewal", parse_bool, False,
        "Accepted for compatibility; no effect.", is_bool=True),
    Opt("full-snapshot-lease-name", "extra.full_snapshot_lease_name", text, "full-snapshot-revisions",
        "Accepted for compatibility; no effect."),
    Opt("delta-snapshot-lease-name", "extra.delta_snapshot_lease_name", text, "delta-snapshot-revisions",
        "Accepted for compatibility; no effect."),
]


@click.command(name="compact")
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
