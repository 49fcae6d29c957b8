"""``restore``: rebuild ``--data-dir`` from the latest full snapshot and the deltas after it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from ..config import RestoreOptions
from ..errors import ConfigError, RestoreError
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
              "Choose and check the chain and print the plan: the full snapshot, each delta and the events it "
              "would replay (every delta is read and its trailer checked); touch nothing.", defaults=RestoreOptions)
REPLACE = Opt("replace-data-dir", "extra.replace_data_dir", Bool(),
              "Replace a non-empty --data-dir: the old one is moved aside to <data-dir>.aside-<time>-<why> and kept. "
              "A data dir etcd can open that is at least as new as the backup is refused even so.",
              defaults=RestoreOptions)
GROUPS = ("restoration", "pitr", "store", "secondary")
EXTRA = [RESTORE_FROM, DRY_RUN, REPLACE]


@click.command(name="restore", cls=FlagCommand)
@add_options(*GROUPS, extra=EXTRA)
@command_runner(*GROUPS, extra=EXTRA, member=True, restores=True)
def command(config, **_params) -> int:
    """Restore an etcd data dir from the latest full snapshot and every delta after it, or, with
    --to-revision or --to-time, to a point in time (docs/recovery.md).

    The new data dir is built beside the old one (<data-dir>.part), checked, and only then put
    in place; a failed restore leaves the old data dir untouched. A non-empty --data-dir is
    refused unless --replace-data-dir=true, and then moved aside and kept; a data dir etcd can
    open that is at least as new as the backup (or, for a point in time, as the target) is never
    replaced: restore a point in time into a new, empty data dir and swap it in. A point-in-time
    restore leaves a marker file in the data dir (etcdbr-point-in-time-restore.json) that makes
    server and initialize refuse it while the same store prefix holds newer snapshots: back the
    rolled-back cluster up under a new --store-prefix. Empty store: nothing is done (an error with
    a target).
    """
    from ..restore import Restorer, select_source
    from ..restore.datadir import check_volume, is_empty
    from ..restore.pitr import target_from

    target = target_from(config)
    replace = bool(config.extra.get("replace_data_dir"))
    data_dir = config.restoration.data_dir
    check_volume(data_dir, create=False)
    if not replace and not is_empty(Path(data_dir)):  # refused before any store is read
        raise ConfigError(f"--data-dir {os.path.abspath(data_dir)} is not empty: restore never overwrites a data dir "
                          "unless --replace-data-dir=true is given (the old one is then moved aside and kept); "
                          "nothing was changed")
    selection = select_source(config, target=target)
    try:
        restorer = Restorer(selection.store, config.restoration)
        chain = selection.chain or restorer.plan(target)
        if config.extra.get("dry_run"):
            if chain is None:
                log.info("No base snapshot found. Will do nothing.", extra={"store": selection.store.display})
            else:
                _print_plan(restorer, selection, chain, data_dir)
            return 0
        restorer.restore(data_dir, chain=chain, replace=replace)
        if chain is not None and chain.upto is not None:
            _warn_old_timeline(selection.store, chain.upto)
    finally:
        selection.close_others()
        selection.store.close()
    return 0


def _print_plan(restorer, selection, chain, data_dir: str) -> None:
    """--dry-run: the chain, checked and read (every delta's trailer), and the events it replays."""
    from ..history import HistoryError, delta_events
    from ..restore import validate_data_dir
    from ..restore.datadir import is_empty

    restorer.check_chain(chain)
    fate = ""
    if not is_empty(Path(data_dir)):
        judged = validate_data_dir(data_dir, "sanity", name=None, latest_revision=chain.last_revision)
        fate = (" (refused: the data dir there is healthy and at least as new)" if judged.valid else
                f"; the data dir there ({judged.status.value}: {judged.reason or 'revision behind'}) would be "
                "moved aside" + (" unless its WAL holds newer data" if judged.status.value ==
                                 "RevisionBehind" else ""))
    point = f" (point in time: {chain.upto})" if chain.upto is not None else ""
    click.echo(f"would restore {chain.full.snap_name} and {len(chain.deltas)} delta snapshot(s) from "
               f"{selection.store.display} ({selection.reason}) into {data_dir}, "
               f"reaching revision {chain.last_revision}{point}{fate}")
    click.echo(f"  full   {chain.full.snap_name}  revision {chain.full.last_revision}")
    done, total = chain.full.last_revision, 0
    for delta in chain.deltas:
        applied = held = 0
        try:
            for event in delta_events(selection.store, delta):
                held += 1
                rev = event.kv.mod_revision
                if done < rev <= chain.last_revision:
                    applied += 1
        except HistoryError as exc:
            raise RestoreError(str(exc)) from None
        done = max(done, min(delta.last_revision, chain.last_revision))
        total += applied
        part = f"{applied} events" if applied == held else f"{applied} of its {held} events"
        click.echo(f"  delta  {delta.snap_name}  revisions {delta.start_revision}-{delta.last_revision}: {part}")
    click.echo(f"  events to replay: {total}")


def _warn_old_timeline(store, target: int) -> None:
    """After a rollback the store still holds the revisions past the target, of the old timeline:
    a sidecar backing the restored cluster up into the same prefix would mix the two."""
    later = max((snap.last_revision for snap in store.list()), default=0)
    if later > target:
        log.warning(f"the store holds snapshots up to revision {later} from before this point-in-time restore; back "
                    "the restored cluster up under a new --store-prefix, or a later restore would mix the old "
                    "timeline's deltas with the new one's (docs/recovery.md, step 7); the restored data dir's marker "
                    "file makes server and initialize refuse this prefix",
                    extra={"store": store.display, "restored_revision": target})
