"""``restore``: rebuild ``--data-dir`` from the latest full snapshot and the deltas after it."""

from __future__ import annotations

import logging

import click

from ..config import parse_bool
from .common import command_runner
from .options import Opt, add_options, choice

log = logging.getLogger(__name__)

RESTORE_FROM = Opt(
    "restore-from", "restoration.restore_from", choice("primary", "secondary", "auto"), "primary",
    "Store to restore from: primary, secondary (the --secondary-* store) or auto (the store whose own "
    "chain reaches the highest revision without a gap; the secondary when the primary cannot be read).",
)
DRY_RUN = Opt("dry-run", "extra.dry_run", parse_bool, False,
              "Choose and check the chain and say what would be restored; touch nothing.", is_bool=True)
GROUPS = ("restoration", "store", "secondary")
EXTRA = [RESTORE_FROM, DRY_RUN]


@click.command(name="restore")
@add_options(*GROUPS, extra=EXTRA)
@command_runner(*GROUPS, extra=EXTRA)
def command(config, **_params) -> int:
    """Restore an etcd data dir from the latest full snapshot and every delta after it.

    The new data dir is built beside the old one (<data-dir>.part) and swapped in only when
    complete; a failed restore leaves the old data dir untouched. Empty store: nothing is done.
    """
    from ..restore import Restorer, select_source

    selection = select_source(config)
    try:
        restorer = Restorer(selection.store, config.restoration)
        if config.extra.get("dry_run"):
            chain = selection.chain or restorer.latest()
            if chain is None:
                log.info("No base snapshot found. Will do nothing.", extra={"store": selection.store.display})
                return 0
            restorer.check_chain(chain)
            click.echo(f"would restore {chain.full.snap_name} and {len(chain.deltas)} delta snapshot(s) from "
                       f"{selection.store.display} ({selection.reason}) into {config.restoration.data_dir}, "
                       f"reaching revision {chain.last_revision}")
            return 0
        restorer.restore(config.restoration.data_dir, chain=selection.chain)
    finally:
        selection.close_others()
        selection.store.close()
    return 0
