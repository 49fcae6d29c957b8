"""``initialize``: validate ``--data-dir`` and restore it from the store only if it is unusable."""

from __future__ import annotations

import click

from .cmd_restore import RESTORE_FROM
from .common import command_runner
from .options import Opt, add_options, choice

VALIDATION_MODE = Opt("validation-mode", "extra.validation_mode", choice("full", "sanity"), "full",
                      "full: structure, membership, revision and a read of the whole db; "
                      "sanity: the quick checks only.")
GROUPS = ("restoration", "store", "secondary", "etcd")
EXTRA = [VALIDATION_MODE, RESTORE_FROM]


@click.command(name="initialize")
@add_options(*GROUPS, extra=EXTRA)
@command_runner(*GROUPS, extra=EXTRA)
def command(config, **_params) -> int:
    """Check the etcd data dir; when it is missing, empty, corrupt, of another member or behind the
    latest snapshot, restore it (built beside it and swapped in). A healthy data dir is not touched."""
    from ..restore import Initializer

    Initializer(config).run(config.extra.get("validation_mode", "full"))
    return 0
