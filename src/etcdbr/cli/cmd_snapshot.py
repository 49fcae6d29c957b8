"""``snapshot``: take snapshots in the foreground; ``snapshot list``: show a store's snapshots."""

from __future__ import annotations

import json

import click

from ..config import ListOptions
from .common import command_runner, open_checked_store, within_deadline
from .options import FlagCommand, FlagGroup, Opt, add_options
from .types import Choice

LIST_EXTRA = [Opt("output", "extra.output", Choice("table", "json"), "Output format: table or json.", short="o",
                  defaults=ListOptions)]


SNAPSHOT_GROUPS = ("etcd", "store", "snapshotter", "compression", "backoff")


@click.group(name="snapshot", cls=FlagGroup, invoke_without_command=True)
@add_options(*SNAPSHOT_GROUPS)
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

    from ..backup import snapshot_until_stopped

    store = open_checked_store(config.store)
    try:
        asyncio.run(snapshot_until_stopped(config, store))
    finally:
        store.close()
    return 0


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
    from ..errors import IntegrityError

    try:
        return policy_for_suffix(suffix) or "none"
    except IntegrityError:
        return f"unknown({suffix})"


@command.command(name="list", cls=FlagCommand)
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
    output = config.extra["output"]
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
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
