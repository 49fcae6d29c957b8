"""Start-up: a command that does little (``--help``, ``snapshot list`` on a Local store) imports
only what it needs, so it starts in a fraction of a second (issue 19: <= 0.3 s; the benchmark's
start-up row measures it). Guarded structurally, not by a clock: a child interpreter runs the
command and reports which heavy packages got imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

#: Packages whose import alone costs tens of milliseconds or more (or pulls a cloud SDK) and that
#: none of these commands needs: the SDKs, gRPC and etcd's client, the event loop, the metrics
#: registry, the retry library, the copier, compression codecs.
HEAVY = ("boto3", "botocore", "google", "azure", "grpc", "aetcd", "asyncio", "prometheus_client", "tenacity",
         "isal", "zstandard", "yaml", "requests", "urllib3", "concurrent.futures",
         "etcdbr.copier", "etcdbr.etcd", "etcdbr.snapshotter", "etcdbr.restore", "etcdbr.server",
         "etcdbr.metrics", "etcdbr.retry", "etcdbr.compression")

_CHILD = textwrap.dedent("""
    import json, sys
    sys.argv = ["etcd-backup-restore", *{argv!r}]
    from etcdbr.cli.main import main
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    heavy = {heavy!r}
    loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
    print("\\nIMPORTED " + json.dumps({{"code": code, "loaded": loaded}}))
""")


def imported_by(argv: list[str]) -> dict:
    code = _CHILD.format(argv=list(argv), heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("IMPORTED ")]
    assert lines, result.stderr
    return json.loads(lines[-1].removeprefix("IMPORTED "))


COMMANDS = [[], ["snapshot"], ["snapshot", "list"], ["server"], ["restore"],
            ["initialize"], ["compact"], ["copy"], ["verify"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_imports_nothing_heavy(command):
    got = imported_by([*command, "--help"])
    assert got["code"] == 0
    assert got["loaded"] == []


def test_snapshot_list_on_a_local_store_imports_nothing_heavy(tmp_path):
    got = imported_by(["snapshot", "list", "--storage-provider", "Local", "--store-container", str(tmp_path)])
    assert got["code"] == 0
    assert got["loaded"] == []


def test_the_guard_sees_what_a_command_imports(tmp_path):
    """The check itself can fail: a command that does its work imports what it needs, and the
    child reports it."""
    got = imported_by(["copy", "--storage-provider", "Local", "--store-container", str(tmp_path / "dst"),
                       "--source-store-container", str(tmp_path / "src"), "--dry-run"])
    assert "etcdbr.copier" in got["loaded"] and "asyncio" in got["loaded"]
