"""What a sync run will do, computed from two listings (pure: no store is touched here)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

from ..snapshot import LAYOUT_V1, LAYOUT_V2, Kind, Snapshot, sort_key


@dataclass
class SyncPlan:
    """What one run will do. ``to_copy`` includes the snapshots of ``to_replace``."""

    to_copy: list[Snapshot] = field(default_factory=list)
    to_replace: list[Snapshot] = field(default_factory=list)   # secondary copies whose size differs
    orphans: list[Snapshot] = field(default_factory=list)      # deletable snapshots only on the secondary
    to_delete: list[Snapshot] = field(default_factory=list)    # ``orphans`` unless the guard stopped it
    immutable: list[Snapshot] = field(default_factory=list)    # orphans under retention: left alone
    deletion_skipped: str = ""                                 # why the guard skipped deletion
    primary_count: int = 0
    secondary_count: int = 0

    @property
    def missing_keys(self) -> set[str]:
        return {s.copier_key() for s in self.to_copy}


def _layout_prefixes(prefix_v2: str) -> set[str]:
    """A store's own trees: ``<prefix>/v2`` and the legacy ``<prefix>/v1`` beside it."""
    base = prefix_v2[: -len(LAYOUT_V2)]
    return {prefix_v2, base + LAYOUT_V1}


def own_snapshots(snaps: Iterable[Snapshot], prefix_v2: str) -> list[Snapshot]:
    """Whole snapshots of this store's trees. A listing covers the parent of ``<prefix>/v2``, so it
    may hold another store's tree (a secondary prefix nested in the primary's); never touch those."""
    mine = _layout_prefixes(prefix_v2)
    return [s for s in snaps if not s.is_chunk and s.prefix in mine]


def select_backups(snaps: Sequence[Snapshot], max_backups: int = -1, max_age_days: int = -1,
                   now: datetime | None = None) -> list[Snapshot]:
    """The ``copy`` command's filter: backups (a full plus the deltas after it), newest first, at
    most ``max_backups`` of them, only those whose full is younger than ``max_age_days``."""
    if max_backups < 0 and max_age_days < 0:
        return list(snaps)
    now = now or datetime.now(timezone.utc)
    backups: list[list[Snapshot]] = []
    for snap in sorted(snaps, key=sort_key):
        if snap.kind is Kind.FULL:
            backups.append([snap])
        elif backups:  # deltas older than the oldest full belong to no backup
            backups[-1].append(snap)
    selected: list[Snapshot] = []
    taken = 0
    for backup in reversed(backups):
        if 0 <= max_backups <= taken:
            break
        if max_age_days >= 0 and backup[0].created_on <= now - timedelta(days=max_age_days):
            continue
        selected.extend(backup)
        taken += 1
    selected.sort(key=sort_key)
    return selected


def plan_sync(primary: Sequence[Snapshot], secondary: Sequence[Snapshot], *, max_delete_fraction: float = 0.5,
              delete_orphans: bool = True, selection: Sequence[Snapshot] | None = None,
              protected_keys: Iterable[str] = (), now: datetime | None = None) -> SyncPlan:
    """Compare two listings (already reduced to each store's own snapshots).

    ``selection`` limits what is copied (the copy command's filters); orphans are always judged
    against the whole primary listing so a filter never deletes older backups.
    ``protected_keys`` are never orphans: keys copied or being copied since the primary was
    listed (a snapshot uploaded after that listing may already be on the secondary).
    """
    now = now or datetime.now(timezone.utc)
    plan = SyncPlan(primary_count=len(primary), secondary_count=len(secondary))
    on_secondary: dict[str, Snapshot] = {}
    for snap in secondary:
        on_secondary.setdefault(snap.copier_key(), snap)
    primary_keys = {s.copier_key() for s in primary}

    seen: set[str] = set()
    for snap in (primary if selection is None else selection):
        key = snap.copier_key()
        if key in seen:
            continue
        seen.add(key)
        copy = on_secondary.get(key)
        if copy is None:
            plan.to_copy.append(snap)
        elif snap.size is not None and copy.size is not None and snap.size != copy.size:
            # We verify every copy we make, so a copy of another size is not ours or is damaged.
            plan.to_copy.append(snap)
            plan.to_replace.append(copy)

    if not delete_orphans:
        return plan
    protected = set(protected_keys)
    for snap in secondary:
        key = snap.copier_key()
        if key in primary_keys or key in protected:
            continue
        (plan.orphans if snap.is_deletable(now) else plan.immutable).append(snap)
    plan.to_delete = list(plan.orphans)
    if plan.orphans:
        if not primary:
            plan.deletion_skipped = (
                f"the primary lists no snapshots, so deleting {len(plan.orphans)} snapshots would empty the "
                "secondary; an empty or misconfigured primary must never wipe the secondary")
        elif len(plan.orphans) > max_delete_fraction * len(secondary):
            plan.deletion_skipped = (
                f"deleting {len(plan.orphans)} of its {len(secondary)} snapshots is more than the allowed fraction "
                f"{max_delete_fraction:g} (--backup-sync-max-delete-fraction)")
        if plan.deletion_skipped:
            plan.to_delete = []
    return plan


def destination_for(src: Snapshot, dst_prefix_v2: str) -> Snapshot:
    """Where a copy goes: the secondary's tree of the same layout, without ``.final``."""
    prefix = dst_prefix_v2
    if src.prefix.split("/")[-1] == LAYOUT_V1:
        prefix = dst_prefix_v2[: -len(LAYOUT_V2)] + LAYOUT_V1
    return replace(src.with_prefix(prefix), is_final=False)
