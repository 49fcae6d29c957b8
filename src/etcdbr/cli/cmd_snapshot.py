"""``snapshot``: take snapshots in the foreground; ``snapshot list``: show a store's snapshots."""

from __future__ import annotations

import json

import click

from .common import command_runner, open_checked_store, within_deadline
from .options import Opt, add_options, choice

LIST_EXTRA = [Opt("output", "extra.output", choice("table", "json"), "table", "Output format: table or json.", short="o")]


SNAPSHOT_GROUPS = ("etcd", "store", "snapshotter", "compression", "backoff")


@click.group(name="snapshot", invoke_without_command=True)
@add_options(*SNAPSHOT_GROUPS, "logging")
@click.pass_context
def command(ctx: click.Context, **params) -> None:
    """Take full and delta snapshots of etcd in the foreground (with garbage collection and
    scheduled defragmentation) until SIGTERM or SIGINT, or list a store's snapshots.

    Starts with a full snapshot; on a signal, buffered events are uploaded as a last delta and the
    command exits 0.
    """
    if ctx.invoked_subcommand is None:
        _take_snapshots(**params)


@command_runner(*SNAPSHOT_GROUPS)
def _take_snapshots(config, **_params) -> int:
    import asyncio

    store = open_checked_store(config.store)
    try:
        asyncio.run(_snapshot_forever(config, store))
    finally:
        store.close()
    return 0


async def _snapshot_forever(config, store) -> None:
    import asyncio
    import logging
    import signal

    from ..snapshotter import Snapshotter

    log = logging.getLogger(__name__)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    snapshotter = Snapshotter(store, config)
    helpers = [asyncio.create_task(_defragment_on_schedule(config, snapshotter, stop), name="defrag")]
    collector = _garbage_collector(store, config)
    if collector is not None:
        helpers.append(asyncio.create_task(collector.run(stop), name="gc"))
    try:
        await snapshotter.run(stop, full_at_start=True)
        log.info("snapshotter stopped")
    finally:
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
        await snapshotter.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _garbage_collector(store, config):
    try:
        from ..gc import GarbageCollector
    except ImportError:  # pragma: no cover - GC arrives with its own change
        return None
    return GarbageCollector(store, config.snapshotter)


async def _defragment_on_schedule(config, snapshotter, stop) -> None:
    """Defragment etcd on ``--defragmentation-schedule`` and follow each with a full snapshot
    (a defragmented db is the cheapest full snapshot there is, and the Go tool does the same)."""
    import asyncio
    import logging
    import time
    from datetime import datetime, timezone

    from croniter import croniter

    from ..etcd import client as etcdclient

    log = logging.getLogger(__name__)
    schedule = config.snapshotter.defragmentation_schedule
    while not stop.is_set():
        now = datetime.fromtimestamp(time.time(), tz=timezone.utc).astimezone()
        due = croniter(schedule, now).get_next(datetime)
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, (due - now).total_seconds()))
            return
        except asyncio.TimeoutError:
            pass
        try:
            done = await etcdclient.defragment_members(config.etcd)
            log.info("defragmented etcd; taking a full snapshot", extra={"endpoints": ",".join(done)})
            await snapshotter.take_full_snapshot()
        except Exception as exc:  # noqa: BLE001 - the next schedule tries again
            log.error("scheduled defragmentation failed", extra={"error": str(exc)})


def _human_size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def _compression_name(suffix: str) -> str:
    from ..compression import policy_for_suffix

    try:
        return policy_for_suffix(suffix) or "none"
    except Exception:
        return f"unknown({suffix})"


@command.command(name="list")
@add_options("store", extra=LIST_EXTRA)
@command_runner("store", extra=LIST_EXTRA)
def list_command(config, **_params) -> int:
    """List the snapshots of one store (the diagnostic command of the dual-endpoint guide).

    Fails within 3x --store-timeout (60s by default), retries included, whatever the store does.
    """
    from ..snapstore import open_store

    store = open_store(config.store)

    def check_and_list():
        try:
            store.check(sweep=False)  # a read-only command leaves upload leftovers alone
            return store.list(include_all=True)
        finally:
            store.close()

    snaps = within_deadline(3 * config.store.timeout.total_seconds(), store.display, check_and_list)
    output = config.extra.get("output", "table")
    if output == "json":
        rows = []
        for s in snaps:
            row = s.to_json()
            row["size"] = s.size
            row["key"] = s.key
            rows.append(row)
        click.echo(json.dumps({"store": store.display, "prefix": store.prefix, "snapshots": rows}, indent=2))
        return 0
    header = ("KIND", "START", "LAST", "CREATED", "SIZE", "COMPRESSION", "FINAL", "IMMUTABLE UNTIL")
    rows = [
        (
            s.kind.value,
            str(s.start_revision),
            str(s.last_revision),
            s.created_on.strftime("%Y-%m-%d %H:%M:%S"),
            _human_size(s.size),
            _compression_name(s.compression_suffix),
            "yes" if s.is_final else "no",
            s.immutable_until.strftime("%Y-%m-%d %H:%M:%S") if s.immutable_until else "-",
        )
        for s in snaps
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    click.echo(f"{store.display} prefix {store.prefix}: {len(snaps)} snapshot(s)")
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
