"""docs/compatibility.md, the matrix of what this tool does where the Go etcdbrctl runs today.

The Go tool's flags are listed by command in ``tests/data/go-etcdbrctl-flags.txt``, written from
its source (``cmd/`` and the ``AddFlags`` methods under ``pkg/``), not from this tool. Every one
must have a row in the matrix, be accepted by the same command here, and every row that is not
"same" must say why."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from etcdbr.cli.main import cli

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "compatibility.md"
FLAGS = REPO / "tests" / "data" / "go-etcdbrctl-flags.txt"
STATUSES = {"✅", "🔶", "❌", "➕"}


def go_flags() -> list[tuple[str, str]]:
    pairs = []
    for line in FLAGS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            command, flag = line.split()
            pairs.append((command, flag))
    return pairs


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/compatibility.md has no section {title!r}"
    return match.group(1)


def test_the_list_is_the_go_tools():
    flags = go_flags()
    assert len(flags) > 150 and len({f for _, f in flags}) >= 80
    assert {c for c, _ in flags} == {"server", "snapshot", "restore", "initialize", "compact", "copy", "etcdbrctl"}
    # a few the Go tool's source names that this tool spells differently elsewhere
    assert {("server", "secondary-backup-sync-enabled"), ("copy", "max-parallel-copy-operations"),
            ("compact", "metrics-scrape-wait-duration"), ("server", "k8s-heartbeat-duration")} <= set(flags)


def test_every_go_flag_has_a_row_with_its_commands():
    rows = {}
    for cells in table_rows(section(DOC.read_text(), "Flags"))[1:]:
        match = re.fullmatch(r"`--([a-z0-9-]+)`", cells[0])
        assert match, cells
        rows[match.group(1)] = cells
    expected: dict[str, set[str]] = {}
    for command, flag in go_flags():
        expected.setdefault(flag, set()).add(command)
    missing = sorted(set(expected) - set(rows))
    assert not missing, f"Go flags without a row in docs/compatibility.md: {missing}"
    for flag, commands in expected.items():
        assert {c.strip() for c in rows[flag][1].split(",")} == commands, flag


@pytest.mark.parametrize("title", ["Stores and objects", "HTTP API", "Metrics", "Config file", "Kubernetes leases",
                                   "Flags", "Environment", "Behaviour"])
def test_no_row_is_left_unexplained(title):
    for cells in table_rows(section(DOC.read_text(), title))[1:]:
        statuses = [c for c in cells if c in STATUSES]
        if not statuses:
            continue  # a mapping table (Go key -> flag) or a list of cases
        if statuses[0] != "✅":
            note = cells[-1]
            assert len(note) > 10, f"{title}: the row {cells[0]} is {statuses[0]} and must say why"


def test_every_go_flag_is_accepted_by_the_same_command():
    ctx = click.Context(cli)
    refused = []
    for command, flag in go_flags():
        params = cli.params if command == "etcdbrctl" else cli.get_command(ctx, command).params
        if f"--{flag}" not in {o for p in params for o in p.opts}:
            refused.append(f"{command} --{flag}")
    assert not refused, refused
