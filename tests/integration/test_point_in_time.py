"""Point-in-time restore and ``snapshot history`` against etcd's own history.

One real etcd is written to (puts, overwrites, deletes, a multi-key transaction, a key put,
deleted and put again) while the real Snapshotter runs: a full snapshot at its start, deltas cut
at chosen points, a second full snapshot half-way. Before anything can compact it, etcd's own
``Range`` at each revision the tests restore to is recorded, and its own watch history of the
key that was put, deleted and put again. Each restore (``restore --to-revision`` / ``--to-time``,
``initialize``, from the primary, from a secondary made with ``copy``, and ``auto``) is served by a
real etcd and compared with that record: every key, value and revision, and the current revision.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.config import Config, StoreConfig
from etcdbr.etcd import proto as pb
from etcdbr.restore.rollback import MARKER
from etcdbr.snapshot import sort_key
from etcdbr.snapshotter import Snapshotter
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration

NAME = "member"
KEY = b"/registry/namespaces/prod"


@dataclass
class Source:
    """What the source etcd wrote, and what it looked like at the revisions the tests restore to."""

    root: Path
    bucket: Path
    full1: int = 0
    full2: int = 0
    cuts: list[int] = field(default_factory=list)        # last revision of each delta cut on purpose
    marks: dict[str, int] = field(default_factory=dict)  # named revisions
    times: dict[int, datetime] = field(default_factory=dict)  # revision -> when its write returned
    at: dict[int, sf.Dump] = field(default_factory=dict)     # revision -> etcd's Range at it
    key_history: list[tuple[int, str, int]] = field(default_factory=list)  # KEY: (revision, put|delete, size)
    end: int = 0

    def store(self):
        return open_store(StoreConfig(provider="Local", container=str(self.bucket), prefix="etcd"))


def dump_at(endpoint: str, revision: int) -> sf.Dump:
    c = sf.Client(endpoint)
    try:
        kvs, start = {}, b"\0"
        while True:
            resp = c.kv.Range(pb.RangeRequest(key=start, range_end=b"\0", limit=1000, revision=revision), timeout=60)
            for kv in resp.kvs:
                kvs[kv.key] = (kv.value, kv.create_revision, kv.mod_revision, kv.version)
            if not resp.more:
                return sf.Dump(revision, kvs)
            start = resp.kvs[-1].key + b"\0"
    finally:
        c.close()


def key_history(endpoint: str, key: bytes) -> list[tuple[int, str, int]]:
    """etcd's own history of ``key``: a watch from revision 1 (nothing is compacted yet)."""
    return [(e.kv.mod_revision, "delete" if e.type else "put", len(e.kv.value))
            for e in sf.SnapshotFactory(endpoint).history(1, sf.Client(endpoint).revision()) if e.kv.key == key]


def _write(src: Source, c: sf.Client, ops: list) -> int:
    rev = 0
    for op in ops:
        if op[0] == "put":
            rev = c.kv.Put(pb.PutRequest(key=op[1], value=op[2]), timeout=10).header.revision
        elif op[0] == "del":
            rev = c.kv.DeleteRange(pb.DeleteRangeRequest(key=op[1]), timeout=10).header.revision
        else:  # one transaction, several keys, one revision
            txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=v)) for k, v in op[1]])
            rev = c.kv.Txn(txn, timeout=10).header.revision
        src.times[rev] = datetime.now(timezone.utc)
    return rev


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    from services import EtcdServer

    root = tmp_path_factory.mktemp("pitr")
    src = Source(root=root, bucket=root / "bucket")
    etcd = EtcdServer(root / "etcd", name="source", bin_dir=sf.etcd_bin_dir())
    etcd.start()
    try:
        _run_source(src, etcd)
        src.marks["before-bad-write"] = src.marks["between-fulls"] - 1
        wanted = {src.full1, src.full2, *src.cuts, *src.marks.values(), src.end}
        for rev in sorted(wanted):
            src.at[rev] = dump_at(etcd.client_url, rev)
        src.key_history = key_history(etcd.client_url, KEY)
    finally:
        etcd.cleanup()
    return src


def _run_source(src: Source, etcd) -> None:
    c = sf.Client(etcd.client_url)
    _write(src, c, [("put", f"p/{i}".encode(), f"v{i}".encode()) for i in range(30)])
    config = Config()
    config.store = StoreConfig(provider="Local", container=str(src.bucket), prefix="etcd")
    config.etcd.endpoints = [etcd.client_url]
    config.snapshotter.schedule = "0 0 1 1 *"
    config.snapshotter.delta_snapshot_period = timedelta(hours=1)  # deltas are cut on purpose below
    snapper = Snapshotter(open_store(config.store), config)

    async def caught_up(rev: int) -> None:
        deadline = time.monotonic() + 30
        while (snapper.collected_revision or 0) < rev:
            assert time.monotonic() < deadline, "the watch did not catch up"
            await asyncio.sleep(0.05)

    async def cut(rev: int) -> None:
        await caught_up(rev)
        snap = await snapper.take_delta_snapshot()
        assert snap is not None and snap.last_revision == rev
        src.cuts.append(rev)

    async def write(ops: list) -> int:
        return await asyncio.to_thread(_write, src, c, ops)

    async def run() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        deadline = time.monotonic() + 30
        while snapper.latest()[0] is None:
            assert time.monotonic() < deadline, "no full snapshot"
            await asyncio.sleep(0.05)
        src.full1 = snapper.latest()[0].last_revision
        await write([("put", f"a/{i}".encode(), b"x" * (i * 10)) for i in range(10)])
        src.marks["inside-delta-1"] = await write([("put", b"p/3", b"overwritten")])
        await write([("del", b"p/4"), ("txn", [(b"t/1", b"one"), (b"t/2", b"two")]), ("put", KEY, b"ns-v1")])
        await cut(await write([("put", b"p/5", b"overwritten")]))  # delta 1 ends here
        await write([("del", b"a/2"), ("put", b"p/6", b"o1"), ("put", b"p/6", b"o2")])
        src.marks["between-fulls"] = await write([("del", KEY)])  # the bad write
        await cut(await write([("put", b"b/1", b"b")]))  # delta 2
        await caught_up(src.cuts[-1])
        full = await snapper.take_full_snapshot()
        src.full2 = full.last_revision
        assert src.full2 == src.cuts[-1]
        await write([("put", KEY, b"ns-v2-recreated"), ("put", b"p/7", b"o")])
        src.marks["before-gap"] = await write([("del", b"p/8")])
        await asyncio.sleep(2.5)  # a quiet stretch: --to-time lands in it
        src.marks["after-gap"] = await write([("put", b"p/9", b"late")])
        src.marks["inside-delta-3"] = await write([("put", b"c/1", b"c")])
        await cut(await write([("del", b"p/10")]))  # delta 3 (after the second full)
        src.end = await write([("put", b"d/1", b"d"), ("put", KEY, b"ns-v3")])
        await caught_up(src.end)
        stop.set()
        await running  # the final delta holds the last writes
        await snapper.close()

    try:
        asyncio.run(run())
    finally:
        c.close()


# -- helpers ---------------------------------------------------------------------------------------
def run(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def store_flags(bucket: Path, role: str = "") -> list[str]:
    return [f"--{role}storage-provider=Local", f"--{role}store-container={bucket}", f"--{role}store-prefix=etcd"]


def restore(src: Source, data_dir: Path, *extra: str, command: str = "restore"):
    return run([command, f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={data_dir.parent / 'tmp'}",
                f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={NAME}",
                f"--initial-cluster={NAME}=http://localhost:2380", *extra])


def restored(data_dir: Path) -> sf.Dump:
    server = sf.serve(data_dir, sf.etcd_bin_dir())
    try:
        return sf.dump(server.client_url)
    finally:
        server.cleanup()


def assert_restored_to(src: Source, data_dir: Path, revision: int) -> None:
    got, want = restored(data_dir), src.at[revision]
    assert got.revision == revision
    assert got.kvs == want.kvs


def fresh(tmp_path: Path, label: str) -> Path:
    d = tmp_path / label
    d.mkdir()
    return d / f"{NAME}.etcd"


# -- the workload is what the tests assume --------------------------------------------------------
def test_the_chain_has_two_fulls_and_deltas_on_both_sides(source):
    snaps = source.store().list()
    fulls = [s.last_revision for s in snaps if s.is_full]
    deltas = sorted((s for s in snaps if s.is_delta), key=sort_key)
    assert fulls == [source.full1, source.full2]
    assert [d.last_revision for d in deltas][:3] == source.cuts and deltas[-1].last_revision == source.end
    assert source.full1 < source.marks["inside-delta-1"] < source.cuts[0] < source.marks["between-fulls"] \
        < source.full2 < source.marks["inside-delta-3"] < source.cuts[2] < source.end


# -- restore --to-revision -----------------------------------------------------------------------
@pytest.mark.parametrize("which", ["inside-delta-1", "delta-boundary", "full-1", "between-fulls", "full-2",
                                   "inside-delta-3", "end"])
def test_restore_to_revision_gives_etcds_own_keyspace_at_it(source, tmp_path, which):
    revision = {"delta-boundary": source.cuts[0], "full-1": source.full1, "full-2": source.full2,
                "end": source.end}.get(which) or source.marks[which]
    data_dir = fresh(tmp_path, which)
    result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={revision}")
    assert result.exit_code == 0, result.output
    assert f"restore done at revision {revision}" in result.stderr
    assert_restored_to(source, data_dir, revision)


@pytest.mark.parametrize("which", ["inside-delta-1", "between-fulls", "inside-delta-3"])
def test_both_delta_replays_stop_at_the_same_revision_with_the_same_keyspace(source, tmp_path, which):
    """--delta-replay=direct (written into the db) and etcd (through a temporary etcd) take the
    same bound: the same revision and keyspace, both etcd's own at that revision."""
    revision = source.marks[which]
    got = {}
    for mode in ("direct", "etcd"):
        data_dir = fresh(tmp_path, mode)
        result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={revision}",
                         f"--delta-replay={mode}")
        assert result.exit_code == 0, result.output
        assert ("replaying deltas through a temporary etcd" in result.stderr) == (mode == "etcd")
        got[mode] = restored(data_dir)
    assert got["direct"].revision == got["etcd"].revision == revision
    assert got["direct"].kvs == got["etcd"].kvs == source.at[revision].kvs


def test_the_base_is_the_newest_full_at_or_below_the_target(source, tmp_path):
    data_dir = fresh(tmp_path, "plan")
    for revision, full in ((source.marks["between-fulls"], source.full1),
                           (source.marks["inside-delta-3"], source.full2)):
        result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={revision}", "--dry-run")
        assert result.exit_code == 0, result.output
        first = result.stdout.splitlines()[0]
        assert f"-{full:08d}-" in first.split(" and ")[0] and f"reaching revision {revision}" in first
    assert not data_dir.exists()


def test_dry_run_prints_the_plan_with_the_events_to_replay(source, tmp_path):
    target = source.marks["inside-delta-1"]
    result = restore(source, fresh(tmp_path, "dry"), *store_flags(source.bucket), f"--to-revision={target}",
                     "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("  full   Full-") and f"revision {source.full1}" in lines[1]
    delta_lines = [ln for ln in lines if ln.startswith("  delta  ")]
    assert len(delta_lines) == 1
    # revisions full1+1 .. target hold one event each (the two-key transaction comes later)
    wanted = target - source.full1
    assert f": {wanted} of its " in delta_lines[0]
    assert lines[-1] == f"  events to replay: {wanted}"


def test_to_time_restores_the_last_revision_recorded_before_it(source, tmp_path):
    before, after = source.marks["before-gap"], source.marks["after-gap"]
    when = source.times[before] + (source.times[after] - source.times[before]) / 2
    assert source.times[after] - when > timedelta(seconds=0.8)
    data_dir = fresh(tmp_path, "time")
    stamp = when.isoformat().replace("+00:00", "Z")
    result = restore(source, data_dir, *store_flags(source.bucket), f"--to-time={stamp}")
    assert result.exit_code == 0, result.output
    assert_restored_to(source, data_dir, before)


@pytest.mark.parametrize("flag", ["--to-revision=1", "--to-revision={end_plus}", "--to-time=2001-01-01T00:00:00Z",
                                  "--to-time=2999-01-01T00:00:00Z"])
def test_a_target_outside_the_chain_is_one_error_naming_the_ranges(source, tmp_path, flag):
    flag = flag.format(end_plus=source.end + 5)
    data_dir = fresh(tmp_path, "outside")
    result = restore(source, data_dir, *store_flags(source.bucket), flag)
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    err = errors[0]
    if "2999" in flag:
        assert f"after the last event the backups hold (revision {source.end}" in err
    else:
        assert f"can restore to are {source.full1}-{source.end}" in err
    assert not data_dir.exists() and not data_dir.with_name(data_dir.name + ".part").exists()


def test_a_target_in_a_gap_is_refused_with_the_ranges_left(source, tmp_path):
    bucket = tmp_path / "gappy"
    shutil.copytree(source.bucket, bucket)
    store = open_store(StoreConfig(provider="Local", container=str(bucket), prefix="etcd"))
    first = next(s for s in sorted(store.list(), key=sort_key) if s.is_delta)
    store.delete(first)
    result = restore(source, fresh(tmp_path, "gap"), *store_flags(bucket),
                     f"--to-revision={source.marks['inside-delta-1']}")
    assert result.exit_code == 1
    assert (f"revision {source.marks['inside-delta-1']} is not in the backups; the revisions this store can restore "
            f"to are {source.full1}, {source.full2}-{source.end}") in result.stderr


def test_both_target_flags_together_are_a_flag_error(source, tmp_path):
    result = restore(source, fresh(tmp_path, "both"), *store_flags(source.bucket), "--to-revision=5",
                     "--to-time=2026-01-01T00:00:00Z")
    assert result.exit_code == 2 and "exclusive" in result.stderr
    result = restore(source, fresh(tmp_path, "bad"), *store_flags(source.bucket), "--to-time=yesterday")
    assert result.exit_code == 2 and "RFC 3339" in result.stderr


def test_a_healthy_data_dir_newer_than_the_target_is_never_replaced(source, tmp_path):
    data_dir = fresh(tmp_path, "healthy")
    assert restore(source, data_dir, *store_flags(source.bucket)).exit_code == 0
    assert not (data_dir / MARKER).exists()  # a plain restore is no rollback
    before = sorted(p.name for p in data_dir.parent.iterdir())
    result = restore(source, data_dir, *store_flags(source.bucket), "--replace-data-dir=true",
                     f"--to-revision={source.marks['between-fulls'] - 1}")
    assert result.exit_code == 1 and "refusing to replace" in result.stderr
    assert sorted(p.name for p in data_dir.parent.iterdir()) == before
    assert_restored_to(source, data_dir, source.end)


# -- both endpoints -----------------------------------------------------------------------------------
def test_restore_to_revision_from_a_secondary_made_with_copy_and_auto(source, tmp_path):
    secondary = tmp_path / "secondary-bucket"
    copied = run(["copy", *store_flags(source.bucket, "source-"), *store_flags(secondary)])
    assert copied.exit_code == 0, copied.output
    target = source.marks["before-bad-write"]
    data_dir = fresh(tmp_path, "secondary")
    result = restore(source, data_dir, *store_flags(source.bucket), *store_flags(secondary, "secondary-"),
                     "--restore-from=secondary", f"--to-revision={target}")
    assert result.exit_code == 0, result.output
    assert "back the restored cluster up under a new --store-prefix" in result.stderr
    assert_restored_to(source, data_dir, target)
    # the secondary's history is the primary's
    on_secondary = history(source, KEY.decode(), "-o", "json", bucket=secondary)
    assert on_secondary.exit_code == 0, on_secondary.output
    rows = [(r["revision"], r["operation"], r["value_size"]) for r in json.loads(on_secondary.stdout)["events"]]
    assert rows == source.key_history

    # auto: the primary lost the delta the target needs; the secondary still reaches it
    primary = tmp_path / "primary-bucket"
    shutil.copytree(source.bucket, primary)
    store = open_store(StoreConfig(provider="Local", container=str(primary), prefix="etcd"))
    store.delete(next(s for s in sorted(store.list(), key=sort_key) if s.is_delta and s.last_revision >= target))
    data_dir = fresh(tmp_path, "auto")
    result = restore(source, data_dir, *store_flags(primary), *store_flags(secondary, "secondary-"),
                     "--restore-from=auto", f"--to-revision={target}")
    assert result.exit_code == 0, result.output
    assert "restore source: secondary" in result.stderr
    assert_restored_to(source, data_dir, target)


# -- initialize ---------------------------------------------------------------------------------------
def test_initialize_restores_a_missing_data_dir_to_the_target_and_keeps_a_healthy_one(source, tmp_path):
    target = source.marks["inside-delta-3"]
    data_dir = fresh(tmp_path, "init")
    result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={target}", command="initialize")
    assert result.exit_code == 0, result.output
    assert_restored_to(source, data_dir, target)
    marker = json.loads((data_dir / MARKER).read_text())
    assert marker["revision"] == target
    assert marker["store"] == {"provider": "Local", "container": str(source.bucket), "prefix": "etcd"}
    # now healthy at the target: an earlier target is not applied over it (a target given: no refusal)
    result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={source.full1}",
                     command="initialize")
    assert result.exit_code == 0, result.output
    assert "was not applied" in result.stderr
    assert_restored_to(source, data_dir, target)


# -- the rollback marker -------------------------------------------------------------------------------
def test_a_rolled_back_data_dir_is_refused_on_the_old_prefix_and_used_on_a_new_one(source, tmp_path):
    target = source.marks["before-bad-write"]
    data_dir = fresh(tmp_path, "rollback")
    result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={target}")
    assert result.exit_code == 0, result.output
    marker = json.loads((data_dir / MARKER).read_text())
    assert marker["revision"] == target and marker["full_snapshot"]
    assert marker["store"] == {"provider": "Local", "container": str(source.bucket), "prefix": "etcd"}
    assert not (data_dir / "member" / MARKER).exists()
    keys = restored(data_dir)  # a real etcd starts on the data dir with the marker in it
    assert keys.revision == target and keys.kvs == source.at[target].kvs
    listing = sorted(p.name for p in data_dir.parent.iterdir())
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))

    # the old timeline's prefix: the initializer and the server refuse, nothing is touched
    for command in ("initialize", "server"):
        result = restore(source, data_dir, *store_flags(source.bucket), command=command)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1 and f"restored to revision {target}" in lines[0], result.stderr
        assert "new --store-prefix" in lines[0] and MARKER in lines[0] and f"up to revision {source.end}" in lines[0]
        assert "Traceback" not in result.output
        assert sorted(p.name for p in data_dir.parent.iterdir()) == listing  # no aside, no .part
        assert sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*")) == files
    after = restored(data_dir)
    assert after.revision == target and after.kvs == keys.kvs

    # a new prefix (here: still empty) for the rolled-back cluster: the data dir is used as it is
    new_prefix = ["--storage-provider=Local", f"--store-container={source.bucket}", "--store-prefix=etcd-rolled-back"]
    result = restore(source, data_dir, *new_prefix, command="initialize")
    assert result.exit_code == 0, result.output
    assert "data dir is valid" in result.stderr
    assert sorted(p.name for p in data_dir.parent.iterdir()) == listing
    assert (data_dir / MARKER).exists()  # left: it still guards should the old prefix come back
    served = restored(data_dir)
    assert served.revision == target and served.kvs == source.at[target].kvs


def test_a_rollback_to_the_stores_newest_revision_is_not_refused(source, tmp_path):
    data_dir = fresh(tmp_path, "rollback-to-end")
    result = restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={source.end}")
    assert result.exit_code == 0, result.output
    assert json.loads((data_dir / MARKER).read_text())["revision"] == source.end
    result = restore(source, data_dir, *store_flags(source.bucket), command="initialize")
    assert result.exit_code == 0, result.output
    assert_restored_to(source, data_dir, source.end)


def test_a_rollback_whose_store_cannot_be_read_is_refused(source, tmp_path):
    bucket = tmp_path / "bucket"
    shutil.copytree(source.bucket, bucket)
    data_dir = fresh(tmp_path, "store-gone")
    assert restore(source, data_dir, *store_flags(bucket), f"--to-revision={source.full2}").exit_code == 0
    shutil.rmtree(bucket)
    bucket.write_text("not a directory")  # the store's container cannot be listed
    result = restore(source, data_dir, *store_flags(bucket), command="initialize")
    assert result.exit_code == 1, result.output
    assert "cannot be read to tell whether it holds the old timeline" in result.stderr, result.stderr
    assert_restored_to(source, data_dir, source.full2)


def test_an_unreadable_marker_is_refused(source, tmp_path):
    data_dir = fresh(tmp_path, "bad-marker")
    assert restore(source, data_dir, *store_flags(source.bucket), f"--to-revision={source.full2}").exit_code == 0
    (data_dir / MARKER).write_text("{not json")
    result = restore(source, data_dir, *store_flags(source.bucket), command="initialize")
    assert result.exit_code == 1 and "is not valid JSON" in result.stderr
    assert_restored_to(source, data_dir, source.full2)


# -- snapshot history --------------------------------------------------------------------------------
def history(source: Source, *args: str, bucket: Path | None = None):
    return run(["snapshot", "history", *store_flags(bucket or source.bucket), *args])


def test_history_of_a_key_put_deleted_and_put_again_matches_etcds(source):
    result = history(source, KEY.decode(), "--output=json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["events"]
    got = [(r["revision"], r["operation"], r["value_size"]) for r in rows]
    assert got == source.key_history
    assert [op for _, op, _ in got] == ["put", "delete", "put", "put"]
    assert all(r["key"] == KEY.decode() and "value" not in r for r in rows)


def test_history_answers_which_revision_deleted_a_key(source):
    result = history(source, KEY.decode())
    assert result.exit_code == 0, result.output
    deletes = [ln.split() for ln in result.stdout.splitlines() if " delete " in f" {ln} "]
    assert len(deletes) == 1 and int(deletes[0][0]) == source.marks["between-fulls"]


def test_history_of_a_prefix_in_a_revision_window_with_values(source):
    low, high = source.full1 + 1, source.cuts[0]
    result = history(source, "p/", "--prefix", f"--from-revision={low}", f"--to-revision={high}", "--show-values",
                     "-o", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["events"]
    assert [(r["revision"], r["key"], r["operation"], r.get("value")) for r in rows] == [
        (source.marks["inside-delta-1"], "p/3", "put", "overwritten"),
        (source.marks["inside-delta-1"] + 1, "p/4", "delete", ""),
        (high, "p/5", "put", "overwritten")]


def test_history_time_window_and_a_corrupt_delta(source, tmp_path):
    before = source.marks["before-gap"]
    since = (source.times[before] + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    result = history(source, "p/", "--prefix", f"--from-time={since}", "-o", "json")
    assert result.exit_code == 0, result.output
    assert [r["key"] for r in json.loads(result.stdout)["events"]] == ["p/9", "p/10"]

    bucket = tmp_path / "corrupt"
    shutil.copytree(source.bucket, bucket)
    store = open_store(StoreConfig(provider="Local", container=str(bucket), prefix="etcd"))
    delta = next(s for s in sorted(store.list(), key=sort_key) if s.is_delta)
    assert delta.compression_suffix == ".gz"  # the snapshotter's default
    path = bucket / delta.key
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[20] ^= 1  # inside the JSON: still parses or not, the trailer no longer matches
    path.write_bytes(gzip.compress(bytes(raw)))
    result = history(source, KEY.decode(), bucket=bucket)
    assert result.exit_code == 1
    assert "failed verification" in result.stderr and "checksum mismatch" in result.stderr
