"""The docs' command blocks, run as a newcomer runs them, so that they cannot drift from the tool.

A fenced block whose info string is ``bash runnable=<setup>`` (README.md, then docs/*.md in name
order) is run by bash (``-euo pipefail``), block after block in document order, from a work
directory laid out as a clone is (``.venv`` and ``.demo/``) with a fresh ``$HOME`` and none of the
tool's environment variables, while the setup runs: ``demo`` is ``scripts/demo``, ``demo-dual``
is ``scripts/demo --dual`` (the real etcd, S3 server and GCS emulator, on free ports). The demo is
then stopped as a user stops it (SIGINT, Ctrl-C) and the restore commands it prints at the end are
run as printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from services import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)  # the virtualenv the suite runs in: a clone's .venv
SETUPS = {"demo": [], "demo-dual": ["--dual"]}
FENCE = re.compile(r"^```(\S*)(?:\s+runnable=(\S+))?\s*$")


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def runnable_blocks() -> list[tuple[str, str, str]]:
    """(setup, 'file:line', text) of every runnable block, in the order they are run."""
    found = []
    for doc in documents():
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            match = FENCE.match(lines[i])
            if match and match.group(1):
                end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
                if match.group(2):
                    found.append((match.group(2), f"{doc.relative_to(REPO)}:{i + 1}", "\n".join(lines[i + 1:end])))
                i = end
            i += 1
    return found


def test_every_runnable_block_names_a_setup_and_the_readme_has_both():
    blocks = runnable_blocks()
    assert {setup for setup, _, _ in blocks} <= set(SETUPS), blocks
    readme = {setup for setup, where, _ in blocks if where.startswith("README.md")}
    assert readme == set(SETUPS)


def newcomer_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "STORAGE_", "SECONDARY_", "SOURCE_", "ETCD"))}
    env["HOME"] = str(home)
    return env


class Demo:
    """scripts/demo.py in ``work`` (its state in ``work/.demo``), its output collected line by line."""

    def __init__(self, work: Path, env: dict, args: list[str]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "demo.py"), "--dir", str(work / ".demo"),
             "--port", str(free_port()), *args],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("ready:"):
                self.ready.set()

    def output(self) -> str:
        return "\n".join(self.lines)

    def interrupt(self) -> int:
        """Ctrl-C: only the demo gets it (its children run in their own sessions) and stops them."""
        self.children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def left_running(self) -> list[str]:
        # the write loop's short-lived `etcdctl put` and `sleep 0.5` may outlive it by a moment
        _, alive = psutil.wait_procs(self.children, timeout=3)
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        for child in alive:
            child.kill()
        return [" ".join(c.cmdline()[:2]) for c in alive]

    def printed_after(self, heading: str) -> str:
        at = max(i for i, line in enumerate(self.lines) if line.startswith(heading))
        commands = []
        for line in self.lines[at + 1:]:
            if not line.startswith("  "):
                break
            commands.append(line.strip())
        return "\n".join(commands)


def run_block(text: str, work: Path, env: dict, where: str) -> subprocess.CompletedProcess:
    # a block that fails half-way must not leave its background etcd behind
    script = "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + text
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=work, env=env, capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, \
        f"{where} failed (exit {result.returncode}):\n{text}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "error:" not in result.stderr, f"{where}:\n{result.stderr}"
    if "get demo/hello" in text:  # the key the demo wrote first, read back from the restored member
        assert "demo/hello\nworld" in result.stdout, f"{where}:\n{result.stdout}"
    return result


@pytest.mark.parametrize("setup", list(SETUPS))
def test_runnable_blocks_work_as_written(setup, tmp_path):
    blocks = [(where, text) for s, where, text in runnable_blocks() if s == setup]
    assert blocks
    work, home = tmp_path / "clone", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    (work / ".venv").symlink_to(VENV)
    env = newcomer_env(home)
    demo = Demo(work, env, SETUPS[setup])
    try:
        assert demo.ready.wait(240), f"scripts/demo never said ready:\n{demo.output()}"
        for where, text in blocks:
            run_block(text, work, env, where)
    finally:
        code = demo.interrupt()
    assert code == 0, demo.output()
    assert demo.left_running() == []
    assert len(demo.children) >= (5 if setup == "demo-dual" else 3)  # etcd, writer, server (+ S3, GCS)
    assert sorted(p.name for p in home.iterdir()) == [], "the commands wrote into $HOME"
    if setup == "demo":  # the restore the demo prints when it stops works as printed
        printed = demo.printed_after("Restore the latest backup")
        assert "restore" in printed and ".demo/restored-2" in printed, demo.output()
        run_block(printed, work, env, "scripts/demo's closing restore commands")
