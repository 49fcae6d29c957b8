"""Finding the etcd release a restore runs: ``etcd`` (temporary member) and ``etcdutl``.

The binaries must be those of the etcd version the cluster runs, so they are looked up, never
bundled: ``--etcd-bin-dir`` (or ``$ETCD_BIN_DIR``), then ``$PATH``, then the directory of the
running interpreter (where a virtualenv's console scripts live when it is not activated).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EtcdRelease:
    etcd: str
    etcdutl: str
    version: str


def _find(name: str, bin_dir: str) -> str:
    if bin_dir:
        candidate = os.path.join(bin_dir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise ConfigError(f"--etcd-bin-dir {bin_dir!r} has no executable {name!r}")
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if not found:
        raise ConfigError(f"{name!r} not found on PATH; install the etcd release the cluster runs "
                          "or point --etcd-bin-dir (env ETCD_BIN_DIR) at its binaries")
    return found


@lru_cache(maxsize=8)
def _probe(path: str, flag: str) -> str:
    """Run ``<tool> version`` (``etcd --version``) once: a binary that cannot run fails here with its own words,
    not in the middle of a restore."""
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise ConfigError(f"cannot run {path}: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{path} {flag} did not answer within 60s") from None
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"{path} does not run (exit {out.returncode}): {last[0]}")
    for line in out.stdout.splitlines():
        if "version" in line.lower():
            return line.split(":", 1)[-1].strip()
    return out.stdout.strip()


def find_release(bin_dir: str = "") -> EtcdRelease:
    bin_dir = bin_dir or os.environ.get("ETCD_BIN_DIR", "")
    etcd = _find("etcd", bin_dir)
    etcdutl = _find("etcdutl", bin_dir)
    version = _probe(etcdutl, "version")
    _probe(etcd, "--version")
    return EtcdRelease(etcd=etcd, etcdutl=etcdutl, version=version)
