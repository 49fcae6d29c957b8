"""``initialize``: validate ``--data-dir`` and restore it from the store only if it is unusable."""

from __future__ import annotations

from datetime import timedelta

import click

from ..config import parse_duration
from .cmd_restore import RESTORE_FROM
from .common import command_runner
from .options import Opt, add_options, choice


def _wait(text: str) -> timedelta:
    d = parse_duration(text)
    if d < timedelta(0):
        raise ValueError("a duration >= 0 such as 30s or 2m")
    return d


VALIDATION_MODE = Opt("validation-mode", "extra.validation_mode", choice("full", "sanity"), "full",
                      "full: structure, membership, revision and a read of the whole db; "
                      "sanity: the quick checks only.")
QUORUM_WAIT = Opt("quorum-wait", "extra.quorum_wait", _wait, timedelta(seconds=30),
                  "Multi-member clusters: how long to wait for the other members (--service-endpoints, else "
                  "--endpoints) to show a leader before an unusable data dir counts as part of a whole-cluster "
                  "loss and is restored from the store.")
GROUPS = ("restoration", "store", "secondary", "etcd")
EXTRA = [VALIDATION_MODE, RESTORE_FROM, QUORUM_WAIT]


@click.command(name="initialize")
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
    store only when the whole cluster is lost."""
    from ..restore import Initializer

    Initializer(config).run(config.extra.get("validation_mode", "full"))
    return 0
