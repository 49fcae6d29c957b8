"""``server``: the long-running sidecar (HTTP API, leader election, leader-gated backups).

* :mod:`.app` - lifecycle and the components a backup leader runs.
* :mod:`.api` - the HTTP API.
* :mod:`.leader` - backup leader election from etcd's own Raft leadership.
* :mod:`.initialization` - the ``/initialization/*`` state machine.
* :mod:`.configview` - what ``/config`` serves.
"""

from .app import SERVER_GROUPS, BackupServer, run_server

__all__ = ["SERVER_GROUPS", "BackupServer", "run_server"]
