"""The attempt counts and pauses that docs/dual-endpoint.md ("Timeouts and retries") promises
operators are the ones etcdbr.retry and the configuration defaults give."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from etcdbr.config import StoreConfig, SyncConfig
from etcdbr.retry import SDK_ATTEMPTS, SDK_RETRY_PAUSE, SDK_RETRY_WAIT, STORE_PART, Policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "dual-endpoint.md"

#: The copier's policy with the default flags (--backup-sync-max-retries, --backup-sync-retry-backoff).
COPIER = Policy.from_flags(SyncConfig().max_retries, SyncConfig().retry_backoff.total_seconds())


def section() -> str:
    text = DOC.read_text()
    start = text.index("## Timeouts and retries")
    return text[start:text.index("\n## ", start + 1)]


def table(first_header: str) -> dict[str, list[str]]:
    """The rows of the section's table whose first header cell is ``first_header``, by first cell."""
    lines = section().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def seconds(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"(\d+(?:\.\d+)?)s\b", text)]


def leading_int(text: str) -> int:
    return int(re.match(r"\d+", text).group())


def test_the_layers_table_matches_the_policies():
    layers = table("layer")
    sdk = layers[next(k for k in layers if k.startswith("the provider's SDK"))]
    ours = layers[next(k for k in layers if k.startswith("ours, per upload part"))]
    copier = layers[next(k for k in layers if k.startswith("the copier"))]
    assert leading_int(sdk[0]) == SDK_ATTEMPTS
    assert sdk[1] == f"≤ {SDK_RETRY_WAIT:g}s"
    # ABS waits SDK_RETRY_PAUSE give or take half of it; GCS waits SDK_RETRY_PAUSE.
    assert SDK_RETRY_PAUSE * 1.5 <= SDK_RETRY_WAIT
    assert leading_int(ours[0]) == STORE_PART.attempts
    assert seconds(ours[1]) == STORE_PART.waits()
    assert leading_int(copier[0]) == COPIER.attempts
    assert seconds(copier[1]) == COPIER.waits()


@pytest.mark.parametrize("operation, layers", [
    ("a copy's upload of one part to the secondary", (SDK_ATTEMPTS, STORE_PART.attempts, COPIER.attempts)),
    ("a copy's download from the primary, a deletion, a verification read", (SDK_ATTEMPTS, COPIER.attempts)),
    ("the snapshotter's upload of one part to the primary", (SDK_ATTEMPTS, STORE_PART.attempts)),
])
def test_requests_at_most(operation, layers):
    cell = table("operation")[operation][0]
    factors, total = re.match(r"([\d ×]+)= (\d+)", cell).groups()
    assert tuple(int(f) for f in factors.split("×")) == layers
    assert int(total) == math.prod(layers)


def test_a_listing_is_tried_by_the_sdk_only():
    listing = next(v for k, v in table("operation").items() if k.startswith("a listing"))
    assert leading_int(listing[0]) == SDK_ATTEMPTS


def test_the_time_to_fail_one_request():
    timeout = StoreConfig().timeout.total_seconds()
    text = " ".join(section().split())
    assert (f"{SDK_ATTEMPTS} × `--store-timeout` + {SDK_RETRY_WAIT:g}s "
            f"({SDK_ATTEMPTS * timeout + SDK_RETRY_WAIT:g}s by default)") in text
