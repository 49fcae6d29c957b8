"""The snapshotter: full snapshots on a cron schedule, delta snapshots from a watch in between.

Promises (what restore and the copier rely on):

* Every delta starts at the previous snapshot's last revision + 1 and ends at the mod revision of
  its last event; the events it holds are exactly that range, each revision whole (deltas are cut
  only between watch responses, and etcd never splits a revision across responses).
* A full snapshot is named after the revision it holds (see ``fullsnapshot.open_fenced_snapshot``
  for how that is known, and the one case where it is a lower bound).
* Events that arrive while a delta uploads go into a fresh buffer; a failed delta upload keeps its
  payload and is retried first next time, so nothing is lost while the process lives.
* A watch that breaks (etcd restart, leader change) resumes at the revision after the last one
  buffered; a watch that cannot resume (history compacted) leads to a full snapshot.
* Listeners (the copier) hear of each snapshot after its upload succeeded.
* Startup (reading the store, then the first snapshot) is tried ``--backoff-attempt-limit`` times,
  pausing 1s, m, m^2 ... (``--backoff-multiplier``) up to ``--backoff-threshold-time``, through
  ``etcdbr.retry``; in the loop, a failed full or delta snapshot is due again after those pauses.

Modules: ``schedule`` (when: pure rules), ``collector`` (the watch and its event buffer),
``snapshotter`` (the loop and the uploads), ``fullsnapshot`` (etcd's snapshot stream, checked on its
way into the store), ``listeners``.
"""

from .schedule import backoff_delay, backoff_policy, full_snapshot_required_at_startup, full_snapshot_time_window
from .snapshotter import Snapshotter

__all__ = ["Snapshotter", "backoff_delay", "backoff_policy", "full_snapshot_required_at_startup",
           "full_snapshot_time_window"]
