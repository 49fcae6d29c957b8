"""``copy``: one verified sync run from a source store (``--source-*``) to a destination store.

The Go tool's ``copy`` (control-plane migration, manual re-seeding of a primary from its
secondary) with the BackupCopier's guarantees: every copy is read back and checked, ``.final`` is
stripped on write and ignored when comparing (safe to rerun on WORM buckets), and the command
exits non-zero while anything selected is missing from the destination.

Exit codes: 0 destination in sync; 1 something left out of sync (or a store failed); 2 bad flags.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from ..config import Config, CopyOptions
from ..errors import ConfigError
from .common import command_runner, open_checked_store
from .options import FlagCommand, Opt, add_options
from .types import Bool, Duration, Integer

if TYPE_CHECKING:
    from ..copier import SyncResult

# The copier, asyncio and the retry helpers are imported by the command itself, not with this
# module: every command's module is loaded for `--help`, which must start fast.

log = logging.getLogger(__name__)

#: How often ``--wait-for-final-snapshot`` looks at the source (the Go tool's interval).
FINAL_POLL_SECONDS = 15.0
#: The Go tool looks for ``.final`` among this many of the latest full snapshots.
FINAL_LOOKBACK = 4
GROUPS = ("source", "store", "sync")


COPY_EXTRA = [
    Opt("max-backups-to-copy", "extra.max_backups_to_copy", Integer(-1, expect="a number of backups, or -1 for all"),
        "Copy only the newest N backups (a full snapshot and its deltas); -1 = all.", defaults=CopyOptions),
    Opt("max-backup-age", "extra.max_backup_age", Integer(-1, expect="a number of days, or -1 for all"),
        "Copy only backups whose full snapshot is younger than N days; -1 = all.", defaults=CopyOptions),
    Opt("wait-for-final-snapshot", "extra.wait_for_final_snapshot", Bool(),
        "Wait until one of the source's latest full snapshots is a final one (the source's etcd has shut down).",
        defaults=CopyOptions),
    Opt("wait-for-final-snapshot-timeout", "extra.wait_for_final_snapshot_timeout",
        Duration(timedelta(0), inclusive=True, expect="a duration >= 0 such as 30m (0 = wait without limit)"),
        "Stop waiting for the final snapshot after this long and copy anyway; 0 = no limit.", defaults=CopyOptions),
    Opt("delete-orphans", "extra.delete_orphans", Bool(),
        "Also delete destination snapshots the source does not have (guarded by --backup-sync-max-delete-fraction).",
        defaults=CopyOptions),
    Opt("dry-run", "extra.dry_run", Bool(), "Print what would be copied and deleted; change nothing.",
        defaults=CopyOptions),
]


def complete_source(config: Config) -> None:
    """Empty source provider and prefix (and an unset temp dir) inherit the destination's, as in Go."""
    src, dst = config.source, config.store
    if not src.provider:
        src.provider = dst.provider
    if not src.prefix:
        src.prefix = dst.prefix
    if config.extra["origins"].get("source-snapstore-temp-directory", "default") == "default":
        src.temp_dir = dst.temp_dir
    if (src.effective_provider, src.container, src.prefix_v2, src.endpoint_override) == (
            dst.effective_provider, dst.container, dst.prefix_v2, dst.endpoint_override):
        raise ConfigError("source and destination are the same location; set --source-store-container "
                          "or --source-store-prefix")


def wait_for_final(source, timeout: timedelta, poll: float | None = None) -> bool:
    """Block until a final full snapshot shows among the newest fulls; False on timeout."""
    from .. import retry
    from ..snapshot import Kind

    log.info("Waiting for a final full snapshot on the source", extra={"source": source.display,
                                                                        "timeout": str(timeout)})

    def final_listed() -> bool | None:
        fulls = [s for s in source.list() if s.kind is Kind.FULL and not s.is_chunk]
        return True if any(s.is_final for s in fulls[-FINAL_LOOKBACK:]) else None

    if retry.poll(final_listed, every=FINAL_POLL_SECONDS if poll is None else poll,
                  within=timeout.total_seconds() if timeout > timedelta(0) else None):
        log.info("Final full snapshot found on the source", extra={"source": source.display})
        return True
    log.warning("No final full snapshot appeared before the timeout; copying what is there",
                extra={"source": source.display})
    return False


class _Progress:
    """A tqdm bar on a terminal; otherwise one plain line per finished operation."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.bar: Any = None  # a tqdm bar on a terminal
        self.total = 0
        self.done = 0

    def __call__(self, event: str, snapshot, value: int) -> None:
        if event == "plan":
            self.total = value
            if self.tty and value:
                from tqdm import tqdm

                self.bar = tqdm(total=value, unit="snapshot", file=self.stream, dynamic_ncols=True)
            return
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"{event} {snapshot.snap_name}", refresh=False)
            self.bar.update(1)
        else:
            size = f" ({value} bytes)" if event == "copied" else ""
            click.echo(f"[{self.done}/{self.total}] {event} {snapshot.snap_name}{size}", file=self.stream)

    def redirect_logs(self):
        if not self.tty:
            return nullcontext()
        from tqdm.contrib.logging import logging_redirect_tqdm

        return logging_redirect_tqdm()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_plan(result: SyncResult, source, dest) -> None:
    plan = result.plan
    assert plan is not None
    click.echo(f"dry run: {source.display} ({source.prefix}) -> {dest.display} ({dest.prefix})")
    for s in plan.to_copy:
        size = f" {s.size} bytes" if s.size is not None else ""
        click.echo(f"would copy   {s.key}{size}")
    for s in plan.to_replace:
        click.echo(f"would replace {s.key} (size differs from the source)")
    for s in plan.to_delete:
        click.echo(f"would delete {s.key}")
    for s in plan.immutable:
        click.echo(f"would keep   {s.key} (immutable)")
    if plan.deletion_skipped:
        click.echo(f"would skip deletion: {plan.deletion_skipped}")
    click.echo(f"plan: {len(plan.to_copy)} to copy, {len(plan.to_delete)} to delete; nothing changed")


async def _copy(source, dest, config: Config, progress: _Progress) -> tuple[SyncResult, list[str]]:
    import asyncio

    from ..copier import BackupCopier, own_snapshots, plan_sync, select_backups

    extra = config.extra
    copier = BackupCopier(source, dest, config.sync, progress=progress)

    def selection(snaps):
        return select_backups(snaps, extra["max_backups_to_copy"], extra["max_backup_age"])

    try:
        result = await copier.sync_once(delete_orphans=extra["delete_orphans"], dry_run=extra["dry_run"],
                                        selection=selection)
    except asyncio.CancelledError:
        await copier.stop(config.sync.shutdown_grace.total_seconds())
        raise
    await copier.stop(1.0)
    if result.error or extra["dry_run"]:
        return result, []
    # Verify from fresh listings: what is still missing (or, with --delete-orphans, still extra).
    src_snaps = own_snapshots(await asyncio.to_thread(source.list), source.prefix)
    dst_snaps = own_snapshots(await asyncio.to_thread(dest.list, True), dest.prefix)
    check = plan_sync(src_snaps, dst_snaps, delete_orphans=extra["delete_orphans"], max_delete_fraction=1.0,
                      selection=selection(src_snaps))
    problems = [f"missing on destination: {s.snap_name}" for s in check.to_copy]
    problems += [f"orphan left on destination: {s.snap_name}" for s in check.orphans]
    return result, problems


@click.command(name="copy", cls=FlagCommand)
@add_options(*GROUPS, extra=COPY_EXTRA)
@command_runner(*GROUPS, extra=COPY_EXTRA)
def command(config: Config, **_params) -> int:
    """Copy snapshots from a source store (--source-*) to a destination store, verifying each copy.

    One sync run of the BackupCopier: snapshots are compared by name ignoring '.final' (rerunning
    is safe, also on WORM buckets), copied verbatim under the destination prefix without '.final',
    read back and checked (size and SHA-256). With --delete-orphans, destination snapshots that
    the source lacks are deleted too (never when the source is empty). Exits 1 if anything
    selected is still missing afterwards.
    """
    import asyncio

    complete_source(config)
    source = open_checked_store(config.source)
    try:
        dest = open_checked_store(config.store)
    except BaseException:
        source.close()
        raise
    progress = _Progress(sys.stderr)
    try:
        if config.extra["wait_for_final_snapshot"] and not config.extra["dry_run"]:
            wait_for_final(source, config.extra["wait_for_final_snapshot_timeout"])
        with progress.redirect_logs():
            result, problems = asyncio.run(_copy(source, dest, config, progress))
    finally:
        progress.close()
        source.close()
        dest.close()
    if result.error:
        click.echo(f"error: {result.error}", err=True)
        return 1
    if config.extra["dry_run"]:
        _print_plan(result, source, dest)
        return 0
    for problem in result.errors() + problems:
        click.echo(f"  {problem}", err=True)
    summary = (f"copied {len(result.copied)}, deleted {len(result.deleted)}, failed {len(result.failed)}"
               + (f", kept {len(result.immutable)} immutable" if result.immutable else ""))
    if problems or result.failed or result.delete_failed:
        click.echo(f"{summary}; destination {dest.display} is NOT in sync", err=True)
        return 1
    click.echo(f"{summary}; destination {dest.display} is in sync")
    return 0
