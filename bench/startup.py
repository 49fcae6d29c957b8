"""Start-up: how long a command that does little takes, as a whole process (interpreter start-up
and imports included: that is what an operator and a container's probes wait for).

* ``--help`` of ours and of the Go ``etcdbrctl``;
* ``snapshot list`` of ours on an empty Local store (the Go tool has no such command): the issue's
  target is <= 0.3 s;
* start-up to a first full snapshot: ``snapshot`` against an empty etcd into a Local store (deltas
  and garbage collection off), from the process start to its "uploaded"/"saved" log line, ours and
  the Go tool's, interleaved.

Each figure is the median of ``max(5, repeats)`` runs; the sides alternate.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (GO_FULL_SAVED, Ctx, LoggedProcess, Row, etcd, go_etcdbrctl, go_skipped, log, median,
                          ratio, save_raw, secs, timed)

NAME = "startup"
TARGET_SECONDS = 0.3
OURS_SAVED = "full snapshot uploaded"


def timed_cpu(cmd: list, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, user + system CPU seconds) of one command: on a busy machine the CPU figure
    is the one to read."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = timed(cmd, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ours_binary() -> str:
    return str(Path(sys.executable).parent / "etcdbrctl")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)
    return env


def first_full(cmd: list[str], needle: str) -> float:
    proc = LoggedProcess(cmd, _env())
    try:
        at, _ = proc.wait_for(needle, timeout=120)
    finally:
        proc.stop()
    return at


def ours_first_full(endpoint: str, store: Path) -> float:
    return first_full([ours_binary(), "snapshot", "--endpoints", endpoint, "--storage-provider", "Local",
                       "--store-container", str(store), "--delta-snapshot-period", "0",
                       "--garbage-collection-period", "0"], OURS_SAVED)


def go_first_full(binary: Path, endpoint: str, store: Path, tmp: Path) -> float:
    return first_full([str(binary), "snapshot", "--endpoints", endpoint, "--storage-provider", "Local",
                       "--store-container", str(store), "--delta-snapshot-period", "0",
                       "--garbage-collection-period", "0", "--snapstore-temp-directory", str(tmp)], GO_FULL_SAVED)


def run(ctx: Ctx) -> list[Row]:
    n = max(5, ctx.repeats)
    go = go_etcdbrctl()
    env = _env()
    raw: dict = {"help": [], "go_help": [], "list": [], "first_full": [], "go_first_full": [], "cpu": {}}
    cpu = raw["cpu"]

    def measure(key: str, cmd: list) -> None:
        wall, used = timed_cpu(cmd, env)
        raw[key].append(wall)
        cpu.setdefault(key, []).append(used)

    ctx.work.mkdir(parents=True, exist_ok=True)
    empty = Path(tempfile.mkdtemp(prefix="startup-", dir=ctx.work))
    try:
        for _ in range(n):
            measure("help", [ours_binary(), "--help"])
            if go is not None:
                measure("go_help", [go, "--help"])
            measure("list", [ours_binary(), "snapshot", "list", "--storage-provider", "Local",
                             "--store-container", str(empty / "store")])
        with etcd() as srv:
            for i in range(n):
                raw["first_full"].append(ours_first_full(srv.client_url, empty / f"ours-{i}"))
                if go is not None:
                    raw["go_first_full"].append(go_first_full(go, srv.client_url, empty / f"go-{i}", empty / "tmp"))
                log(f"{NAME} run {i + 1}: first full snapshot ours {raw['first_full'][-1]:.2f}s"
                    + (f", Go {raw['go_first_full'][-1]:.2f}s" if go is not None else ""))
                time.sleep(0.2)
    finally:
        shutil.rmtree(empty, ignore_errors=True)
    save_raw(NAME, raw)
    h, ls, ff = median(raw["help"]), median(raw["list"]), median(raw["first_full"])

    def with_cpu(key: str, wall: float) -> str:
        return f"{secs(wall)} (cpu {median(cpu[key]):.2f} s)"

    rows = [Row(name="start-up: `snapshot list` on an empty Local store (whole process)", ours=with_cpu("list", ls),
                target=f"≤ {TARGET_SECONDS} s", met=ls <= TARGET_SECONDS)]
    help_name = "start-up: `--help` (whole process), against Go etcdbrctl"
    full_name = "start-up to a first full snapshot (empty etcd, Local store), against Go etcdbrctl"
    if go is None:
        rows += [Row(name="start-up: `--help` (whole process)", ours=with_cpu("help", h), target=f"≤ {TARGET_SECONDS} s",
                     met=h <= TARGET_SECONDS), go_skipped(help_name), go_skipped(full_name)]
        return rows
    gh, gff = median(raw["go_help"]), median(raw["go_first_full"])
    rows += [
        Row(name=help_name, ours=with_cpu("help", h), peer=f"{with_cpu('go_help', gh)} Go etcdbrctl --help",
            ratio=ratio(h, gh),
            target=f"≤ {TARGET_SECONDS} s", met=h <= TARGET_SECONDS),
        Row(name=full_name, ours=secs(ff), peer=f"{secs(gff)} Go etcdbrctl snapshot", ratio=ratio(ff, gff),
            target="(no target)"),
    ]
    return rows
