"""Prometheus metrics, with the Go tool's names so existing dashboards keep working.

All metrics live in one registry defined here; components import and update them. Labels never
carry secrets or object keys: only kinds, outcomes and endpoint roles.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# The Go client exposes no *_created series; keep the exposition the same.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
NS = "etcdbr"
_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# -- the Go tool's metrics (its pkg/metrics): same names, types, labels, help and label values ----
# The Go tool creates every label combination at start, so each series exists (at 0) before its
# first event; so does this tool (_preset below). Histogram buckets are this tool's: the Go
# client's default ones end at 10s, below what a snapshot or a restore takes.
SNAPSHOT_KINDS = ("Full", "Incr", "Chunk")
SUCCEEDED = ("false", "true")
RESTORE_KINDS = ("single_member", "single_node")

snapshot_gc_total = Counter(f"{NS}_snapshot_gc_total", "Total number of garbage collected snapshots.",
                            ["kind", "succeeded"], registry=REGISTRY)
snapshot_latest_revision = Gauge(f"{NS}_snapshot_latest_revision", "Revision number of latest snapshot taken.",
                                 ["kind"], registry=REGISTRY)
snapshot_latest_timestamp = Gauge(f"{NS}_snapshot_latest_timestamp", "Timestamp of latest snapshot taken.", ["kind"],
                                  registry=REGISTRY)
snapshot_required = Gauge(f"{NS}_snapshot_required", "Indicates whether a snapshot is required to be taken.",
                          ["kind"], registry=REGISTRY)
snapshot_duration = Histogram(f"{NS}_snapshot_duration_seconds",
                              "Total latency distribution of saving snapshot to object store.",
                              ["kind", "succeeded"], registry=REGISTRY, buckets=_BUCKETS)
validation_duration = Histogram(f"{NS}_validation_duration_seconds",
                                "Total latency distribution of validating data directory.",
                                ["succeeded"], registry=REGISTRY, buckets=_BUCKETS)
restoration_duration = Histogram(f"{NS}_restoration_duration_seconds",
                                 "Total latency distribution required to restore the etcd member.",
                                 ["restore", "succeeded"], registry=REGISTRY, buckets=_BUCKETS)
defragmentation_duration = Histogram(f"{NS}_defragmentation_duration_seconds",
                                     "Total latency distribution of defragmentation of each etcd cluster member.",
                                     ["succeeded", "endpoint"], registry=REGISTRY, buckets=_BUCKETS)
snapstore_latest_deltas_total = Gauge(f"{NS}_snapstore_latest_deltas_total",
                                      "Total number of delta snapshots taken since the latest full snapshot.",
                                      registry=REGISTRY)
snapstore_latest_deltas_revisions_total = Gauge(
    f"{NS}_snapstore_latest_deltas_revisions_total",
    "Total number of revisions stored in delta snapshots taken since the latest full snapshot.", registry=REGISTRY)
# A counter whose Go series has no _total suffix: see GO_COUNTERS_WITHOUT_TOTAL.
snapshotter_failure = Counter(f"{NS}_snapshotter_failure", "Total number of snapshotter errors.", ["error"],
                              registry=REGISTRY)
cluster_size = Gauge(f"{NS}_cluster_size", "Current Etcd cluster size.", registry=REGISTRY)
is_learner = Gauge(f"{NS}_is_learner", "Whether or not this member is a learner. 1 if is, 0 otherwise",
                   registry=REGISTRY)
is_learner_count_total = Counter(f"{NS}_is_learner_count_total", "Total count when etcd member added as a learner.",
                                 ["succeeded"], registry=REGISTRY)
add_learner_duration = Histogram(f"{NS}_add_learner_duration_seconds",
                                 "Total latency to add the etcd member as a learner to the cluster.",
                                 ["succeeded"], registry=REGISTRY, buckets=_BUCKETS)
member_remove_duration = Histogram(f"{NS}_member_remove_duration_seconds",
                                   "Total latency to remove the etcd member from the cluster.",
                                   ["succeeded"], registry=REGISTRY, buckets=_BUCKETS)
member_promote_duration = Histogram(f"{NS}_member_promote_duration_seconds",
                                    "Total latency to promote the learner to the voting member.",
                                    ["succeeded"], registry=REGISTRY, buckets=_BUCKETS)


def _network_bytes(field: int) -> float:
    """Bytes received (field 0) or transmitted (field 8) over every interface of this process's
    network namespace, from ``/proc/self/net/dev`` as the Go tool reads it; NaN where unreadable."""
    try:
        with open("/proc/self/net/dev", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return math.nan
    total = 0.0
    for line in lines:
        name, sep, values = line.partition(":")
        if not sep:
            continue
        try:
            total += float(values.split()[field])
        except (IndexError, ValueError):
            return math.nan
    return total


class _NetworkCollector(Collector):
    """``etcdbr_network_{transmitted,received}_bytes``: Go CounterFuncs, read at each scrape."""

    def collect(self):
        for name, field, help_text in (("transmitted_bytes", 8, "Number of bytes transmitted over network."),
                                       ("received_bytes", 0, "Number of bytes received over network.")):
            family = CounterMetricFamily(f"{NS}_network_{name}", help_text)
            family.add_metric([], _network_bytes(field))
            yield family


REGISTRY.register(_NetworkCollector())

#: The Go tool's counters whose series carry no ``_total`` (Go's client adds none; prometheus_client
#: names every counter's samples ``<name>_total``): :func:`exposition` serves them under the Go name.
GO_COUNTERS_WITHOUT_TOTAL = (f"{NS}_snapshotter_failure", f"{NS}_network_transmitted_bytes",
                             f"{NS}_network_received_bytes")


def _preset() -> None:
    for kind in SNAPSHOT_KINDS:
        snapshot_latest_revision.labels(kind)
        snapshot_latest_timestamp.labels(kind)
        snapshot_required.labels(kind)
        for ok in SUCCEEDED:
            snapshot_gc_total.labels(kind, ok)
            snapshot_duration.labels(kind, ok)
    for ok in SUCCEEDED:
        validation_duration.labels(ok)
        defragmentation_duration.labels(ok, "")
        is_learner_count_total.labels(ok)
        add_learner_duration.labels(ok)
        member_remove_duration.labels(ok)
        member_promote_duration.labels(ok)
        for restore in RESTORE_KINDS:
            restoration_duration.labels(restore, ok)
    snapshotter_failure.labels("")


_preset()

# -- this tool's ---------------------------------------------------------------------------------
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


def exposition() -> bytes:
    """The registry in Prometheus' text format, with the Go tool's counter names
    (:data:`GO_COUNTERS_WITHOUT_TOTAL`) as the Go tool serves them."""
    lines = generate_latest(REGISTRY).decode().splitlines(keepends=True)
    out = []
    for line in lines:
        for name in GO_COUNTERS_WITHOUT_TOTAL:
            served = f"{name}_total"
            if line.startswith((f"# HELP {served} ", f"# TYPE {served} ")):
                line = line.replace(served, name, 1)
            elif line.startswith((f"{served}{{", f"{served} ")):
                line = name + line[len(served):]
        out.append(line)
    return "".join(out).encode()
