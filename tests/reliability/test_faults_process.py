"""Process-level faults: SIGTERM in the middle of a full snapshot, a copy and a restore; a corrupted
object on either store with ``restore --restore-from=auto``; a full disk.

These run the installed console script as a subprocess, as an operator (or Kubernetes) would, and
slow the work down through :class:`faultproxy.FaultProxy` latency so that the signal lands while
bytes are moving.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

import snapshot_factory as sf
from etcdbr.config import StoreConfig
from etcdbr.errors import StoreError
from etcdbr.snapshot import Kind
from etcdbr.snapstore import open_store
from etcdbr.verify import verify_store
from faultproxy import FaultProxy
from reliability.helpers import MiB, full_payload, names, popen_cli, run_cli, snap, wait_for

pytestmark = pytest.mark.integration


def _fill(endpoint: str, prefix: bytes, mib: int) -> None:
    """``mib`` MiB of incompressible values, so snapshots are big enough to interrupt."""
    from etcdbr.etcd import proto as pb

    c = sf.Client(endpoint)
    try:
        for i in range(mib * 4):
            c.kv.Put(pb.PutRequest(key=prefix + b"%05d" % i, value=os.urandom(256 * 1024)), timeout=30)
    finally:
        c.close()


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no exit within {timeout}s of SIGTERM") from None


def _stop_interrupted(proc: subprocess.Popen, busy, what: str, log_path: Path) -> int:
    """SIGTERM ``proc`` once ``busy()`` holds; it must exit 130 saying "interrupted", without a
    traceback. Returns the exit code."""
    try:
        wait_for(busy, 60, what=what)
        code = _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert code == 130 and log.rstrip().endswith("interrupted"), log[-3000:]
    return code


@pytest.fixture(scope="module")
def chain_store(tmp_path_factory):
    """A real chain (full + 3 deltas) of a private etcd holding ~6 MiB, in a Local store."""
    from services import EtcdServer

    root = tmp_path_factory.mktemp("chain")
    etcd = EtcdServer(root / "etcd", bin_dir=sf.etcd_bin_dir())
    etcd.start()
    try:
        _fill(etcd.client_url, b"big/", 6)
        store = open_store(StoreConfig(provider="Local", container=str(root / "bucket"), prefix="chain"))
        factory = sf.SnapshotFactory(etcd.client_url)
        sf.run_workload(etcd.client_url, 50, seed=5, prefix=b"a/")
        full = factory.full(store, "gzip")
        sf.run_workload(etcd.client_url, 150, seed=6, prefix=b"b/")
        deltas = factory.deltas(store, full, parts=3)
        expected = sf.dump(etcd.client_url)
    finally:
        etcd.cleanup()
    return {"dir": root / "bucket", "prefix": "chain", "full": full, "deltas": deltas, "expected": expected}


def _copy_chain(chain_store, dst) -> list:
    src = open_store(StoreConfig(provider="Local", container=str(chain_store["dir"]), prefix=chain_store["prefix"]))
    return sf.copy_snapshots(src, dst)


def _old_data_dir(path: Path) -> Path:
    (path / "member").mkdir(parents=True)
    (path / "member" / "marker").write_text("the data dir before the restore")
    return path / "member" / "marker"


def _restore_args(data_dir: Path, tmp: Path) -> list[str]:
    # --replace-data-dir: _old_data_dir is not an etcd data dir, so it may be replaced (and kept aside)
    return ["restore", "--replace-data-dir", f"--data-dir={data_dir}",
            f"--restoration-temp-snapshots-dir={tmp / 'restore-tmp'}",
            f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={data_dir.name[:-5]}",
            f"--initial-cluster={data_dir.name[:-5]}=http://localhost:2380"]


# -- SIGTERM ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_signal_during_a_full_snapshot(etcd_factory, s3env, tmp_path, outcome, sig):
    etcd = etcd_factory()
    # SIGKILL waits for a multipart upload to be under way (two 5 MiB parts read), so more data.
    _fill(etcd.client_url, b"big/", 4 if sig == signal.SIGTERM else 14)
    prefix = f"term-full-{sig.name}"
    with FaultProxy.for_url(etcd.client_url) as proxy:
        proxy.latency(0.03 if sig == signal.SIGTERM else 0.01)
        proc = popen_cli(["snapshot", f"--endpoints={proxy.url()}", *s3env.cli_args(prefix=prefix),
                          "--delta-snapshot-period=1s", "--garbage-collection-period=0s"],
                         env=s3env.env(), home=tmp_path, log_path=tmp_path / "snapshot.log")
        try:
            if sig == signal.SIGTERM:
                wait_for(lambda: proxy.stats.bytes_down > MiB, 60, what="the full snapshot to be streaming")
                code = _stop(proc)
            else:
                wait_for(lambda: s3env.staged(), 60, interval=0.05, what="a multipart upload under way")
                proc.kill()
                code = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    log = (tmp_path / "snapshot.log").read_text()
    assert "Traceback" not in log
    store = s3env.store(prefix=prefix)
    listed = store.list(include_all=True)
    assert verify_store(store).ok, "a partial object is listed"
    if sig == signal.SIGTERM:
        assert code == 0, log[-3000:]
        assert s3env.staged() == [], "multipart upload left behind"
        what = (f"exit 0 after completing the full snapshot in flight ({len(listed)} listed, verifies clean); "
                "no multipart upload left")
        lost = "nothing"
    else:
        assert listed == [], "a killed upload became visible"
        staged = s3env.staged()
        what = (f"killed mid-upload: nothing listed; the incomplete multipart upload stays staged ({len(staged)}), "
                "invisible")
        lost = "nothing (staged parts need a bucket lifecycle rule)"
    outcome.record("fault", f"{sig.name} while a full snapshot streams from etcd to S3", "`snapshot` (console script)",
                   what, lost)


def test_sigterm_during_a_copy(chain_store, s3env, tmp_path, outcome):
    with FaultProxy.for_url(s3env.endpoint) as proxy:
        proxy.latency(0.03)
        proc = popen_cli(["copy", "--source-storage-provider=Local", f"--source-store-container={chain_store['dir']}",
                          f"--source-store-prefix={chain_store['prefix']}", "--max-parallel-copy-operations=1",
                          *s3env.cli_args(prefix="term-copy", endpoint=proxy.url())],
                         env=s3env.env(), home=tmp_path, log_path=tmp_path / "copy.log")
        code = _stop_interrupted(proc, lambda: proxy.stats.bytes_up > 512 * 1024, "the copy to be uploading",
                                 tmp_path / "copy.log")
    store = s3env.store(prefix="term-copy")
    copied = store.list(include_all=True)
    assert len(copied) < 1 + len(chain_store["deltas"]), "the copy finished before the signal: nothing was tested"
    assert verify_store(store).ok, "a partial object is listed"
    assert s3env.staged() == []
    outcome.record("fault", "SIGTERM while `copy` uploads to S3", "`copy` (console script)",
                   f"exit {code}; {len(copied)} complete object(s) listed, all verify clean; no multipart upload left")


def test_sigterm_during_a_restore(chain_store, s3env, tmp_path, outcome):
    _copy_chain(chain_store, s3env.store(prefix="term-restore"))
    data_dir = tmp_path / "member.etcd"
    marker = _old_data_dir(data_dir)
    with FaultProxy.for_url(s3env.endpoint) as proxy:
        proxy.latency(0.03)
        proc = popen_cli([*_restore_args(data_dir, tmp_path), *s3env.cli_args(prefix="term-restore",
                                                                               endpoint=proxy.url())],
                         env=s3env.env(), home=tmp_path, log_path=tmp_path / "restore.log")
        code = _stop_interrupted(proc, lambda: proxy.stats.bytes_down > 512 * 1024, "the restore to be downloading",
                                 tmp_path / "restore.log")
    assert marker.read_text() == "the data dir before the restore"
    assert not (tmp_path / "member.etcd.part").exists()
    leftovers = list((tmp_path / "restore-tmp").rglob("*")) if (tmp_path / "restore-tmp").exists() else []
    assert leftovers == [], leftovers
    outcome.record("fault", "SIGTERM while `restore` downloads from S3", "`restore` (console script)",
                   f"exit {code}; old data dir intact, no .part dir, temp dir removed",
                   "nothing (old data dir intact)")


# -- a corrupted object on either store ------------------------------------------------------------
@pytest.mark.parametrize("damaged", ["primary", "secondary"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_restore_auto_picks_the_intact_chain(chain_store, tmp_path, outcome, damaged, how):
    stores = {role: open_store(StoreConfig(provider="Local", container=str(tmp_path / role), prefix="etcd"))
              for role in ("primary", "secondary")}
    copies = {role: _copy_chain(chain_store, store) for role, store in stores.items()}
    victim = copies[damaged][-1]  # the newest delta: the chain it ends must not be used
    path = tmp_path / damaged / victim.key
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    verify = run_cli(["verify", "--storage-provider=Local", f"--store-container={tmp_path / damaged}",
                      "--store-prefix=etcd"], home=tmp_path)
    assert verify.code == 1 and victim.key in verify.stdout
    data_dir = tmp_path / "default.etcd"
    result = run_cli([*_restore_args(data_dir, tmp_path), "--restore-from=auto",
                      "--storage-provider=Local", f"--store-container={tmp_path / 'primary'}", "--store-prefix=etcd",
                      "--secondary-storage-provider=Local", f"--secondary-store-container={tmp_path / 'secondary'}",
                      "--secondary-store-prefix=etcd"], home=tmp_path, timeout=180)
    assert result.code == 0, result.output[-3000:]
    intact = "secondary" if damaged == "primary" else "primary"
    assert victim.snap_name in result.output  # the defect is named in the log
    server = sf.serve(data_dir, sf.etcd_bin_dir())
    try:
        restored = sf.dump(server.client_url)
    finally:
        server.cleanup()
    assert restored == chain_store["expected"], "restore did not reach the intact chain's last revision"
    outcome.record("fault", f"newest delta on the {damaged} {'with a flipped byte' if how == 'flip' else 'truncated'}",
                   "`verify`, `restore --restore-from=auto`",
                   f"verify exit 1 naming the object; restore chose the {intact} and reproduced every key and "
                   f"revision ({restored.revision})")


# -- a full disk -----------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs (root only; CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_under_a_local_store(tiny_fs, outcome):
    store = open_store(StoreConfig(provider="Local", container=str(tiny_fs / "bucket"), prefix="p"))
    small = snap(store, Kind.FULL, 0, 10, suffix="")
    store.save(small, io.BytesIO(full_payload(pages=100)))
    big = snap(store, Kind.INCR, 11, 20, minutes=1, suffix="")
    with pytest.raises(StoreError) as info:
        store.save(big, io.BytesIO(os.urandom(3 * MiB)))
    assert "No space left" in str(info.value) and big.key in str(info.value)
    assert names(store.list(include_all=True)) == [small.snap_name]
    assert not any((tiny_fs / "bucket" / ".etcdbr-staging").iterdir())
    assert verify_store(store).ok
    outcome.record("fault", "disk full under a Local store during an upload", "Local store save",
                   f"StoreError naming the object: {str(info.value)[-60:]}; nothing partial listed, staging emptied")


def test_full_disk_in_the_restore_temp_dir(chain_store, tiny_fs, tmp_path, outcome):
    data_dir = tmp_path / "member.etcd"
    marker = _old_data_dir(data_dir)
    args = _restore_args(data_dir, tmp_path)
    args = [a if not a.startswith("--restoration-temp-snapshots-dir") else
            f"--restoration-temp-snapshots-dir={tiny_fs / 'restore-tmp'}" for a in args]
    result = run_cli([*args, "--storage-provider=Local", f"--store-container={chain_store['dir']}",
                      f"--store-prefix={chain_store['prefix']}"], home=tmp_path, timeout=120)
    assert "Traceback" not in result.output
    assert result.code == 1, result.output[-2000:]
    lines = result.error_lines()
    assert len(lines) == 1 and "No space left" in lines[0], result.output[-2000:]
    assert "internal error" not in lines[0] and "restore-tmp" in lines[0], lines[0]
    assert marker.read_text() == "the data dir before the restore"
    assert not (tmp_path / "member.etcd.part").exists()
    outcome.record("fault", "disk full in --restoration-temp-snapshots-dir (2 MiB tmpfs, 6 MiB snapshot)",
                   "`restore` (console script)", f"exit 1: {lines[0]}", "nothing (old data dir intact)")


def test_full_disk_under_the_data_dir(chain_store, tiny_fs, tmp_path, outcome):
    data_dir = tiny_fs / "member.etcd"
    marker = _old_data_dir(data_dir)
    result = run_cli([*_restore_args(data_dir, tmp_path), "--storage-provider=Local",
                      f"--store-container={chain_store['dir']}", f"--store-prefix={chain_store['prefix']}"],
                     home=tmp_path, timeout=120)
    assert "Traceback" not in result.output
    assert result.code == 1, result.output[-2000:]
    assert len(result.error_lines()) == 1, result.output[-2000:]
    assert "internal error" not in result.error_lines()[0]
    assert result.error_lines()[0].startswith(f"error: no room on the volume of {data_dir} for the restored data dir")
    assert marker.read_text() == "the data dir before the restore"
    assert not (tiny_fs / "member.etcd.part").exists()
    shutil.rmtree(tiny_fs / "member.etcd", ignore_errors=True)
    outcome.record("fault", "disk full where the new data dir is built (2 MiB tmpfs)", "`restore` (console script)",
                   f"exit 1: {result.error_lines()[0]}", "nothing (old data dir intact)")
