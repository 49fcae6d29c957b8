"""The rollback marker: a data dir restored to a point in time remembers where it came from.

After ``restore --to-revision=N`` (or ``--to-time``, or ``initialize`` with either) the store the
chain came from still holds the old timeline's snapshots past N. Backing the rolled-back cluster
up into that same prefix would mix the two timelines (revisions N+1.. collide with the old ones),
and the initializer on that prefix would take the rolled-back data dir for one "behind the newest
backup" and restore the old timeline (the bad state) over the rollback.

So a point-in-time restore writes :data:`MARKER` at the top of the restored data dir, beside
``member/`` (etcd only logs a warning about an unknown file there), recording the target
revision, the time of the restore and the store it came from (provider, container, prefix: no
credentials). The initializer and ``server`` refuse to start (exit 1, one line) while the data
dir holds the marker and a configured store with that same provider, container and prefix holds
snapshots newer than the marker's revision; nothing is restored, moved or removed then. With
another prefix (or that store still empty past the revision) the data dir is used as usual and
the marker is left in place: it costs nothing, and it keeps guarding should the old prefix ever
be configured again. Removing the file is the operator's way to say "the store's newest backup
is really wanted".
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from ..errors import EtcdbrError, RestoreError
from ..fsutil import fsync_dir

log = logging.getLogger(__name__)

MARKER = "etcdbr-point-in-time-restore.json"
KIND = "etcd-backup-restore point-in-time restore"


class OldTimeline(RestoreError):
    """The data dir was rolled back, and the configured store still holds the old timeline (exit 1)."""


def store_identity(store_config) -> dict[str, str]:
    """What names a store in the marker: provider, container and prefix (never credentials)."""
    return {"provider": store_config.effective_provider, "container": store_config.container,
            "prefix": store_config.prefix.strip("/")}


def write_marker(data_dir: str | Path, revision: int, store_config, full_snapshot: str = "") -> Path:
    """Write the marker into ``data_dir`` (a restored data dir, before it is put in place)."""
    path = Path(data_dir) / MARKER
    body = {"kind": KIND, "revision": revision,
            "restored_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "store": store_identity(store_config), "full_snapshot": full_snapshot}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(body, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def read_marker(data_dir: str | Path) -> dict | None:
    """The marker of ``data_dir``, or None when it has none. An unreadable one is refused: it
    was written by a rollback, and guessing what it said would be guessing about the timeline."""
    path = Path(os.path.abspath(data_dir)) / MARKER
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OldTimeline(f"cannot read the point-in-time restore marker {path}: {exc.strerror or exc}; "
                          "nothing was restored, moved or removed") from None
    try:
        body = json.loads(text)
        revision = int(body["revision"])
        store = body["store"]
        identity = {k: str(store[k]) for k in ("provider", "container", "prefix")}
    except (ValueError, KeyError, TypeError):
        raise OldTimeline(f"the point-in-time restore marker {path} is not valid JSON of this tool; remove it if "
                          "the data dir is not a rolled-back one; nothing was restored, moved or removed") from None
    return {"revision": revision, "store": identity, "restored_at": str(body.get("restored_at", "")),
            "path": path}


def guard_old_timeline(data_dir: str | Path, stores: Iterable) -> None:
    """Refuse (:class:`OldTimeline`) when ``data_dir`` was rolled back to a point in time and one
    of ``stores`` (opened stores: their ``config`` names them) is the store it came from and holds
    snapshots past that point. A store that cannot be listed fails the check (never read as empty)."""
    marker = read_marker(data_dir)
    if marker is None:
        return
    revision, identity = marker["revision"], marker["store"]
    for store in stores:
        if store is None or store_identity(store.config) != identity:
            continue
        newest = max((snap.last_revision for snap in store.list()), default=0)
        if newest > revision:
            where = f"{identity['provider']} container {identity['container']!r} prefix {identity['prefix']!r}"
            raise OldTimeline(
                f"data dir {os.path.abspath(data_dir)} was restored to revision {revision} (point in time, "
                f"{marker['restored_at'] or 'time unknown'}) from {where}, which still holds the old timeline's "
                f"snapshots up to revision {newest}: configure a new --store-prefix for the rolled-back cluster, "
                f"or remove {marker['path']} if the store's newest backup is really wanted; nothing was restored, "
                "moved or removed")
    log.info("the data dir was restored to a point in time; the configured store is not the one it came from, "
             "or holds nothing past that point", extra={"data_dir": str(data_dir), "revision": revision,
                                                         "restored_from": f"{identity['provider']}/"
                                                                          f"{identity['container']}/"
                                                                          f"{identity['prefix']}"})


def guard_configured(config, data_dir: str | Path) -> None:
    """:func:`guard_old_timeline` for the stores ``config`` names (opened only when one matches)."""
    marker = read_marker(data_dir)
    if marker is None:
        return
    from ..snapstore import open_store

    candidates = [c for c in (config.store, config.secondary)
                  if c.provider and store_identity(c) == marker["store"]]
    for store_config in candidates:
        try:
            store = open_store(store_config)
            try:
                guard_old_timeline(data_dir, [store])
            finally:
                store.close()
        except OldTimeline:
            raise
        except EtcdbrError as exc:  # never read as "nothing newer": refused, as when it is newer
            raise OldTimeline(
                f"data dir {os.path.abspath(data_dir)} was restored to revision {marker['revision']} (point in "
                f"time) from this very store ({store_config.display} prefix {store_config.prefix.strip('/')!r}), "
                f"which cannot be read to tell whether it holds the old timeline past it: {exc}; nothing was "
                "restored, moved or removed") from None
