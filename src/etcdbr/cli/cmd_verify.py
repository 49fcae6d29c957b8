"""``verify``: read every object of one store and check it, as pgBackRest's ``verify`` does.

Exit codes: 0 when every object and chain is sound, 1 on any defect (or when the store cannot be
read), 2 for bad flags or credentials.
"""

from __future__ import annotations

import json

import click

from ..config import VerifyOptions
from .common import command_runner, open_checked_store
from .options import FlagCommand, Opt, add_options
from .types import Bool, Choice, positive

EXTRA = [
    Opt("output", "extra.output", Choice("table", "json"), "Report format: table or json.", short="o",
        defaults=VerifyOptions),
    Opt("max-parallel-reads", "extra.max_parallel_reads", positive(), "Objects read and checked at once.",
        defaults=VerifyOptions),
    Opt("names-only", "extra.names_only", Bool(),
        "Check names, chains and leftovers from the listing alone, without reading objects.", defaults=VerifyOptions),
]


@click.command(name="verify", cls=FlagCommand)
@add_options("store", extra=EXTRA)
@command_runner("store", extra=EXTRA)
def command(config, **_params) -> int:
    """Verify one store: every snapshot decompresses and matches its SHA-256, chains have no gaps,
    overlaps or deltas without a base, names parse and no upload pieces are left over. Exits 1 on
    any defect."""
    from ..verify import verify_store

    store = open_checked_store(config.store, sweep=False)  # verify reports leftovers, never removes them
    try:
        report = verify_store(store, parallel=config.extra["max_parallel_reads"],
                              check_content=not config.extra["names_only"])
    finally:
        store.close()
    if config.extra.get("output") == "json":
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.render())
    return 0 if report.ok else 1
