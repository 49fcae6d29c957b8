"""Which store a restore reads: ``--restore-from`` primary (default), secondary or auto.

``auto`` looks at both stores and restores from the one whose own chain (its latest full snapshot
and the contiguous, hash-verified deltas after it) reaches the highest revision. A chain is never
spliced from two stores: the two buckets are only eventually consistent (the copier runs behind,
GC runs on each independently), so one store's deltas need not continue the other's full.

A store that fails (unreachable, refused, a fetch error while verifying) is reported and never
counted as empty: "no snapshot" on one store with an error on the other is an error, because the
failing store might hold the newer data. The one exception the feature exists for: when the
primary cannot be reached and the secondary has a usable chain, auto restores from the secondary
and says so with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import Config, StoreConfig
from ..errors import ConfigError, EtcdbrError, IntegrityError, RestoreError
from ..snapshot import Snapshot, latest_chain
from ..verify import check_full, read_decompressed
from .pitr import Target, TargetOutOfRange, chain_for
from .restorer import Chain

if TYPE_CHECKING:
    from ..snapstore import SnapStore

log = logging.getLogger(__name__)

MODES = ("primary", "secondary", "auto")
# Full snapshots up to this size (as stored) are fetched and their SHA-256 trailer checked before
# choosing; bigger ones are checked by etcdutl during the restore itself.
FULL_VERIFY_LIMIT = 256 * 1024 * 1024


@dataclass
class Candidate:
    role: str
    display: str
    store: SnapStore | None = None
    chain: Chain | None = None
    error: EtcdbrError | None = None
    issues: list[str] = field(default_factory=list)

    @property
    def reach(self) -> int:
        return self.chain.last_revision if self.chain else -1


@dataclass
class Selection:
    store: SnapStore
    role: str
    reason: str
    chain: Chain | None = None
    truncated: bool = False
    others: list = field(default_factory=list)

    def close_others(self) -> None:
        for other in self.others:
            other.close()
        self.others = []


def _open(store_config: StoreConfig):
    from ..snapstore import open_store

    return open_store(store_config)


def _store_config(config: Config, role: str) -> StoreConfig:
    if role == "secondary":
        if not config.secondary_configured:
            raise ConfigError("--restore-from=secondary needs a secondary store (--secondary-storage-provider ...)")
        return config.secondary
    return config.store


def select_source(config: Config, *, mode: str | None = None, verify_full: bool | None = None,
                  target: Target | None = None) -> Selection:
    """Pick the store (and, in auto mode, the verified chain) a restore should use. ``target``: a
    point-in-time restore's; auto then compares the chains that reach it (:mod:`.pitr`)."""
    mode = mode or config.restoration.restore_from or "primary"
    if mode not in MODES:
        raise ConfigError(f"--restore-from must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "auto":
        store_config = _store_config(config, mode)
        store = _open(store_config)
        return Selection(store=store, role=mode, reason=f"--restore-from={mode}")
    if not config.secondary_configured:
        log.info("restore source: primary (auto mode, no secondary store configured)",
                 extra={"store": config.store.display})
        return Selection(store=_open(config.store), role="primary", reason="auto: no secondary store configured")
    if verify_full is None:
        verify_full = not config.restoration.skip_hash_check
    return _decide(_evaluate("primary", config.store, verify_full, target),
                   _evaluate("secondary", config.secondary, verify_full, target))


def choose_store(config: Config) -> tuple[SnapStore, str]:
    """``(store, reason)`` for ``--restore-from``; see :func:`select_source` for the chain too."""
    sel = select_source(config)
    sel.close_others()
    return sel.store, sel.reason


def _evaluate(role: str, store_config: StoreConfig, verify_full: bool, target: Target | None = None) -> Candidate:
    cand = Candidate(role=role, display=store_config.display)
    try:
        cand.store = _open(store_config)
        cand.display = cand.store.display
        upto = None
        if target is None:
            full, deltas = latest_chain(cand.store.list())
            if full is None:
                return cand
        else:
            try:
                planned = chain_for(cand.store, target)
            except TargetOutOfRange as exc:
                cand.issues.append(str(exc))
                return cand
            full, deltas, upto = planned.full, planned.deltas, planned.upto
        usable: list[Snapshot] = []
        expected = full.last_revision + 1
        for delta in deltas:
            if delta.start_revision > expected:
                cand.issues.append(f"revision gap: revisions {expected}-{delta.start_revision - 1} missing before "
                                   f"{delta.key}")
                break
            try:
                _verify_delta(cand.store, delta)
            except IntegrityError as exc:
                cand.issues.append(f"{delta.key} failed verification: {exc}")
                break
            usable.append(delta)
            expected = max(expected, delta.last_revision + 1)
        if verify_full and full.size is not None and full.size <= FULL_VERIFY_LIMIT:
            try:
                _verify_full(cand.store, full)
            except IntegrityError as exc:
                cand.issues.append(f"full snapshot {full.key} failed verification: {exc}")
                return cand
        if upto is not None and usable != deltas:
            cand.issues.append(f"cannot reach {target}")
            return cand
        cand.chain = Chain(full, usable, upto=upto)
    except EtcdbrError as exc:
        cand.error = exc
    return cand


def _read_all(store, snap: Snapshot) -> bytes:
    chunks: list[bytes] = []
    raw = store.fetch(snap)
    try:
        read_decompressed(raw, snap.compression_suffix, chunks.append)
    finally:
        raw.close()
    return b"".join(chunks)


def _verify_delta(store, delta: Snapshot) -> None:
    from ..delta import decode_delta

    events = decode_delta(_read_all(store, delta))
    if events and events[-1].kv.mod_revision != delta.last_revision:
        raise IntegrityError(f"last event is at revision {events[-1].kv.mod_revision}, the name says "
                             f"{delta.last_revision}")


def _verify_full(store, full: Snapshot) -> None:
    """etcd's trailer: the last 32 bytes are the SHA-256 of everything before them."""
    raw = store.fetch(full)
    try:
        check_full(raw, full.compression_suffix)
    finally:
        raw.close()


def _describe(c: Candidate) -> str:
    if c.error is not None:
        return f"{c.role} {c.display}: error: {c.error}"
    if c.chain is None:
        return f"{c.role} {c.display}: " + ("; ".join(c.issues) if c.issues else "no full snapshot")
    text = (f"{c.role} {c.display}: full {c.chain.full.snap_name} + {len(c.chain.deltas)} delta(s) reaching "
            f"revision {c.reach}")
    return text + (f" ({'; '.join(c.issues)})" if c.issues else "")


def _one_store_failed(primary: Candidate, secondary: Candidate, chosen: Callable[[Candidate, str], Selection],
                      fail: Callable[[str], RestoreError]) -> Selection:
    """:func:`_decide` when a store could not be read: the other one, if it has a chain."""
    if primary.error is not None and secondary.error is not None:
        raise fail(f"no store can be read: {_describe(primary)}; {_describe(secondary)}")
    if primary.error is not None:
        if secondary.chain is None:
            # The secondary's "nothing" cannot stand for the primary, which might hold data.
            raise fail(f"the primary store failed and the secondary has nothing usable: {_describe(primary)}; "
                       f"{_describe(secondary)}")
        log.warning("primary store cannot be read; falling back to the secondary store",
                    extra={"primary": primary.display, "error": str(primary.error), "secondary": secondary.display})
        return chosen(secondary, f"auto: primary failed ({primary.error}); secondary reaches revision "
                                 f"{secondary.reach}")
    if primary.chain is None:
        raise fail(f"the secondary store failed and the primary has nothing usable: {_describe(secondary)}; "
                   f"{_describe(primary)}")
    log.warning("secondary store cannot be read; using the primary store",
                extra={"secondary": secondary.display, "error": str(secondary.error)})
    return chosen(primary, f"auto: secondary failed ({secondary.error}); primary reaches revision {primary.reach}")


def _decide(primary: Candidate, secondary: Candidate) -> Selection:
    for c in (primary, secondary):
        log.info("restore candidate", extra={"role": c.role, "store": c.display, "summary": _describe(c)})
    stores = [c.store for c in (primary, secondary) if c.store is not None]

    def chosen(c: Candidate, reason: str) -> Selection:
        assert c.store is not None  # a candidate with a chain was read from its store
        others = [s for s in stores if s is not c.store]
        truncated = bool(c.issues) and c.chain is not None
        if truncated:
            log.warning("restoring a chain cut short by a defect; later revisions of this store are not usable",
                        extra={"store": c.display, "revision": c.reach, "defect": "; ".join(c.issues)})
        log.info(f"restore source: {c.role} ({reason})", extra={"store": c.display, "revision": c.reach})
        return Selection(store=c.store, role=c.role, reason=reason, chain=c.chain, truncated=truncated, others=others)

    def fail(message: str) -> RestoreError:
        for s in stores:
            s.close()
        return RestoreError(message)

    if primary.error is not None or secondary.error is not None:
        return _one_store_failed(primary, secondary, chosen, fail)
    usable = [c for c in (primary, secondary) if c.chain is not None]
    if not usable:
        if primary.issues or secondary.issues:
            raise fail(f"neither store has a usable chain: {_describe(primary)}; {_describe(secondary)}")
        # Both answered and both are empty: nothing to restore, reported by the restorer.
        assert primary.store is not None  # it answered
        for s in stores:
            if s is not primary.store:
                s.close()
        return Selection(store=primary.store, role="primary", reason="auto: neither store holds a full snapshot")
    best = max(usable, key=lambda c: (c.reach, c.role == "primary"))
    other = secondary if best is primary else primary
    if other.chain is None:
        why = f"the {other.role} has no usable chain"
    elif other.reach == best.reach:
        why = f"both reach revision {best.reach}; the primary is preferred"
    else:
        why = f"reaches revision {best.reach}, the {other.role} only {other.reach}"
    return chosen(best, f"auto: {why}")
