"""``server``: the sidecar. HTTP API, leader election, and (on the backup leader) snapshots,
garbage collection, defragmentation and the dual-endpoint copier."""

from __future__ import annotations

import logging

import click

from ..config import ServerOptions
from .common import command_runner, version_line
from .options import FlagCommand, Opt, add_options
from .types import Choice

log = logging.getLogger(__name__)

GROUPS = ("etcd", "store", "secondary", "sync", "snapshotter", "compression", "backoff", "restoration", "server")
# The initializer's restore source. Unset: auto when a secondary store is configured (the best
# intact chain, failing over when the primary is down), else the primary (apply_server_defaults).
RESTORE_FROM = Opt(
    "restore-from", "restoration.restore_from", Choice("primary", "secondary", "auto"),
    "Store the initializer restores from: primary, secondary or auto [default: auto with a secondary store, "
    "else primary].", defaults=ServerOptions)
EXTRA = [RESTORE_FROM]


def apply_server_defaults(config) -> None:
    """Defaults of the server that depend on other settings."""
    if not config.restoration.restore_from:
        config.restoration.restore_from = "auto" if config.secondary_configured else "primary"


@click.command(name="server", cls=FlagCommand)
@add_options(*GROUPS, "compat", extra=EXTRA)
@command_runner(*GROUPS, "compat", extra=EXTRA, member=True)
def command(config, **_params) -> int:
    """Run the backup sidecar: the HTTP API at once, then snapshots and garbage collection while
    this sidecar's etcd member is the Raft leader (followers only serve the API).

    The member's name, data dir, initial cluster and peer URLs come from etcd's config file
    ($ETCD_CONF, else /var/etcd/config/etcd.conf.yaml) where no flag sets them. A data dir restored
    to a point in time is refused at start (exit 1) while the store prefix it came from holds newer
    snapshots: back the rolled-back cluster up under a new --store-prefix (docs/recovery.md)."""
    from ..server import run_server

    apply_server_defaults(config)
    log.info(version_line())
    honoured = {"enable-snapshot-lease-renewal", "enable-member-lease-renewal", "k8s-heartbeat-duration",
                "full-snapshot-lease-name", "delta-snapshot-lease-name"}  # Kubernetes leases (server/leases.py)
    ignored = sorted(set(config.extra["compat"]) - honoured)
    if ignored:
        log.info("accepted for compatibility with the Go tool and ignored", extra={"flags": ",".join(ignored)})
    return run_server(config)
