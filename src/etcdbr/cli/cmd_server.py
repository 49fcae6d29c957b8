"""``server``: the sidecar. HTTP API, leader election, and (on the backup leader) snapshots,
garbage collection, defragmentation and the dual-endpoint copier."""

from __future__ import annotations

import logging

import click

from .common import command_runner, version_line
from .options import COMPAT_IGNORED, Opt, add_options, choice

log = logging.getLogger(__name__)

GROUPS = ("etcd", "store", "secondary", "sync", "snapshotter", "compression", "backoff", "restoration", "server")
# The initializer's restore source. Empty means: auto when a secondary store is configured (the
# best intact chain, failing over when the primary is down), else the primary.
RESTORE_FROM = Opt(
    "restore-from", "restoration.restore_from", choice("primary", "secondary", "auto"), "",
    "Store the initializer restores from: primary, secondary or auto [default: auto with a secondary store, "
    "else primary].")
EXTRA = [RESTORE_FROM]
# The Go tool's boolean flags among those accepted and ignored: they may be given without a value.
_COMPAT_BOOLS = {"use-etcd-wrapper", "enable-snapshot-lease-renewal", "enable-member-lease-renewal"}


def _compat_options(fn):
    """The Go tool's Kubernetes-only flags (leases, etcd wrapper): accepted so existing pod specs
    keep working, hidden from help, and without effect."""
    for name in reversed(COMPAT_IGNORED):
        kwargs = {"default": None, "hidden": True, "expose_value": True}
        if name in _COMPAT_BOOLS:
            kwargs.update(is_flag=False, flag_value="true")
        fn = click.option(f"--{name}", f"compat_{name.replace('-', '_')}", **kwargs)(fn)
    return fn


def apply_server_defaults(config) -> None:
    """Defaults of the server that depend on other settings."""
    if not config.restoration.restore_from:
        config.restoration.restore_from = "auto" if config.secondary_configured else "primary"


@click.command(name="server")
@add_options(*GROUPS, "logging", extra=EXTRA)
@_compat_options
@command_runner(*GROUPS, extra=EXTRA, member=True)
def command(config, **params) -> int:
    """Run the backup sidecar: the HTTP API at once, then snapshots and garbage collection while
    this sidecar's etcd member is the Raft leader (followers only serve the API).

    The member's name, data dir, initial cluster and peer URLs come from etcd's config file
    ($ETCD_CONF, else /var/etcd/config/etcd.conf.yaml) where no flag sets them."""
    from ..server import run_server

    apply_server_defaults(config)
    log.info(version_line())
    ignored = sorted(name for name in COMPAT_IGNORED if params.get(f"compat_{name.replace('-', '_')}") is not None)
    if ignored:
        log.info("accepted for compatibility with the Go tool and ignored", extra={"flags": ",".join(ignored)})
    return run_server(config)
