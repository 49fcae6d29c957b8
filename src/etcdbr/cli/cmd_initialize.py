"""``initialize``: validate ``--data-dir`` and restore it from the store only if it is unusable."""

from __future__ import annotations

from datetime import timedelta

import click

from ..config import InitializeOptions
from .cmd_restore import RESTORE_FROM
from .common import command_runner
from .options import FlagCommand, Opt, add_options
from .types import Choice, Duration

VALIDATION_MODE = Opt("validation-mode", "extra.validation_mode", Choice("full", "sanity"),
                      "full: structure, membership, revision and a read of the whole db; "
                      "sanity: the quick checks only.", defaults=InitializeOptions)
QUORUM_WAIT = Opt("quorum-wait", "extra.quorum_wait",
                  Duration(timedelta(0), inclusive=True, expect="a duration >= 0 such as 30s or 2m"),
                  "Multi-member clusters: how long to wait for the other members (--service-endpoints, else "
                  "--endpoints) to show a leader before an unusable data dir counts as part of a whole-cluster "
                  "loss and is restored from the store.", defaults=InitializeOptions)
GROUPS = ("restoration", "pitr", "store", "secondary", "etcd")
EXTRA = [VALIDATION_MODE, RESTORE_FROM, QUORUM_WAIT]


@click.command(name="initialize", cls=FlagCommand)
@add_options(*GROUPS, extra=EXTRA)
@command_runner(*GROUPS, extra=EXTRA, member=True)
def command(config, **_params) -> int:
    """Check the etcd data dir; when it is missing, empty, corrupt or behind the latest snapshot,
    restore it (built beside it, checked, swapped in; the old one is moved aside and kept). A
    healthy data dir is not touched. A data dir of another member (neither --name nor the member's
    peer URLs recorded in it) is refused (exit 2): fix --name (or the name in etcd's config file,
    ETCD_CONF) or the mounted volume. The member's name, data dir, initial cluster and peer URLs
    come from etcd's config file ($ETCD_CONF, else /var/etcd/config/etcd.conf.yaml) where no flag
    sets them.

    In a multi-member cluster (--initial-cluster) a member behind the latest snapshot is left to
    Raft, and a member with an unusable data dir is replaced through etcd's membership API and
    synced from the leader while the rest of the cluster has a quorum; it is restored from the
    store only when the whole cluster is lost.

    With --to-revision or --to-time, a restore it makes stops at that point, and the data dir
    counts as behind when it is below it; a healthy data dir at or above it is kept (a warning
    says the target was not applied): see docs/recovery.md. A data dir restored to a point in time
    (its etcdbr-point-in-time-restore.json marker) is refused without a target (exit 1) while the
    store it came from, configured again, holds newer snapshots: use a new --store-prefix."""
    from ..restore import Initializer

    Initializer(config).run(config.extra.get("validation_mode", "full"))
    return 0
