"""The first rule, against real etcd data dirs: a data dir etcd can open that is at least as new as
the newest backup is never deleted or overwritten, whatever the flags say; what is moved out of
the way is kept and logged. Every data dir here was written by a real etcd started by the test
harness (member ``etcd-main-0``); each test checks the keys and what became of the data dir, not
only the exit code.

The templates (built once): the member after 25 keys (revision 26) and after 30 keys (revision
31); an "older" store with a full snapshot at 24 keys (revision 25); a "newer" store with a full
snapshot at 27 keys and deltas up to 30 keys (revision 31).
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.config import StoreConfig
from etcdbr.restore.bbolt import read_etcd_db
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration

NAME = "etcd-main-0"


@dataclass
class Templates:
    root: Path
    bin_dir: Path
    dir25: Path          # data dir after 25 keys
    dir30: Path          # data dir after 30 keys
    older: Path          # Local store: full snapshot at 24 keys
    newer: Path          # Local store: full at 27 keys + deltas to 30 keys
    empty: Path          # Local store container with nothing in it
    keys25: sf.Dump
    keys30: sf.Dump


def _put(url: str, first: int, last: int) -> None:
    client = sf.Client(url)
    try:
        for i in range(first, last + 1):
            client.kv.Put(sf.pb.PutRequest(key=b"key/%02d" % i, value=b"value-%d" % i), timeout=30)
    finally:
        client.close()


def _store(path: Path):
    return open_store(StoreConfig(provider="Local", container=str(path), prefix="etcd"))


@pytest.fixture(scope="module")
def tpl(tmp_path_factory) -> Templates:
    from services import EtcdServer

    root = tmp_path_factory.mktemp("safety-templates")
    bin_dir = sf.etcd_bin_dir()
    etcd = EtcdServer(root / "member", name=NAME, bin_dir=bin_dir)
    etcd.start()
    try:
        factory = sf.SnapshotFactory(etcd.client_url)
        _put(etcd.client_url, 1, 24)
        factory.full(_store(root / "older"))
        _put(etcd.client_url, 25, 25)
        keys25 = sf.dump(etcd.client_url)
        etcd.stop()
        shutil.copytree(etcd.data_dir, root / "dir25" / f"{NAME}.etcd", symlinks=True)
        etcd.start()
        _put(etcd.client_url, 26, 27)
        full = factory.full(_store(root / "newer"))
        _put(etcd.client_url, 28, 30)
        factory.deltas(_store(root / "newer"), full, parts=2)
        keys30 = sf.dump(etcd.client_url)
        etcd.stop()
        shutil.copytree(etcd.data_dir, root / "dir30" / f"{NAME}.etcd", symlinks=True)
    finally:
        etcd.cleanup()
    (root / "empty").mkdir()
    assert (keys25.revision, len(keys25.kvs), keys30.revision, len(keys30.kvs)) == (26, 25, 31, 30)
    return Templates(root, bin_dir, root / "dir25" / f"{NAME}.etcd", root / "dir30" / f"{NAME}.etcd",
                     root / "older", root / "newer", root / "empty", keys25, keys30)


@pytest.fixture(autouse=True)
def no_member_env(monkeypatch):
    for var in ("ETCD_CONF", "POD_NAME", "POD_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)


def member_dir(template: Path, tmp_path: Path) -> Path:
    """A copy of a template data dir at ``tmp_path/vol/etcd-main-0.etcd`` (a volume of its own)."""
    target = tmp_path / "vol" / f"{NAME}.etcd"
    shutil.copytree(template, target, symlinks=True)
    return target


def store_flags(store: Path | None) -> list[str]:
    return [] if store is None else ["--storage-provider=Local", f"--store-container={store}", "--store-prefix=etcd"]


def common(tpl: Templates, data_dir: Path) -> list[str]:
    return [f"--data-dir={data_dir}", f"--etcd-bin-dir={tpl.bin_dir}",
            f"--restoration-temp-snapshots-dir={data_dir.parent.parent / 'restore-tmp'}"]


def as_member(*extra: str) -> list[str]:
    return [f"--name={NAME}", f"--initial-cluster={NAME}=http://localhost:2380", *extra]


def run(argv: list[str], env: dict | None = None):
    return CliRunner().invoke(cli, argv, catch_exceptions=False, env=env)


def fingerprint(data_dir: Path) -> dict:
    out = {}
    for path in sorted([data_dir, *data_dir.rglob("*")]):
        st = path.lstat()
        out[str(path.relative_to(data_dir))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def keys_of(data_dir: Path, bin_dir: Path) -> sf.Dump:
    """Start a real etcd on ``data_dir`` (named ``<member>.etcd``) and read everything."""
    server = sf.serve(data_dir, bin_dir)
    try:
        return sf.dump(server.client_url)
    finally:
        server.cleanup()


def keys_of_aside(aside: Path, tmp_path: Path, bin_dir: Path) -> sf.Dump:
    """An aside is a whole data dir: moved to a name etcd's harness serves, it starts as it was."""
    check = tmp_path / "aside-check" / f"{NAME}.etcd"
    check.parent.mkdir()
    os.rename(aside, check)
    return keys_of(check, bin_dir)


def error_line(result) -> str:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def asides(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.parent.iterdir() if p.name.startswith(f"{data_dir.name}.aside-"))


def volume(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.parent.iterdir())


# -- initialize: the member's name -------------------------------------------------------------
@pytest.mark.parametrize("store", ["none", "empty", "older"])
def test_default_name_never_touches_a_healthy_member(tpl, tmp_path, store):
    data_dir = member_dir(tpl.dir25, tmp_path)
    before = fingerprint(data_dir)
    container = {"none": None, "empty": tpl.empty, "older": tpl.older}[store]
    result = run(["initialize", *common(tpl, data_dir), *store_flags(container)])
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert f"belongs to member '{NAME}'" in line and "this member's name is 'default'" in line, line
    assert "the default of --name" in line and "set --name" in line and "ETCD_CONF" in line, line
    assert fingerprint(data_dir) == before
    assert volume(data_dir) == [f"{NAME}.etcd"]
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys25


@pytest.mark.parametrize("store", ["older", "none", "empty"])
def test_right_name_keeps_the_member(tpl, tmp_path, store):
    data_dir = member_dir(tpl.dir25, tmp_path)
    before = fingerprint(data_dir)
    container = {"none": None, "empty": tpl.empty, "older": tpl.older}[store]
    result = run(["initialize", *common(tpl, data_dir), *store_flags(container), *as_member()])
    assert result.exit_code == 0, result.output
    assert "data dir is valid; leaving it untouched" in result.stderr and "revision=26" in result.stderr
    assert fingerprint(data_dir) == before and volume(data_dir) == [f"{NAME}.etcd"]
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys25


# -- initialize: unusable data dirs are replaced only by a checked restore, and kept ------------
def test_data_dir_behind_the_newest_backup_is_restored_and_kept_aside(tpl, tmp_path):
    data_dir = member_dir(tpl.dir25, tmp_path)
    result = run(["initialize", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member()])
    assert result.exit_code == 0, result.output
    assert "letting etcd replay its WAL" in result.stderr and "status=RevisionBehind" in result.stderr
    kept = asides(data_dir)
    assert len(kept) == 1 and kept[0].name.endswith("-behind"), volume(data_dir)
    assert f"aside={kept[0]}" in result.stderr and f"old_data_dir_kept_at={kept[0]}" in result.stderr
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys30
    assert keys_of_aside(kept[0], tmp_path, tpl.bin_dir) == tpl.keys25


def _corrupt(data_dir: Path) -> bytes:
    db = data_dir / "member" / "snap" / "db"
    with open(db, "r+b") as fh:  # both meta pages gone: neither bbolt nor etcd can open it
        fh.write(b"\0" * 8192)
    return db.read_bytes()


def test_corrupt_data_dir_is_restored_and_kept_aside(tpl, tmp_path):
    data_dir = member_dir(tpl.dir30, tmp_path)
    damaged = _corrupt(data_dir)
    result = run(["initialize", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member(),
                  "--validation-mode=sanity"])
    assert result.exit_code == 0, result.output
    assert "status=Corrupt" in result.stderr
    kept = asides(data_dir)
    assert len(kept) == 1 and kept[0].name.endswith("-corrupt")
    assert (kept[0] / "member" / "snap" / "db").read_bytes() == damaged
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys30


@pytest.mark.parametrize("store", ["none", "empty"])
def test_corrupt_data_dir_without_a_backup_is_moved_aside_not_deleted(tpl, tmp_path, store):
    data_dir = member_dir(tpl.dir30, tmp_path)
    damaged = _corrupt(data_dir)
    wal = sorted((data_dir / "member" / "wal").iterdir())
    container = tpl.empty if store == "empty" else None
    result = run(["initialize", *common(tpl, data_dir), *store_flags(container), *as_member()])
    assert result.exit_code == 0, result.output
    assert "moved aside so that etcd starts a new member" in result.stderr
    assert not data_dir.exists()
    kept = asides(data_dir)
    assert len(kept) == 1 and f"aside={kept[0]}" in result.stderr
    assert (kept[0] / "member" / "snap" / "db").read_bytes() == damaged
    assert sorted(p.name for p in (kept[0] / "member" / "wal").iterdir()) == [p.name for p in wal]


def test_restores_keep_only_the_newest_two_asides(tpl, tmp_path):
    data_dir = member_dir(tpl.dir25, tmp_path)
    names = []
    for _ in range(3):
        _corrupt(data_dir)
        result = run(["initialize", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member(),
                      "--validation-mode=sanity"])
        assert result.exit_code == 0, result.output
        names.append([p.name for p in asides(data_dir)])
    assert [len(n) for n in names] == [1, 2, 2]
    assert names[2][0] == names[1][1] and names[1][0] not in names[2]
    assert "removing an old aside of the data dir (the newest 2 are kept)" in result.stderr
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys30


# -- the wrong-volume guard -----------------------------------------------------------------------
def test_volume_of_another_namespace_is_refused_before_anything(tpl, tmp_path):
    data_dir = member_dir(tpl.dir25, tmp_path)  # behind the newer store: would be restored
    guard = data_dir.parent / "safe_guard"
    guard.write_text("shoot--other")
    before = fingerprint(data_dir)
    result = run(["initialize", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member()],
                 env={"POD_NAMESPACE": "shoot--mine"})
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert "wrong volume mounted" in line and "shoot--other" in line and "shoot--mine" in line, line
    assert fingerprint(data_dir) == before and volume(data_dir) == ["etcd-main-0.etcd", "safe_guard"]
    assert guard.read_text() == "shoot--other"
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys25


def test_the_guard_file_is_written_on_first_use_and_then_holds(tpl, tmp_path):
    data_dir = member_dir(tpl.dir30, tmp_path)
    argv = ["initialize", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member()]
    result = run(argv, env={"POD_NAMESPACE": "shoot--mine"})
    assert result.exit_code == 0, result.output
    guard = data_dir.parent / "safe_guard"
    assert guard.read_text() == "shoot--mine" and stat.S_IMODE(guard.stat().st_mode) == 0o600
    assert run(argv, env={"POD_NAMESPACE": "shoot--mine"}).exit_code == 0
    before = fingerprint(data_dir)
    assert run(argv, env={"POD_NAMESPACE": "shoot--else"}).exit_code == 1
    # restore checks an existing guard file too
    refused = run(["restore", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member(), "--replace-data-dir"],
                  env={"POD_NAMESPACE": "shoot--else"})
    assert refused.exit_code == 1 and "wrong volume mounted" in error_line(refused)
    assert fingerprint(data_dir) == before


# -- restore into an existing data dir -------------------------------------------------------------
def test_restore_refuses_a_non_empty_data_dir_without_the_flag(tpl, tmp_path):
    data_dir = member_dir(tpl.dir25, tmp_path)
    before = fingerprint(data_dir)
    # the store flags name a store that does not exist: the refusal comes before any store is read
    result = run(["restore", *common(tpl, data_dir), *store_flags(tmp_path / "no-such-store"), *as_member()])
    assert result.exit_code == 2, result.output
    assert error_line(result) == (f"error: --data-dir {data_dir} is not empty: restore never overwrites a data dir "
                                  "unless --replace-data-dir=true is given (the old one is then moved aside and "
                                  "kept); nothing was changed")
    assert not (tmp_path / "no-such-store").exists()
    assert fingerprint(data_dir) == before and volume(data_dir) == [f"{NAME}.etcd"]


def test_restore_with_the_flag_replaces_a_dir_behind_the_backup_and_keeps_it(tpl, tmp_path):
    data_dir = member_dir(tpl.dir25, tmp_path)
    result = run(["restore", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member(), "--replace-data-dir"])
    assert result.exit_code == 0, result.output
    kept = asides(data_dir)
    assert len(kept) == 1 and kept[0].name.endswith("-behind") and f"aside={kept[0]}" in result.stderr
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys30
    assert keys_of_aside(kept[0], tmp_path, tpl.bin_dir) == tpl.keys25


@pytest.mark.parametrize("case", ["as-new", "newer"])
def test_restore_with_the_flag_never_replaces_a_healthy_dir_at_least_as_new(tpl, tmp_path, case):
    template, store, revision, backup = {"as-new": (tpl.dir30, tpl.newer, 31, 31),
                                         "newer": (tpl.dir25, tpl.older, 26, 25)}[case]
    data_dir = member_dir(template, tmp_path)
    before = fingerprint(data_dir)
    result = run(["restore", *common(tpl, data_dir), *store_flags(store), *as_member(), "--replace-data-dir=true"])
    assert result.exit_code == 1, result.output
    assert error_line(result) == (
        f"error: refusing to replace {data_dir}: etcd can open it and its revision {revision} is at least the "
        f"backup's {backup}; a healthy data dir at least as new as the newest backup is never overwritten, whatever "
        "the flags say; nothing was changed")
    assert fingerprint(data_dir) == before and volume(data_dir) == [f"{NAME}.etcd"]
    assert keys_of(data_dir, tpl.bin_dir) == (tpl.keys30 if case == "as-new" else tpl.keys25)


def test_restore_into_an_empty_dir_needs_no_flag(tpl, tmp_path):
    data_dir = tmp_path / "vol" / f"{NAME}.etcd"
    data_dir.mkdir(parents=True)
    result = run(["restore", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member()])
    assert result.exit_code == 0, result.output
    assert volume(data_dir) == [f"{NAME}.etcd"]
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys30


def test_restore_dry_run_says_what_would_become_of_the_data_dir(tpl, tmp_path):
    data_dir = member_dir(tpl.dir30, tmp_path)
    before = fingerprint(data_dir)
    result = run(["restore", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member(), "--replace-data-dir",
                  "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "refused: the data dir there is healthy and at least as new" in result.stdout
    assert fingerprint(data_dir) == before


# -- member identity from etcd's config file --------------------------------------------------------
def _etcd_config(tmp_path: Path, data_dir: Path) -> Path:
    from services import free_ports

    client, peer = free_ports(2)
    conf = tmp_path / "etcd.conf.yaml"
    conf.write_text(f"""\
# a config file a real etcd starts with (etcd --config-file)
name: {NAME}
data-dir: {data_dir}
listen-client-urls: http://127.0.0.1:{client}
advertise-client-urls: http://127.0.0.1:{client}
listen-peer-urls: http://127.0.0.1:{peer}
initial-advertise-peer-urls: http://127.0.0.1:{peer}
initial-cluster: {NAME}=http://127.0.0.1:{peer}
initial-cluster-token: etcd-cluster
initial-cluster-state: new
unsafe-no-fsync: true
""")
    return conf


def _run_etcd_with_config(bin_dir: Path, conf: Path, keys: int, log: Path) -> str:
    """Start a real etcd from ``conf`` alone, write ``keys`` keys, stop it; its client URL."""
    import subprocess
    import time
    import urllib.request

    import yaml

    url = yaml.safe_load(conf.read_text())["advertise-client-urls"]
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(bin_dir / "etcd"), "--config-file", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if b"true" in resp.read():
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        _put(url, 1, keys)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return url


def test_member_identity_comes_from_etcds_config_file_and_flags_win(tpl, tmp_path):
    data_dir = tmp_path / "vol" / f"{NAME}.etcd"
    conf = _etcd_config(tmp_path, data_dir)
    _run_etcd_with_config(tpl.bin_dir, conf, 25, tmp_path / "etcd.log")
    assert [m["name"] for m in read_etcd_db(data_dir / "member" / "snap" / "db").members] == [NAME]
    before = fingerprint(data_dir)
    base = [f"--etcd-bin-dir={tpl.bin_dir}", f"--restoration-temp-snapshots-dir={tmp_path / 'restore-tmp'}",
            *store_flags(tpl.older)]
    env = {"ETCD_CONF": str(conf)}
    # no --name, --data-dir or --initial-cluster: all from the file, as etcd-druid runs the sidecar
    result = run(["initialize", *base], env=env)
    assert result.exit_code == 0, result.output
    assert "member settings from etcd's config file" in result.stderr and f"member={NAME}" in result.stderr
    assert "data dir is valid; leaving it untouched" in result.stderr
    assert fingerprint(data_dir) == before

    result = run(["initialize", *base, "--name=etcd-main-1", "--initial-cluster=etcd-main-1=http://localhost:2380",
                  "--initial-advertise-peer-urls=http://localhost:2380"], env=env)
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert f"belongs to member '{NAME}' (peer URLs " in line, line
    assert "but this member's name is 'etcd-main-1' (from --name) and its peer URLs are http://localhost:2380" in line

    result = run(["restore", *base], env=env)  # the data dir from the file: not empty, no flag
    assert result.exit_code == 2 and f"--data-dir {data_dir} is not empty" in error_line(result)
    assert fingerprint(data_dir) == before
    assert keys_of(data_dir, tpl.bin_dir).kvs == tpl.keys25.kvs


def test_a_missing_etcd_config_file_named_by_etcd_conf_is_a_config_error(tpl, tmp_path):
    result = run(["initialize", f"--data-dir={tmp_path / 'd.etcd'}"], env={"ETCD_CONF": str(tmp_path / "nope.yaml")})
    assert result.exit_code == 2
    assert error_line(result) == f"error: ETCD_CONF: cannot read etcd config file '{tmp_path / 'nope.yaml'}' " \
                                 "(No such file or directory)"
    assert not (tmp_path / "d.etcd").exists()


# -- the server's initializer (/initialization/start) obeys the same rules ---------------------------
def _initialize_over_http(server) -> str:
    assert server.get("/initialization/start?mode=full")[0] == 200
    seen: list[str] = []

    def terminal() -> bool:
        seen.append(server.get("/initialization/status")[2].decode())
        return seen[-1] in ("Successful", "Failed")

    server.wait_for(terminal, 120, "initialization to finish")
    return seen[-1]


def test_server_initialization_obeys_the_same_rules(tpl, tmp_path):
    from server_helpers import ServerProcess

    from services import free_port

    data_dir = member_dir(tpl.dir25, tmp_path)  # behind the newer store
    before = fingerprint(data_dir)
    base = ["--endpoints", f"http://127.0.0.1:{free_port()}",  # etcd is down: initialization runs first
            *common(tpl, data_dir), *store_flags(tpl.newer), "--reelection-period=2s"]
    env = {k: v for k, v in os.environ.items() if k not in ("ETCD_CONF", "POD_NAME", "POD_NAMESPACE")}
    server = ServerProcess(tmp_path, base, env, name="default-name").start()
    try:
        server.wait_for(lambda: server.get("/initialization/status")[0] == 200, 60, "the HTTP API")
        assert _initialize_over_http(server) == "Failed", server.tail()
        assert server.get("/initialization/status")[2] == b"New"
        assert f"belongs to member '{NAME}' (peer URLs " in server.log_text()
        assert "but this member's name is 'default' (from the default of --name" in server.log_text()
        assert fingerprint(data_dir) == before and volume(data_dir) == [f"{NAME}.etcd"]
        assert server.terminate() == 0
    finally:
        server.stop()

    # the member's name from etcd's config file, as etcd-druid starts the sidecar: restored, kept aside
    conf = tmp_path / "etcd.conf.yaml"
    conf.write_text(f"name: {NAME}\ndata-dir: {data_dir}\ninitial-cluster: {NAME}=http://127.0.0.1:2380\n"
                    "initial-advertise-peer-urls: http://127.0.0.1:2380\ninitial-cluster-state: new\n")
    base = [a for a in base if not a.startswith("--data-dir")]
    server = ServerProcess(tmp_path, base, {**env, "ETCD_CONF": str(conf)}, name="from-conf").start()
    try:
        server.wait_for(lambda: server.get("/initialization/status")[0] == 200, 60, "the HTTP API")
        assert _initialize_over_http(server) == "Successful", server.tail()
        assert server.terminate() == 0
    finally:
        server.stop()
    kept = asides(data_dir)
    assert len(kept) == 1 and kept[0].name.endswith("-behind") and f"aside={kept[0]}" in server.log_text()
    assert keys_of(data_dir, tpl.bin_dir) == tpl.keys30
    assert keys_of_aside(kept[0], tmp_path, tpl.bin_dir) == tpl.keys25


# -- no room on the volume for the old and the restored data dir ---------------------------------------
@pytest.mark.parametrize("when", ["before", "during"])
def test_no_room_for_both_fails_and_deletes_nothing(tpl, tmp_path, monkeypatch, when):
    import errno

    import etcdbr.restore.restorer as restorer

    data_dir = member_dir(tpl.dir30, tmp_path)
    damaged = _corrupt(data_dir)
    earlier = data_dir.parent / f"{NAME}.etcd.aside-20240101T000000Z-corrupt"
    shutil.copytree(tpl.dir25, earlier, symlinks=True)
    before, volume_before = fingerprint(data_dir), volume(data_dir)
    if when == "before":
        real = shutil.disk_usage
        monkeypatch.setattr(restorer.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    else:
        def full_disk(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        monkeypatch.setattr(restorer, "fsync_tree", full_disk)
    result = run(["restore", *common(tpl, data_dir), *store_flags(tpl.newer), *as_member(), "--replace-data-dir"])
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert line.startswith(
        f"error: no room on the volume of {data_dir} for the restored data dir beside the old one"), line
    assert line.endswith(f"the old data dir is untouched and nothing was deleted to make room; the asides {earlier} "
                         "could be removed to free space"), line
    assert ("1000 bytes free" if when == "before" else "No space left on device") in line
    assert fingerprint(data_dir) == before and volume(data_dir) == volume_before
    assert (data_dir / "member" / "snap" / "db").read_bytes() == damaged


def test_a_member_is_recognised_by_its_peer_urls_when_the_db_holds_an_older_name(tpl, tmp_path):
    """etcd keeps in its db the name a data dir was created or restored with, even after the member
    runs under another (a restore by the Go tool, which etcd-druid runs without --name, records
    'default'): the member's peer URLs recognise it then, and its data dir is kept."""
    data_dir = member_dir(tpl.dir25, tmp_path)
    [recorded] = read_etcd_db(data_dir / "member" / "snap" / "db").members
    peer = recorded["peerURLs"][0]
    before = fingerprint(data_dir)
    result = run(["initialize", *common(tpl, data_dir), *store_flags(tpl.older), "--name=renamed-0",
                  f"--initial-cluster=renamed-0={peer}", f"--initial-advertise-peer-urls={peer}"])
    assert result.exit_code == 0, result.output
    assert "data dir is valid; leaving it untouched" in result.stderr
    assert fingerprint(data_dir) == before
    # etcd's default peer URL identifies no one: with it, the name decides
    result = run(["initialize", *common(tpl, data_dir), *store_flags(tpl.older), "--name=renamed-0",
                  "--initial-cluster=renamed-0=http://localhost:2380"])
    assert result.exit_code == 2 and "belongs to member 'etcd-main-0' (peer URLs " in error_line(result)
    assert fingerprint(data_dir) == before


def test_restore_refuses_a_multi_member_data_dir_behind_the_backup(etcd_cluster_factory, tmp_path):
    """Its db is behind, but its WAL may hold entries only its peers can complete: when unsure, refuse."""
    cluster = etcd_cluster_factory(3)
    _put(cluster.leader().client_url, 1, 10)
    m = cluster.members[2]
    cluster.stop_member(2)
    data_dir = tmp_path / "vol" / f"{m.name}.etcd"
    shutil.copytree(m.data_dir, data_dir, symlinks=True)
    _put(cluster.leader().client_url, 11, 20)
    sf.SnapshotFactory(cluster.leader().client_url).full(_store(tmp_path / "bucket"))
    before = fingerprint(data_dir)
    result = run(["restore", f"--data-dir={data_dir}", f"--etcd-bin-dir={sf.etcd_bin_dir()}",
                  f"--restoration-temp-snapshots-dir={tmp_path / 'restore-tmp'}", *store_flags(tmp_path / "bucket"),
                  f"--name={m.name}", f"--initial-cluster={m.name}=http://localhost:2380", "--replace-data-dir"])
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert f"refusing to replace {data_dir}: it is a data dir of a 3-member cluster whose db is at revision" in line
    assert fingerprint(data_dir) == before and volume(data_dir) == [data_dir.name]
