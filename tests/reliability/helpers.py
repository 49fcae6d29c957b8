"""Shared helpers of the reliability suite: payloads in the Go tool's formats, stores pointed at real
servers (optionally through a :class:`faultproxy.FaultProxy`), and ways to run the real CLI."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner

from etcdbr.config import StoreConfig
from etcdbr.retry import STORE_PART, Policy
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store

MiB = 1024 * 1024
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("etcd-backup-restore")


# -- payloads --------------------------------------------------------------------------------------
def full_payload(pages: int = 8, seed: bytes = b"etcd") -> bytes:
    """A stand-in for etcd's snapshot stream: whole 512-byte pages plus etcd's SHA-256 trailer."""
    block = hashlib.sha256(seed).digest() * 16  # 512 bytes
    body = block * pages
    return body + hashlib.sha256(body).digest()


def delta_payload(start: int, last: int, *, prefix: bytes = b"/k") -> bytes:
    """A delta in the Go tool's layout: JSON events for revisions start..last, then their SHA-256."""
    events = []
    for rev in range(start, last + 1):
        kv = {"key": base64.b64encode(prefix + str(rev).encode()).decode(), "create_revision": rev,
              "mod_revision": rev, "version": 1, "value": base64.b64encode(b"v%d" % rev).decode()}
        events.append({"etcdEvent": {"kv": kv}, "time": "2024-05-01T12:00:00Z"})
    body = json.dumps(events, separators=(",", ":")).encode()
    return body + hashlib.sha256(body).digest()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1)


def snap(store, kind: Kind, start: int, last: int, *, minutes: int = 0, suffix: str = ".gz", final: bool = False):
    return new_snapshot(kind, start, last, prefix=store.prefix, compression_suffix=suffix, is_final=final,
                        created_on=T0 + timedelta(minutes=minutes))


def save_chain(store, full_last: int = 100, deltas: tuple[tuple[int, int], ...] = ((101, 110), (111, 120)),
               minutes: int = 0) -> list:
    """Write a gzip'ed full snapshot and its deltas; returns the snapshots in order."""
    out = []
    full = snap(store, Kind.FULL, 0, full_last, minutes=minutes)
    store.save(full, io.BytesIO(gz(full_payload(seed=b"%d" % full_last))))
    out.append(full)
    for i, (start, last) in enumerate(deltas, 1):
        d = snap(store, Kind.INCR, start, last, minutes=minutes + i)
        store.save(d, io.BytesIO(gz(delta_payload(start, last))))
        out.append(d)
    return out


def names(snaps) -> list[str]:
    return [s.snap_name for s in snaps]


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- stores on the real servers -------------------------------------------------------------------
def fast(store):
    """Retries stay on, only their waits shrink, so fault tests take seconds, not minutes (on the
    store that serves calls now: a rotation of its credentials builds one with the usual waits)."""
    serving = store.resolve()
    serving.part_retry = Policy(attempts=STORE_PART.attempts, first_wait=0.0)
    if serving.provider == "GCS":
        from google.cloud.storage.retry import DEFAULT_RETRY

        serving._retry = DEFAULT_RETRY.with_timeout(0.3).with_delay(initial=0.05, maximum=0.1)
    return store


def fast_open(config):
    return fast(open_store(config))


class _Env:
    provider = ""

    def __init__(self, server, bucket: str, tmp_path: Path, monkeypatch) -> None:
        self.server = server
        self.bucket = bucket
        self.endpoint = server.endpoint
        self.client = server.client()
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.stores = []

    def config(self, prefix: str = "etcd", *, endpoint: str | None = None, parallel: int = 2,
               env_prefix: str = "", temp_dir: str | None = None) -> StoreConfig:
        return StoreConfig(provider=self.provider, container=self.bucket, prefix=prefix,
                           endpoint_override=endpoint or self.endpoint, min_chunk_size=5 * MiB,
                           max_parallel_chunk_uploads=parallel, temp_dir=temp_dir or str(self.tmp_path),
                           env_prefix=env_prefix)

    def store(self, prefix: str = "etcd", *, endpoint: str | None = None, parallel: int = 2, fast_retries: bool = True,
              env_prefix: str = ""):
        store = open_store(self.config(prefix, endpoint=endpoint, parallel=parallel, env_prefix=env_prefix))
        if fast_retries:
            fast(store)
        self.stores.append(store)
        return store

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def cli_args(self, prefix: str = "etcd", endpoint: str | None = None) -> list[str]:
        return [f"--storage-provider={self.provider}", f"--store-container={self.bucket}", f"--store-prefix={prefix}",
                f"--store-endpoint-override={endpoint or self.endpoint}"]


class S3Env(_Env):
    provider = "S3"

    def __init__(self, server, bucket: str, tmp_path: Path, monkeypatch) -> None:
        super().__init__(server, bucket, tmp_path, monkeypatch)
        self.creds_path = tmp_path / "aws-credentials.json"
        self.write_credentials()
        monkeypatch.delenv("AWS_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(self.creds_path))

    def write_credentials(self, secret: str | None = None, path: Path | None = None, **extra) -> Path:
        path = path or self.creds_path
        data = {"accessKeyID": self.server.access_key, "secretAccessKey": secret or self.server.secret_key,
                "region": self.server.region, **extra}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(path)  # atomic, as a Kubernetes secret volume swaps its files
        return path

    def env(self) -> dict:
        return {"AWS_APPLICATION_CREDENTIALS_JSON": str(self.creds_path)}

    def raw_keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []) or [])

    def staged(self) -> list[str]:
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket).get("Uploads", []) or []
        return sorted(u["Key"] for u in uploads)

    def get_raw(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put_raw(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete_raw(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)


class GCSEnv(_Env):
    provider = "GCS"

    def __init__(self, server, bucket: str, tmp_path: Path, monkeypatch) -> None:
        super().__init__(server, bucket, tmp_path, monkeypatch)
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)

    def env(self) -> dict:
        return {"STORAGE_EMULATOR_HOST": self.server.endpoint}

    def raw_keys(self, include_staging: bool = False) -> list[str]:
        keys = sorted(b.name for b in self.client.list_blobs(self.bucket))
        return keys if include_staging else [k for k in keys if ".etcdbr-staging/" not in k]

    def staged(self) -> list[str]:
        return sorted(k for k in self.raw_keys(include_staging=True) if ".etcdbr-staging/" in k)

    def get_raw(self, key: str) -> bytes:
        return self.client.bucket(self.bucket).blob(key).download_as_bytes()

    def put_raw(self, key: str, data: bytes) -> None:
        self.client.bucket(self.bucket).blob(key).upload_from_string(data)

    def delete_raw(self, key: str) -> None:
        self.client.bucket(self.bucket).blob(key).delete()


# -- the CLI ---------------------------------------------------------------------------------------
@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:") or line.startswith("Error:")]


def _clean_env(extra: dict | None, home: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "STORAGE_", "SECONDARY_", "SOURCE_", "ETCD_"))}
    env.update(extra or {})
    if home is not None:
        env["HOME"] = str(home)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_cli(args: list[str], *, env: dict | None = None, home: Path | None = None, timeout: float = 60,
            cwd: Path | None = None) -> Run:
    """Run the installed console script, as an operator would."""
    proc = subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=_clean_env(env, home), cwd=cwd, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def popen_cli(args: list[str], *, env: dict | None = None, home: Path | None = None, log_path: Path,
              cwd: Path | None = None) -> subprocess.Popen:
    out = open(log_path, "wb")
    try:
        return subprocess.Popen([str(CONSOLE_SCRIPT), *args], stdout=out, stderr=subprocess.STDOUT,
                                env=_clean_env(env, home), cwd=cwd, stdin=subprocess.DEVNULL, start_new_session=True)
    finally:
        out.close()


def invoke(args: list[str], *, env: dict | None = None) -> Run:
    """Run a command in-process through click's test runner (faster; same code path after parsing)."""
    from etcdbr.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, args, env=env, catch_exceptions=True, prog_name="etcd-backup-restore")
    stderr = result.stderr if result.stderr_bytes is not None else ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "Traceback (from CliRunner):\n" + "".join(traceback.format_exception(result.exception))
    return Run(result.exit_code, result.stdout, stderr)
