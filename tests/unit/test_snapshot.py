from datetime import datetime, timezone

import pytest

from etcdbr.snapshot import (
    Kind,
    SnapshotNameError,
    chain_gaps,
    latest_chain,
    new_snapshot,
    parse_key,
    parse_listing,
)


def t(sec: int) -> datetime:
    return datetime.fromtimestamp(1_700_000_000 + sec, tz=timezone.utc)


@pytest.mark.parametrize(
    "key",
    [
        "v2/Full-00000000-00001234-1700000000.gz",
        "backups/v2/Incr-00001235-00001300-1700000020.Z",
        "a/b/v2/Full-00000000-00001300-1700003600.gz.final",
        "p/v2/Full-00000000-123456789012-1700000000",
        "p/v2/Incr-00000001-00000002-1700000000.zst",
        "p/v1/Backup-1700000000/Full-00000000-00000010-1700000000.zlib",
    ],
)
def test_key_round_trip(key):
    assert parse_key(key).key == key


def test_fields_of_a_final_full():
    s = parse_key("x/v2/Full-00000000-00001300-1700003600.gz.final")
    assert (s.kind, s.start_revision, s.last_revision, s.compression_suffix, s.is_final, s.prefix) == (
        Kind.FULL, 0, 1300, ".gz", True, "x/v2")
    assert s.created_unix == 1700003600


def test_chunk_keys():
    v2 = parse_key("x/v2/Full-00000000-00000010-1700000000.gz/0000000001")
    assert v2.is_chunk and v2.kind is Kind.CHUNK and v2.snap_dir == ""
    v1 = parse_key("x/v1/Backup-1/Full-00000000-00000010-1700000000/0000000001")
    assert v1.is_chunk and v1.snap_dir == "Backup-1"


@pytest.mark.parametrize(
    "key",
    [
        "x/v2/Full-00000000-00000010",            # 3 fields
        "x/v2/Snap-00000000-00000010-1700000000",  # unknown kind
        "x/v2/Incr-00000020-00000010-1700000000",  # start > last
        "x/v2/Incr-0000000a-00000010-1700000000",  # not a number
        "x/v2/Incr-00000001-00000010-17000x0000",  # bad time
        "x/v2/a/b/Full-00000000-00000010-1700000000",  # too deep
        "x/Full-00000000-00000010-1700000000",     # no layout
    ],
)
def test_bad_keys_are_refused(key):
    with pytest.raises(SnapshotNameError):
        parse_key(key)


def test_listing_skips_strays_and_sorts(caplog):
    keys = [
        ("p/v2/Incr-00000011-00000020-1700000100.gz", {"size": 5}),
        ("p/v2/garbage.txt", {}),
        ("p/other/file", {}),
        ("p/v2/Full-00000000-00000010-1700000000.gz", {"size": 9}),
        ("p/v2/Full-00000000-00000010-1700000000.gz/0000000001", {}),
    ]
    snaps = parse_listing(keys)
    assert [s.key for s in snaps] == [
        "p/v2/Full-00000000-00000010-1700000000.gz",
        "p/v2/Full-00000000-00000010-1700000000.gz/0000000001",
        "p/v2/Incr-00000011-00000020-1700000100.gz",
    ]
    assert snaps[0].size == 9
    assert "skipping object that is not a snapshot" in caplog.text


def test_latest_chain_and_gaps():
    full1 = new_snapshot(Kind.FULL, 0, 10, prefix="v2", created_on=t(0))
    d1 = new_snapshot(Kind.INCR, 11, 20, prefix="v2", created_on=t(10))
    full2 = new_snapshot(Kind.FULL, 0, 20, prefix="v2", created_on=t(20))
    d2 = new_snapshot(Kind.INCR, 21, 30, prefix="v2", created_on=t(30))
    d3 = new_snapshot(Kind.INCR, 35, 40, prefix="v2", created_on=t(40))
    full, deltas = latest_chain([d3, full1, d2, d1, full2])
    assert full == full2 and deltas == [d2, d3]
    assert chain_gaps(full, deltas) == [(31, 35)]
    assert latest_chain([d1, d2]) == (None, [])


def test_full_supersedes_delta_at_same_revision_in_same_second():
    delta = new_snapshot(Kind.INCR, 11, 20, prefix="v2", created_on=t(5))
    full = new_snapshot(Kind.FULL, 0, 20, prefix="v2", created_on=t(5))
    assert latest_chain([full, delta]) == (full, [])
    assert latest_chain([delta, full]) == (full, [])


def test_copier_key_ignores_final():
    a = parse_key("p/v2/Full-00000000-00000010-1700000000.gz.final")
    b = parse_key("q/v2/Full-00000000-00000010-1700000000.gz")
    assert a.copier_key() == b.copier_key() == "/Full-00000000-00000010-1700000000.gz:0-10"


def test_go_json_shape():
    s = parse_key("p/v2/Full-00000000-00000010-1700000000.gz")
    j = s.to_json()
    assert j["immutabilityExpriyTime"] == "0001-01-01T00:00:00Z"
    assert j["createdOn"] == "2023-11-14T22:13:20Z"
    assert set(j) == {"createdOn", "immutabilityExpriyTime", "versionID", "kind", "snapDir", "snapName", "prefix",
                      "compressionSuffix", "startRevision", "lastRevision", "isChunk", "isFinal"}
