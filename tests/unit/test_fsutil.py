"""fsync_tree flushes every file and directory of a tree."""

from __future__ import annotations

import os

from etcdbr import fsutil


def test_fsync_tree_flushes_every_file_and_directory(tmp_path, monkeypatch):
    (tmp_path / "member" / "snap").mkdir(parents=True)
    (tmp_path / "member" / "wal").mkdir()
    for rel in ("member/snap/db", "member/wal/0.wal", "member/wal/1.wal"):
        (tmp_path / rel).write_bytes(b"x")
    synced: list[str] = []
    real_fsync, real_open = os.fsync, os.open
    names: dict[int, str] = {}

    def recording_open(path, flags, *a):
        fd = real_open(path, flags, *a)
        names[fd] = os.path.relpath(path, tmp_path)
        return fd

    def recording_fsync(fd):
        synced.append(names[fd])
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "open", recording_open)
    monkeypatch.setattr(fsutil.os, "fsync", recording_fsync)
    fsutil.fsync_tree(tmp_path)
    assert sorted(synced) == sorted([".", "member", "member/snap", "member/wal", "member/snap/db",
                                     "member/wal/0.wal", "member/wal/1.wal"])

