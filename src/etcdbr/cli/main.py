"""Entry point: ``etcd-backup-restore`` (alias ``etcdbrctl``, the Go tool's name)."""

from __future__ import annotations

import sys

import click

from .. import __version__
from .common import version_line
from .options import FlagError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class OneLineErrors(click.Group):
    """click's own errors (an unknown flag or command, a missing argument) as one line naming the
    command's --help, exit 2, instead of click's three-line usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except (click.exceptions.NoArgsIsHelpError, FlagError) as exc:  # a bare group's help; our own one line
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "etcd-backup-restore")
            message = " ".join(exc.format_message().split())
            click.echo(f"error: {message} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineErrors, context_settings=CONTEXT)
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
