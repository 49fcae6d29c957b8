"""Prometheus metrics, with the Go tool's names so existing dashboards keep working.

All metrics live in one registry defined here; components import and update them. Labels never
carry secrets or object keys: only kinds, outcomes and endpoint roles.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# The Go client exposes no *_created series; keep the exposition the same.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
NS = "etcdbr"
_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# -- snapshotter (Go names) ------------------------------------------------------------------
snapshot_duration = Histogram(f"{NS}_snapshot_duration_seconds", "Time taken to take and upload a snapshot.",
                              ["kind", "succeeded"], registry=REGISTRY, buckets=_BUCKETS)
snapshot_latest_revision = Gauge(f"{NS}_snapshot_latest_revision", "Last revision of the latest snapshot.", ["kind"],
                                 registry=REGISTRY)
snapshot_latest_timestamp = Gauge(f"{NS}_snapshot_latest_timestamp", "Unix time of the latest snapshot.", ["kind"],
                                  registry=REGISTRY)
snapshot_required = Gauge(f"{NS}_snapshot_required", "1 when a snapshot of this kind is due and not yet taken.",
                          ["kind"], registry=REGISTRY)
snapshot_gc_total = Counter(f"{NS}_snapshot_gc_total", "Snapshots deleted by garbage collection.",
                            ["kind", "succeeded"], registry=REGISTRY)
snapstore_latest_deltas_total = Gauge(f"{NS}_snapstore_latest_deltas_total", "Deltas after the latest full snapshot.",
                                      registry=REGISTRY)
snapstore_latest_deltas_revisions_total = Gauge(f"{NS}_snapstore_latest_deltas_revisions_total",
                                                "Revisions covered by the deltas after the latest full snapshot.",
                                                registry=REGISTRY)
# prometheus_client would expose a Counter as ``..._failure_total``; the Go tool's series is
# ``etcdbr_snapshotter_failure``, so it is a gauge that only ever increases.
snapshotter_failure = Gauge(f"{NS}_snapshotter_failure", "Snapshotter failures by error class (monotonic).", ["error"],
                            registry=REGISTRY)
defragmentation_duration = Histogram(f"{NS}_defragmentation_duration_seconds", "Time taken to defragment etcd.",
                                     ["succeeded", "endpoint"], registry=REGISTRY, buckets=_BUCKETS)
validation_duration = Histogram(f"{NS}_validation_duration_seconds", "Time taken to validate a data dir.",
                                ["succeeded"], registry=REGISTRY, buckets=_BUCKETS)
restoration_duration = Histogram(f"{NS}_restoration_duration_seconds", "Time taken to restore a data dir.",
                                 ["restore", "succeeded"], registry=REGISTRY, buckets=_BUCKETS)
cluster_size = Gauge(f"{NS}_cluster_size", "Members of the etcd cluster.", registry=REGISTRY)
is_leader = Gauge(f"{NS}_is_backup_leader", "1 when this sidecar's member is etcd's leader and takes snapshots.",
                  registry=REGISTRY)

# -- dual endpoint (this tool's) -------------------------------------------------------------
sync_runs = Counter(f"{NS}_backup_sync_runs_total", "BackupCopier sync runs by outcome.", ["succeeded"],
                    registry=REGISTRY)
sync_duration = Histogram(f"{NS}_backup_sync_duration_seconds", "Duration of a sync run.", registry=REGISTRY,
                          buckets=_BUCKETS)
sync_copies = Counter(f"{NS}_backup_sync_copies_total", "Snapshot copies to the secondary by outcome.", ["outcome"],
                      registry=REGISTRY)
sync_deletions = Counter(f"{NS}_backup_sync_deletions_total", "Orphan deletions on the secondary by outcome.",
                         ["outcome"], registry=REGISTRY)
sync_bytes = Counter(f"{NS}_backup_sync_copied_bytes_total", "Bytes copied to the secondary.", registry=REGISTRY)
sync_last_success = Gauge(f"{NS}_backup_sync_last_success_timestamp",
                          "Unix time of the last fully successful sync run.", registry=REGISTRY)
sync_pending = Gauge(f"{NS}_backup_sync_pending_snapshots",
                     "Snapshots on the primary not yet verified on the secondary.", registry=REGISTRY)
sync_lag_seconds = Histogram(f"{NS}_backup_sync_lag_seconds",
                             "Seconds from a snapshot's creation to its verified copy.", registry=REGISTRY,
                             buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
endpoint_up = Gauge(f"{NS}_snapstore_available", "1 when the endpoint answered its last listing.", ["endpoint"],
                    registry=REGISTRY)
endpoint_snapshots = Gauge(f"{NS}_snapstore_snapshots", "Snapshots listed on an endpoint.", ["endpoint"],
                           registry=REGISTRY)
endpoint_snapshot_difference = Gauge(f"{NS}_snapstore_snapshot_difference",
                                     "Snapshots on the primary missing from the secondary.", registry=REGISTRY)


def label_bool(value: bool) -> str:
    return "true" if value else "false"
