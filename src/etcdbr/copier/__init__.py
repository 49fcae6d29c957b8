"""The BackupCopier: keeps a secondary snapstore a verified copy of the primary.

Contract (``spec/dual-endpoint.md``; the log sentences below are the ones operators grep for):

* ``snapstore.open_stores(config)`` opens both endpoints at startup. The primary must work (else
  the command fails); a secondary that cannot be opened or reached means single-endpoint mode with
  ``Only primary snapstore available, using single endpoint``; both failing is a startup error.
* A sync run lists the primary, lists the secondary, compares them by ``Snapshot.copier_key()``
  (``{directory}/{name}:{start}-{end}``, ``.final`` ignored), copies what the secondary lacks and
  deletes what only the secondary has. A store whose listing fails is never taken for empty: the
  run fails and changes nothing.
* A copy counts only once verified: the destination is read back and its size and SHA-256 must
  equal those of the source bytes. A failed verification deletes the bad copy. With
  ``--backup-sync-verify=metadata`` a server-side copy counts without downloads when the service
  reports the same size and content digest (S3 ETag, GCS CRC32C) for both objects; else it is read back.
* Copies are written under the secondary's prefix with ``.final`` stripped from the name, as the
  Go copier does (a WORM bucket accepts a name once; the key ignores the suffix anyway).
* Orphan deletion honours immutability and a safety guard: nothing is deleted when the primary
  lists no snapshot, nor when a run would delete more than ``max_delete_fraction`` of the
  secondary. Keys copied (or being copied) since the primary was listed are never orphans: an
  event-driven copy of a snapshot uploaded after that listing may already be on the secondary.
* ``notify(snapshot)`` (from any thread) copies a just-uploaded snapshot at once; the periodic run
  is the safety net. A key is never copied twice at the same time.
* ``stop(grace)`` drains, then stops: no new sync run starts, but what is queued, in flight or
  notified meanwhile (the snapshotter's final delta above all) is still copied and verified, for
  at most ``grace`` seconds; then in-flight copies abort their upload (the store's save leaves
  nothing behind) and every snapshot left uncopied is logged by name for the next start.
* Outages are reported when they happen: the first failed copy or listing of an endpoint logs a
  WARN naming it and the reason and flips its availability (metric and status); while an endpoint
  is down the periodic run comes every ``retry_backoff`` (at most every ``period``) as a probe, and
  the run that finds it back logs an INFO with how long it was down and how many copies caught up.
* A copy or deletion that fails for a reason a retry can change is tried again
  ``--backup-sync-max-retries`` times, ``--backup-sync-retry-backoff`` apart and doubling (at most
  ``DRAIN_RETRY_WAIT`` apart while draining), by ``etcdbr.retry``.

Modules: ``plan`` (pure planning), ``engine`` (the BackupCopier), ``transfer`` (one verified
copy), ``inventory`` (what is where), ``endpoints`` (outages), ``result`` (what runs did).
"""

from .engine import DRAIN_POLL, DRAIN_RETRY_WAIT, BackupCopier
from .plan import SyncPlan, destination_for, own_snapshots, plan_sync, select_backups
from .result import ProgressFn, SyncResult
from .transfer import PRIMARY, SECONDARY

__all__ = ["DRAIN_POLL", "DRAIN_RETRY_WAIT", "PRIMARY", "SECONDARY", "BackupCopier", "ProgressFn", "SyncPlan",
           "SyncResult", "destination_for", "own_snapshots", "plan_sync", "select_backups"]
