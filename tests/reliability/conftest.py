"""Fixtures of the reliability suite, and the recorder behind docs/reliability.md.

A test that tries a fault or a bad input takes the ``outcome`` fixture and records one row per
case: what was tried, what the tool did, what was lost. The row's pass/fail comes from the test's
own result, so a failing test can never produce a row that reads "nothing lost". At the end of
the session the rows are merged into ``build/reliability/results.json`` (rows of tests that did not
run this time are kept), which ``scripts/fault_table.py`` renders into ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

from reliability.helpers import GCSEnv, S3Env

REPO_ROOT = Path(__file__).resolve().parents[2]
RESULTS_ENV = "ETCDBR_RELIABILITY_RESULTS"
DEFAULT_RESULTS = REPO_ROOT / "build" / "reliability" / "results.json"


@dataclass
class Row:
    area: str          # fault | bad-input | security | verify
    case: str          # what was tried
    target: str        # component or command under test
    observed: str      # what the tool did (error line, recovery)
    lost: str          # what was lost: "nothing" unless the test says otherwise
    test: str = ""
    status: str = "not run"   # passed | failed | skipped, from the test's result


@dataclass
class Recorder:
    nodeid: str
    rows: list[Row] = field(default_factory=list)

    def record(self, area: str, case: str, target: str, observed: str, lost: str = "nothing") -> None:
        # One line each: the table has no room for tracebacks, and the tests assert there are none.
        observed = _stable(" ".join(str(observed).split()))
        if len(observed) > 200:
            observed = observed[:197] + "..."
        self.rows.append(Row(area, case, target, observed, lost, self.nodeid))


_ROWS: dict[str, list[Row]] = {}

# What differs between runs and machines (temp paths, ports, generated names) is masked, so that the
# committed table neither leaks this machine's paths nor changes on every run.
_UNSTABLE = [
    (re.compile(r"(?:/private)?/tmp/pytest-of-[^/\s]+/pytest-\d+/[^/\s'\"]+"), "<tmp>"),
    (re.compile(re.escape(tempfile.gettempdir()) + r"/[^\s'\"]+"), "<tmp>"),
    (re.compile(re.escape(str(REPO_ROOT))), "<repo>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<port>"),
    (re.compile(r"\b(s3|gcs|abs|local)-[0-9a-f]{8,}\b"), r"<\1-bucket>"),
]


def _stable(text: str) -> str:
    for pattern, replacement in _UNSTABLE:
        text = pattern.sub(replacement, text)
    return text


@pytest.fixture
def outcome(request) -> Recorder:
    rec = Recorder(request.node.nodeid)
    _ROWS[request.node.nodeid] = rec.rows
    return rec


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    rows = _ROWS.get(item.nodeid)
    if rows is None:
        return
    if not rows and report.failed:
        # A test that failed before recording must still show up in the table, as a failure.
        rows.append(Row("unrecorded", item.name, "-", f"the test failed during {report.when}", "unknown",
                        item.nodeid, "failed"))
    if not rows:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        for row in rows:
            row.status = report.outcome
    elif report.when == "teardown" and report.outcome == "failed":
        for row in rows:
            row.status = "failed"


def pytest_sessionfinish(session, exitstatus):
    if not _ROWS:
        return
    path = Path(os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS)
    try:
        old = json.loads(path.read_text()).get("rows", [])
    except (OSError, ValueError):
        old = []
    ran = set(_ROWS)
    merged = [r for r in old if r.get("test") not in ran]
    for rows in _ROWS.values():
        merged.extend(asdict(r) for r in rows)
    merged.sort(key=lambda r: (r["area"], r["test"], r["case"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": merged}, indent=1))
    tmp.replace(path)


# -- stores behind the real servers ----------------------------------------------------------------
@pytest.fixture
def s3env(s3_server, s3_bucket, tmp_path, monkeypatch) -> S3Env:
    env = S3Env(s3_server, s3_bucket, tmp_path, monkeypatch)
    yield env
    env.close()


@pytest.fixture
def gcsenv(gcs_server, gcs_bucket, tmp_path, monkeypatch) -> GCSEnv:
    env = GCSEnv(gcs_server, gcs_bucket, tmp_path, monkeypatch)
    yield env
    env.close()
