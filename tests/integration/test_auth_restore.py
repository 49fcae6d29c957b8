"""A backup of an etcd with authentication enabled, taken by our snapshotter (a full snapshot and
deltas), restores; the restored member has authentication on, with its users, roles and
permissions as they were, and every key at its revisions. The same for ``compact``'s snapshot.

The replay through a temporary etcd writes as no user, which etcd refuses while auth is on; the
restorer switches auth off in the data dir it is building, replays, and switches it back on before
the dir is checked and put in place (the Go tool disables auth on its embedded etcd for the same
reason). The direct replay (the default) makes no request and leaves the switch alone; both give
the same ``hashkv``.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.config import Config, StoreConfig
from etcdbr.restore import Compactor
from etcdbr.restore.bbolt import auth_enabled
from etcdbr.snapshot import latest_chain
from etcdbr.snapshotter import Snapshotter
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration

NAME = "etcd-main-0"
ROOT_PASSWORD = "r00t-Passw0rd"


def _ctl(etcd, *args: str, user: str | None = f"root:{ROOT_PASSWORD}", check: bool = True):
    return etcd.etcdctl(*((f"--user={user}",) if user else ()), *args, check=check)


def _everything(etcd) -> dict:
    """Every key with value and revisions, read as root, plus the current revision."""
    out = json.loads(_ctl(etcd, "get", "", "--prefix", "-w", "json").stdout)
    kvs = {kv["key"]: (kv.get("value"), kv["create_revision"], kv["mod_revision"], kv["version"])
           for kv in out.get("kvs", [])}
    return {"revision": out["header"]["revision"], "kvs": kvs}


def _security(etcd) -> dict:
    return {"users": _ctl(etcd, "user", "list").stdout.split(),
            "roles": _ctl(etcd, "role", "list").stdout.split(),
            "reader": _ctl(etcd, "role", "get", "reader").stdout,
            "alice": _ctl(etcd, "user", "get", "alice").stdout}


def _assert_auth_on_as_before(server, expected: dict, security: dict) -> None:
    anonymous = server.etcdctl("get", "app/1", check=False)
    assert anonymous.returncode != 0 and "user name is empty" in anonymous.stderr, anonymous.stderr
    assert _everything(server) == expected
    assert _security(server) == security
    alice = "alice:alice-Passw0rd"
    assert _ctl(server, "get", "app/1", "--print-value-only", user=alice).stdout.strip() == "after-1"
    denied = _ctl(server, "put", "app/x", "y", user=alice, check=False)
    assert denied.returncode != 0 and "permission denied" in denied.stderr


def _cli(command: str, tmp_path: Path, data_dir: Path, *extra: str):
    """``restore`` or ``initialize`` of ``data_dir`` from the Local store ``tmp_path/bucket``."""
    return CliRunner().invoke(cli, [
        command, "--storage-provider=Local", f"--store-container={tmp_path / 'bucket'}", "--store-prefix=etcd",
        f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={tmp_path / 'restore-tmp'}",
        f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={NAME}", f"--initial-cluster={NAME}=http://localhost:2380",
        *extra], catch_exceptions=False)


def _config(etcd, store) -> Config:
    config = Config()
    config.store = store.config
    config.etcd.endpoints = [etcd.client_url]
    config.etcd.username, config.etcd.password = "root", ROOT_PASSWORD
    config.snapshotter.schedule = "0 0 1 1 *"
    config.snapshotter.delta_snapshot_period = timedelta(seconds=1)
    config.restoration.name = NAME
    config.restoration.initial_cluster = f"{NAME}=http://localhost:2380"
    config.restoration.etcd_bin_dir = str(sf.etcd_bin_dir())
    return config


def _auth_etcd(etcd_factory):
    etcd = etcd_factory(name=NAME)
    for i in range(10):
        etcd.etcdctl("put", f"app/{i}", f"before-{i}")
    _ctl(etcd, "user", "add", f"root:{ROOT_PASSWORD}", user=None)
    _ctl(etcd, "role", "add", "reader", user=None)
    _ctl(etcd, "role", "grant-permission", "reader", "read", "app/", "--prefix=true", user=None)
    _ctl(etcd, "user", "add", "alice:alice-Passw0rd", user=None)
    _ctl(etcd, "user", "grant-role", "alice", "reader", user=None)
    _ctl(etcd, "auth", "enable", user=None)
    return etcd


def test_auth_enabled_backup_restores_with_auth_still_on(etcd_factory, tmp_path):
    etcd = _auth_etcd(etcd_factory)

    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="etcd"))
    config = _config(etcd, store)
    snapper = Snapshotter(store, config)

    async def backup() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        deadline = time.monotonic() + 30
        while snapper.latest()[0] is None:
            assert time.monotonic() < deadline, "no full snapshot"
            await asyncio.sleep(0.1)
        for i in range(20):  # after the full snapshot: only in deltas
            await asyncio.to_thread(_ctl, etcd, "put", f"app/{i}", f"after-{i}")
            if i % 7 == 6:
                await asyncio.sleep(1.2)  # more than one delta
        await asyncio.to_thread(_ctl, etcd, "del", "app/0")
        revision = (await asyncio.to_thread(_everything, etcd))["revision"]
        while (snapper.collected_revision or 0) < revision:
            assert time.monotonic() < deadline + 60, "the watch did not catch up"
            await asyncio.sleep(0.1)
        stop.set()
        await running
        await snapper.close()

    asyncio.run(backup())
    expected, security = _everything(etcd), _security(etcd)
    full, deltas = latest_chain(store.list())
    assert full is not None and len(deltas) >= 2 and deltas[-1].last_revision == expected["revision"]

    hashes = {}
    for mode in ("etcd", "direct"):
        data_dir = tmp_path / f"restored-{mode}" / f"{NAME}.etcd"
        result = _cli("restore", tmp_path, data_dir, f"--delta-replay={mode}")
        assert result.exit_code == 0, result.output
        if mode == "etcd":  # the temporary etcd is driven as no user
            assert "switched off in the restored data while the temporary etcd works on it" in result.stderr
            assert "switched etcd authentication back on in the restored data" in result.stderr
        else:  # nothing to switch: no request is made
            assert "switched off" not in result.stderr and "switched etcd authentication" not in result.stderr
        assert f"restore done at revision {expected['revision']}" in result.stderr
        assert auth_enabled(data_dir / "member" / "snap" / "db")
        server = sf.serve(data_dir, Path(config.restoration.etcd_bin_dir))
        try:
            _assert_auth_on_as_before(server, expected, security)
            [status] = json.loads(_ctl(server, "endpoint", "hashkv", f"--rev={expected['revision']}",
                                       "-w", "json").stdout)
            hashes[mode] = (status["HashKV"]["hash"], status["HashKV"]["compact_revision"])
        finally:
            server.cleanup()
    assert hashes["direct"] == hashes["etcd"]  # etcd's own hash of the keyspace, both replays

    # compact folds the chain into one full snapshot, which must carry auth on as well
    compacted = Compactor(store, config).run()
    assert compacted.snapshot is not None and compacted.revision == expected["revision"]
    full, deltas = latest_chain(store.list())
    assert full.snap_name == compacted.snapshot.snap_name and not deltas
    again = tmp_path / "from-compacted" / f"{NAME}.etcd"
    result = _cli("restore", tmp_path, again)
    assert result.exit_code == 0, result.output
    server = sf.serve(again, Path(config.restoration.etcd_bin_dir))
    try:
        assert _everything(server)["kvs"] == expected["kvs"]
        anonymous = server.etcdctl("get", "app/1", check=False)
        assert anonymous.returncode != 0 and "user name is empty" in anonymous.stderr
        assert _security(server) == security
    finally:
        server.cleanup()


def test_auth_enabled_member_behind_the_backup_is_judged_by_its_revision(etcd_factory, tmp_path):
    """The initializer lets etcd replay the WAL of a data dir behind the backup and asks its
    revision; with auth on, reads need a user, and the answer must still be the revision (not
    "etcd cannot start on the data dir")."""
    import shutil

    etcd = _auth_etcd(etcd_factory)
    for i in range(10):
        _ctl(etcd, "put", f"app/{i}", f"after-{i}")
    etcd.stop()
    member = tmp_path / "vol" / f"{NAME}.etcd"
    shutil.copytree(etcd.data_dir, member, symlinks=True)
    behind = _everything_offline(member)
    etcd.start()
    for i in range(10, 15):
        _ctl(etcd, "put", f"app/{i}", f"after-{i}")
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="etcd"))
    config = _config(etcd, store)

    async def full() -> None:
        snapper = Snapshotter(store, config)
        await snapper.take_full_snapshot()
        await snapper.close()

    asyncio.run(full())
    expected, security = _everything(etcd), _security(etcd)
    result = _cli("initialize", tmp_path, member, "--endpoints=http://127.0.0.1:1")
    assert result.exit_code == 0, result.output
    assert "letting etcd replay its WAL" in result.stderr
    assert f"status=RevisionBehind reason=\"revision {behind} after WAL replay is still behind" in result.stderr, \
        result.stderr
    assert "cannot start" not in result.stderr
    kept = [p for p in member.parent.iterdir() if p.name.startswith(f"{NAME}.etcd.aside-")]
    assert len(kept) == 1 and kept[0].name.endswith("-behind")
    server = sf.serve(member, Path(config.restoration.etcd_bin_dir))
    try:
        _assert_auth_on_as_before(server, expected, security)
    finally:
        server.cleanup()


def _everything_offline(data_dir: Path) -> int:
    from etcdbr.restore.bbolt import read_etcd_db

    return read_etcd_db(data_dir / "member" / "snap" / "db").revision
