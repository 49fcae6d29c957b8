"""``restore``: rebuild ``--data-dir`` from the latest full snapshot and the deltas after it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from ..config import RestoreOptions
from ..errors import ConfigError
from .common import command_runner
from .options import FlagCommand, Opt, add_options
from .types import Bool, Choice

log = logging.getLogger(__name__)

RESTORE_FROM = Opt(
    "restore-from", "restoration.restore_from", Choice("primary", "secondary", "auto"),
    "Store to restore from: primary, secondary (the --secondary-* store) or auto (the store whose own "
    "chain reaches the highest revision without a gap; the secondary when the primary cannot be read).",
    defaults=RestoreOptions,
)
DRY_RUN = Opt("dry-run", "extra.dry_run", Bool(),
              "Choose and check the chain and say what would be restored; touch nothing.", defaults=RestoreOptions)
REPLACE = Opt("replace-data-dir", "extra.replace_data_dir", Bool(),
              "Replace a non-empty --data-dir: the old one is moved aside to <data-dir>.aside-<time>-<why> and kept. "
              "A data dir etcd can open that is at least as new as the backup is refused even so.",
              defaults=RestoreOptions)
GROUPS = ("restoration", "store", "secondary")
EXTRA = [RESTORE_FROM, DRY_RUN, REPLACE]


@click.command(name="restore", cls=FlagCommand)
@add_options(*GROUPS, extra=EXTRA)
@command_runner(*GROUPS, extra=EXTRA, member=True, restores=True)
def command(config, **_params) -> int:
    """Restore an etcd data dir from the latest full snapshot and every delta after it.

    The new data dir is built beside the old one (<data-dir>.part), checked, and only then put
    in place; a failed restore leaves the old data dir untouched. A non-empty --data-dir is
    refused unless --replace-data-dir=true, and then moved aside and kept; a data dir etcd can
    open that is at least as new as the backup is never replaced. Empty store: nothing is done.
    """
    from ..restore import Restorer, select_source
    from ..restore.datadir import check_volume, is_empty

    replace = bool(config.extra.get("replace_data_dir"))
    data_dir = config.restoration.data_dir
    check_volume(data_dir, create=False)
    if not replace and not is_empty(Path(data_dir)):  # refused before any store is read
        raise ConfigError(f"--data-dir {os.path.abspath(data_dir)} is not empty: restore never overwrites a data dir "
                          "unless --replace-data-dir=true is given (the old one is then moved aside and kept); "
                          "nothing was changed")
    selection = select_source(config)
    try:
        restorer = Restorer(selection.store, config.restoration)
        if config.extra.get("dry_run"):
            chain = selection.chain or restorer.latest()
            if chain is None:
                log.info("No base snapshot found. Will do nothing.", extra={"store": selection.store.display})
                return 0
            restorer.check_chain(chain)
            fate = ""
            if not is_empty(Path(data_dir)):
                from ..restore import validate_data_dir

                judged = validate_data_dir(data_dir, "sanity", name=None, latest_revision=chain.last_revision)
                fate = (" (refused: the data dir there is healthy and at least as new)" if judged.valid else
                        f"; the data dir there ({judged.status.value}: {judged.reason or 'revision behind'}) would be "
                        "moved aside" + (" unless its WAL holds newer data" if judged.status.value ==
                                         "RevisionBehind" else ""))
            click.echo(f"would restore {chain.full.snap_name} and {len(chain.deltas)} delta snapshot(s) from "
                       f"{selection.store.display} ({selection.reason}) into {data_dir}, "
                       f"reaching revision {chain.last_revision}{fate}")
            return 0
        restorer.restore(data_dir, chain=selection.chain, replace=replace)
    finally:
        selection.close_others()
        selection.store.close()
    return 0
