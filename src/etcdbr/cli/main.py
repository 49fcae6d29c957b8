"""Entry point: ``etcd-backup-restore`` (alias ``etcdbrctl``, the Go tool's name)."""

from __future__ import annotations

import click

from .. import __version__
from .common import version_line

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-v", "--version", message=version_line())
def cli() -> None:
    """Backup, restore and disaster recovery for etcd: full and delta snapshots to Local, S3, GCS
    or Azure Blob storage, kept in sync on a secondary store.

    Exit codes: 0 success, 1 operational failure, 2 bad flags or configuration.
    """


def _register() -> None:
    # Each command lives in its own module and arrives with the work that builds it.
    import importlib

    for name in ("snapshot", "server", "restore", "initialize", "compact", "copy", "verify"):
        try:
            module = importlib.import_module(f"etcdbr.cli.cmd_{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"etcdbr.cli.cmd_{name}":
                continue
            raise
        cli.add_command(module.command)


_register()


def main() -> None:
    cli(prog_name="etcd-backup-restore")
