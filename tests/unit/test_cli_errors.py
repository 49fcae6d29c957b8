"""What a user sees when something is wrong: exactly one line on stderr (no click usage block, no
third-party warning before it), the exit code the README lists, and read-only commands that leave
the disk as they found it. Runs the installed console script, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

COMMAND = str(Path(sys.executable).parent / "etcd-backup-restore")


@pytest.fixture
def home(tmp_path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def run(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "STORAGE_", "SECONDARY_", "SOURCE_"))}
    env["HOME"] = str(home)
    # no metadata server to wait for: google-auth's probe fails at once
    env["GCE_METADATA_HOST"] = env["GCE_METADATA_IP"] = "127.0.0.1:9"
    return subprocess.run([COMMAND, *args], capture_output=True, text=True, env=env, cwd=home, timeout=120)


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("args, expect", [
    (["verify", "--no-such-flag"], "No such option '--no-such-flag'"),
    (["snapshot", "list", "--storage-provider"], "requires an argument"),
    (["bogus-command"], "No such command 'bogus-command'"),
])
def test_usage_errors_are_one_line_with_a_hint_and_exit_2(home, args, expect):
    result = run(home, *args)
    assert result.returncode == 2, result.stderr
    line = one_line(result)
    assert expect in line and "--help'" in line
    assert "Usage:" not in result.stderr and result.stdout == ""


def test_help_and_version_still_exit_0(home):
    assert run(home, "--version").returncode == 0
    helped = run(home, "restore", "--help")
    assert helped.returncode == 0 and "--etcd-bin-dir" in helped.stdout


@pytest.mark.parametrize("command", [["snapshot", "list"], ["verify"]])
def test_read_only_commands_create_nothing(home, command):
    result = run(home, *command)
    assert result.returncode == 1
    line = one_line(result)
    assert "Local/default.bkp" in line and "does not exist" in line
    assert sorted(p.name for p in home.iterdir()) == []


def test_missing_gcs_credentials_are_one_line_without_google_auth_warnings(home):
    result = run(home, "snapshot", "list", "--storage-provider=GCS", "--store-container=some-bucket")
    assert result.returncode == 2
    assert "GOOGLE_APPLICATION_CREDENTIALS" in one_line(result)


def test_an_absolute_local_container_has_no_double_slash(home, tmp_path):
    result = run(home, "snapshot", "list", f"--store-container={tmp_path / 'nowhere'}")
    assert f"Local:{tmp_path / 'nowhere'}" in one_line(result) and "Local//" not in result.stderr
