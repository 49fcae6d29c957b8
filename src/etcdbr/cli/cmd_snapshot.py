"""``snapshot``: take snapshots in the foreground; ``snapshot list``: show a store's snapshots."""

from __future__ import annotations

import json

import click

from ..config import HistoryOptions, ListOptions
from .common import command_runner, open_checked_store, within_deadline
from .options import FlagCommand, FlagGroup, Opt, add_options
from .types import Bool, Choice, Timestamp, positive

LIST_EXTRA = [Opt("output", "extra.output", Choice("table", "json"), "Output format: table or json.", short="o",
                  defaults=ListOptions)]


SNAPSHOT_GROUPS = ("etcd", "store", "snapshotter", "compression", "backoff")


@click.group(name="snapshot", cls=FlagGroup, invoke_without_command=True)
@add_options(*SNAPSHOT_GROUPS)
@click.pass_context
def command(ctx: click.Context, **params) -> None:
    """Take full and delta snapshots of etcd in the foreground (with garbage collection and
    scheduled defragmentation) until SIGTERM or SIGINT; list a store's snapshots (list) or search
    the events its deltas hold (history).

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


HISTORY_EXTRA = [
    Opt("prefix", "extra.prefix", Bool(), "KEY is a prefix: every key that starts with it.", defaults=HistoryOptions),
    Opt("from-revision", "extra.from_revision", positive(), "Only events at this revision or later.",
        defaults=HistoryOptions),
    Opt("to-revision", "extra.to_revision", positive(), "Only events at this revision or earlier.",
        defaults=HistoryOptions),
    Opt("from-time", "extra.from_time", Timestamp(),
        "Only events recorded at this RFC 3339 time or later (e.g. 2026-12-05T14:00:00Z).", defaults=HistoryOptions),
    Opt("to-time", "extra.to_time", Timestamp(), "Only events recorded at this RFC 3339 time or earlier.",
        defaults=HistoryOptions),
    Opt("show-values", "extra.show_values", Bool(),
        "Print the values too (table: UTF-8 text with other bytes and control characters escaped; json: the same "
        "as 'value', and 'value_base64'). Off by default: values can hold secrets.", defaults=HistoryOptions),
    Opt("output", "extra.output", Choice("table", "json"), "Output format: table or json.", short="o",
        defaults=HistoryOptions),
]


@command.command(name="history", cls=FlagCommand)
@click.argument("key")
@add_options("store", extra=HISTORY_EXTRA)
@command_runner("store", extra=HISTORY_EXTRA)
def history_command(config, key: str, **_params) -> int:
    """Search the store's delta snapshots for the events on KEY (or, with --prefix, every key under
    it) and print their revision, time, operation (put or delete), key and value size, oldest first:
    which revision deleted /registry/namespaces/prod? Restore to the revision before it with
    'restore --to-revision' (docs/recovery.md).

    Deltas are streamed (memory stays flat whatever the chain's size) and checked as 'verify' checks
    them (SHA-256 trailer, revisions within the name's); events of a delta are printed only once it
    has passed, and a delta that fails stops the search (exit 1). Full snapshots hold no history:
    revision ranges no delta covers are named at the end.
    """
    from ..errors import ConfigError
    from ..history import HistoryResult, Window, coverage_gaps, safe_text, search
    from ..snapstore import open_store

    extra = config.extra
    if not key:
        raise ConfigError("KEY must not be empty (to search every key, give --prefix with a KEY such as /)")
    window = Window(key=key.encode(), prefix=bool(extra["prefix"]), from_revision=extra["from_revision"],
                    to_revision=extra["to_revision"], from_time=extra["from_time"], to_time=extra["to_time"])
    if window.from_revision and window.to_revision and window.from_revision > window.to_revision:
        raise ConfigError("--from-revision is after --to-revision")
    if window.from_time and window.to_time and window.from_time > window.to_time:
        raise ConfigError("--from-time is after --to-time")
    values, as_json = bool(extra["show_values"]), extra["output"] == "json"
    store = open_store(config.store)
    try:
        snaps = within_deadline(3 * config.store.timeout.total_seconds(), store.display, store.list)
        result = HistoryResult()
        matches = search(store, window, snapshots=snaps, result=result)
        head = {"store": store.display, "prefix": store.prefix, "key": safe_text(window.key),
                "key_is_prefix": window.prefix}
        if as_json:
            _print_history_json(head, matches, values)
        else:
            _print_history_table(matches, values)
        gaps = coverage_gaps(snaps, window.from_revision or 1, window.to_revision)
    finally:
        store.close()
    if as_json:  # the object's last members, after the events (printed as they were found)
        click.echo(f'  "deltas_read": {result.deltas_read},\n  "events_read": {result.events_read},\n'
                   f'  "revisions_without_history": {json.dumps([list(g) for g in gaps])}\n}}')
        return 0
    click.echo(f"{result.events_read} event(s) searched in {result.deltas_read} delta(s) of {store.display} prefix "
               f"{store.prefix}")
    if gaps:
        click.echo("no delta holds revisions " + ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in gaps)
                   + ": events there are not known")
    return 0


def _print_history_json(head: dict, matches, values: bool) -> None:
    """One JSON object, written as the matches are found (one delta at a time) so that memory stays
    flat however many events match; the caller closes it."""
    click.echo("{")
    for name, value in head.items():
        click.echo(f"  {json.dumps(name)}: {json.dumps(value)},")
    click.echo('  "events": [')
    first = True
    for m in matches:
        click.echo(("" if first else ",\n") + "    " + json.dumps(m.to_json(values=values)), nl=False)
        first = False
    click.echo("\n  ]," if not first else "  ],")


def _print_history_table(matches, values: bool) -> None:
    """Rows as they are found (one delta at a time), so that a long search shows progress."""
    from ..history import safe_text

    widths = (10, 35, 9, 10)  # revision, time (RFC 3339 with nanoseconds), operation, value size
    header = ("REVISION", "TIME", "OPERATION", "VALUE SIZE", "KEY") + (("VALUE",) if values else ())

    def line(cells: tuple) -> str:
        fixed = "  ".join(c.ljust(w) for c, w in zip(cells[:4], widths, strict=True))
        return "  ".join((fixed, *cells[4:])).rstrip()

    click.echo(line(header))
    for m in matches:
        cells = (str(m.revision), m.time, m.operation, str(len(m.value)), safe_text(m.key))
        click.echo(line(cells + ((safe_text(m.value),) if values else ())))
