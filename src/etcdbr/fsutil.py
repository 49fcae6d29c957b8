"""Small durability helpers shared by the Local store and the restorer."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path | str) -> None:
    """Make a rename or create in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path | str) -> None:
    """Flush every file and directory under ``path`` to disk.

    A data dir written by an etcd running with ``--unsafe-no-fsync`` (the restore's temporary
    member) is only in the page cache until this; it must be durable before it replaces a
    member's data dir, or a power loss right after the swap could leave a torn db behind.
    """
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
