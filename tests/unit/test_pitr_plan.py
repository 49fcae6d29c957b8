"""Which full snapshot and which deltas a point-in-time restore uses, and the ranges it names."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from etcdbr.restore.pitr import TargetOutOfRange, available_ranges, plan
from etcdbr.snapshot import Kind, Snapshot

T0 = datetime(2026, 12, 5, tzinfo=timezone.utc)


def full(rev: int) -> Snapshot:
    return Snapshot(Kind.FULL, 0, rev, T0)


def delta(start: int, last: int) -> Snapshot:
    return Snapshot(Kind.INCR, start, last, T0)


STORE = [full(100), delta(101, 150), delta(151, 200), full(200), delta(201, 260), delta(261, 300),
         full(400), delta(450, 500)]


def test_ranges_merge_each_full_with_its_contiguous_deltas():
    assert available_ranges(STORE) == [(100, 300), (400, 400)]
    assert available_ranges([]) == []


@pytest.mark.parametrize("target, base, deltas", [
    (100, 100, []),
    (120, 100, [(101, 150)]),
    (150, 100, [(101, 150)]),
    (151, 100, [(101, 150), (151, 200)]),
    (200, 200, []),
    (201, 200, [(201, 260)]),
    (300, 200, [(201, 260), (261, 300)]),
    (400, 400, []),
])
def test_the_newest_full_at_or_below_and_the_deltas_up_to_the_target(target, base, deltas):
    chain = plan(STORE, target, "Local/x")
    assert chain.full.last_revision == base
    assert [(d.start_revision, d.last_revision) for d in chain.deltas] == deltas
    assert chain.upto == target and chain.last_revision == target


@pytest.mark.parametrize("target", [1, 99, 301, 399, 401, 470, 10_000])
def test_targets_outside_the_chain_name_the_ranges(target):
    with pytest.raises(TargetOutOfRange, match=r"revision \d+ is not in the backups; the revisions this store can "
                                               r"restore to are 100-300, 400$"):
        plan(STORE, target, "Local/x")


def test_an_overlapping_delta_is_used_and_its_early_revisions_are_left_to_the_replay():
    chain = plan([full(100), delta(90, 130), delta(131, 140)], 135, "Local/x")
    assert [(d.start_revision, d.last_revision) for d in chain.deltas] == [(90, 130), (131, 140)]
