"""What every command shares: logging set-up, error-to-exit-code mapping, store opening.

Exit codes: 0 success; 1 operational failure (store or etcd unreachable, integrity defect,
restore failed); 2 bad flags, environment, config file or credentials; 130 interrupted.
"""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading

import click

from .. import logs
from ..config import Config
from ..errors import EtcdbrError
from .options import resolve, secret_values

log = logging.getLogger("etcdbr")


def command_runner(*groups: str, extra=None, member: bool = False, restores: bool = False):
    """Wrap a command body ``fn(config, **params)``: resolve config, set up logs, check the
    configuration rules, map errors. ``member``: the command acts for the member whose identity
    etcd's config file (ETCD_CONF) gives when flags do not; ``restores``: it always restores, so
    the member's flags are checked against --initial-cluster before anything else."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(**params):
            previous = _interrupt_on_sigterm()
            try:
                config = resolve(click.get_current_context(), *groups, "logging", extra=extra)
                logs.setup(config.log_level, config.log_format)
                for secret in secret_values(config):
                    logs.register_secret(secret)
                if member:
                    from ..etcdconf import apply_member_identity

                    apply_member_identity(config)
                from ..configcheck import advisories, check

                check(config, groups, member_urls=restores)
                for advice in advisories(config, groups):
                    log.warning(advice)
                for overridden in config.extra.get("overridden", []):
                    log.warning(f"--config-file (the Go tool's format) wins over {overridden}, as with the Go tool")
                for key in config.extra.get("file_ignored", []):
                    log.warning(f"--config-file: {key!r} is no setting the Go tool reads; ignored, as the Go tool "
                                "ignores it")
                code = fn(config, **params)
            except EtcdbrError as exc:
                click.echo(f"error: {logs.redact(str(exc))}", err=True)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                sys.exit(130)
            except click.exceptions.Exit:
                raise
            except click.ClickException:
                raise
            except SystemExit:
                raise
            except Exception as exc:  # an internal failure still gets one line, not a traceback
                log.debug("internal error", exc_info=True)
                click.echo(f"error: internal error: {type(exc).__name__}: {logs.redact(str(exc))} "
                           "(run with --log-level=debug for details)", err=True)
                sys.exit(1)
            finally:
                _restore_sigterm(previous)
            sys.exit(code or 0)

        return wrapper

    return decorate


def _sigterm(signum, frame):
    raise KeyboardInterrupt("terminated")


def _interrupt_on_sigterm():
    """SIGTERM (Kubernetes stopping a pod) unwinds like Ctrl-C instead of killing the process on
    the spot, so uploads are aborted, temp files removed and a half-built data dir discarded.
    Commands with their own event loop handlers (server, snapshot) replace this while they run."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main interpreter
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except ValueError:
            pass


def open_checked_store(store_config, *, sweep: bool = True):
    """Open a store and check that it is reachable; errors name the endpoint. ``sweep=False``
    (read-only commands) leaves interrupted uploads' leftovers in place."""
    from ..snapstore import open_checked

    return open_checked(store_config, sweep=sweep)


def within_deadline(seconds: float, what: str, fn):
    """``fn()`` in a daemon thread, or StoreUnavailable naming the store ``what`` when it has not answered
    within ``seconds``: the backstop that bounds a command whatever a store does (the requests
    themselves are bounded by --store-timeout; a call made of many requests is bounded here).
    The thread is left behind; the command is about to exit."""
    from ..errors import StoreUnavailable

    box: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="deadline", daemon=True).start()
    if not done.wait(seconds):
        raise StoreUnavailable(f"no answer within {seconds:g}s (3x --store-timeout); giving up", endpoint=what)
    if "error" in box:
        raise box["error"]
    return box["value"]


def version_line() -> str:
    from .. import __version__

    return f"etcd-backup-restore {__version__} (python {sys.version.split()[0]})"


__all__ = ["Config", "command_runner", "open_checked_store", "version_line", "within_deadline"]
