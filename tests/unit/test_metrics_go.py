"""Every metric the Go etcdbrctl exports, as its Prometheus endpoint serves it: name, type, label
names, and the label values it creates at start.

The expected list is written here from the Go tool's source (``pkg/metrics/metrics.go`` and
``pkg/metrics/network_linux.go``), never derived from this tool's registry; what is checked is
the text this tool's ``/metrics`` serves (:func:`etcdbr.metrics.exposition`)."""

from __future__ import annotations

import re

import pytest

from etcdbr import metrics

KINDS = {"Full", "Incr", "Chunk"}
SUCCEEDED = {"true", "false"}
RESTORE = {"single_member", "single_node"}

# name -> (type, {label: values the Go tool pre-creates, or None when only the names matter})
GO_METRICS: dict[str, tuple[str, dict[str, set[str] | None]]] = {
    "etcdbr_snapshot_gc_total": ("counter", {"kind": KINDS, "succeeded": SUCCEEDED}),
    "etcdbr_snapshot_latest_revision": ("gauge", {"kind": KINDS}),
    "etcdbr_snapshot_latest_timestamp": ("gauge", {"kind": KINDS}),
    "etcdbr_snapshot_required": ("gauge", {"kind": KINDS}),
    "etcdbr_snapshot_duration_seconds": ("histogram", {"kind": KINDS, "succeeded": SUCCEEDED}),
    "etcdbr_validation_duration_seconds": ("histogram", {"succeeded": SUCCEEDED}),
    "etcdbr_restoration_duration_seconds": ("histogram", {"restore": RESTORE, "succeeded": SUCCEEDED}),
    "etcdbr_defragmentation_duration_seconds": ("histogram", {"succeeded": SUCCEEDED, "endpoint": None}),
    "etcdbr_snapstore_latest_deltas_total": ("gauge", {}),
    "etcdbr_snapstore_latest_deltas_revisions_total": ("gauge", {}),
    "etcdbr_snapshotter_failure": ("counter", {"error": None}),
    "etcdbr_cluster_size": ("gauge", {}),
    "etcdbr_is_learner": ("gauge", {}),
    "etcdbr_is_learner_count_total": ("counter", {"succeeded": SUCCEEDED}),
    "etcdbr_add_learner_duration_seconds": ("histogram", {"succeeded": SUCCEEDED}),
    "etcdbr_member_remove_duration_seconds": ("histogram", {"succeeded": SUCCEEDED}),
    "etcdbr_member_promote_duration_seconds": ("histogram", {"succeeded": SUCCEEDED}),
    "etcdbr_network_transmitted_bytes": ("counter", {}),
    "etcdbr_network_received_bytes": ("counter", {}),
}

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], str]]]:
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, line
            samples.append((m["name"], dict(_LABEL.findall(m["labels"] or "")), m["value"]))
    return types, samples


@pytest.fixture(scope="module")
def served():
    return parse(metrics.exposition().decode())


@pytest.mark.parametrize("name", sorted(GO_METRICS))
def test_go_metric_is_served_with_its_type_and_labels(name, served):
    types, samples = served
    kind, labels = GO_METRICS[name]
    assert types.get(name) == kind, f"{name}: TYPE {types.get(name)!r}, the Go tool's is {kind!r}"
    series = {name} if kind != "histogram" else {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    mine = [(n, lab) for n, lab, _ in samples if n in series]
    assert {n for n, _ in mine} == series, f"{name}: the Go tool's series are {sorted(series)}"
    for n, lab in mine:
        names = set(lab) - ({"le"} if n.endswith("_bucket") else set())
        assert names == set(labels), f"{n}: labels {sorted(names)}, the Go tool's are {sorted(labels)}"
    for label, values in labels.items():
        if values is not None:
            assert {lab[label] for n, lab in mine} >= values, f"{name}: {label} values the Go tool creates at start"


def test_counters_keep_the_go_names_without_a_total_suffix(served):
    types, samples = served
    names = {n for n, _, _ in samples}
    for name in ("etcdbr_snapshotter_failure", "etcdbr_network_transmitted_bytes", "etcdbr_network_received_bytes"):
        assert f"{name}_total" not in names and f"{name}_total" not in types


def test_snapshotter_failure_counts_by_error():
    metrics.snapshotter_failure.labels("TestError").inc()
    metrics.snapshotter_failure.labels("TestError").inc()
    _, samples = parse(metrics.exposition().decode())
    [value] = [v for n, lab, v in samples if n == "etcdbr_snapshotter_failure" and lab == {"error": "TestError"}]
    assert float(value) == 2.0


def test_network_bytes_are_this_namespaces_interface_totals(served):
    """What the Go tool reads: the sum over /proc/<pid>/net/dev's interfaces (bytes received is
    field 0, transmitted field 8)."""
    with open("/proc/self/net/dev") as f:
        rows = [line.split(":", 1)[1].split() for line in f if ":" in line]
    received, transmitted = sum(int(r[0]) for r in rows), sum(int(r[8]) for r in rows)
    _, samples = served
    got = {n: float(v) for n, _, v in samples if n.startswith("etcdbr_network_")}
    # the counters only grow between the scrape and this read
    assert 0 <= got["etcdbr_network_received_bytes"] <= received
    assert 0 <= got["etcdbr_network_transmitted_bytes"] <= transmitted
    assert got["etcdbr_network_received_bytes"] > 0 or received == 0
