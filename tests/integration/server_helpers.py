"""Helpers for tests that run ``server`` as a subprocess against real etcd and S3.

* :class:`ServerProcess` - one ``etcd-backup-restore server`` process, its log, its HTTP API.
* :class:`EtcdWriter` - a steady write load through etcd's gRPC gateway, recording the revision
  of every put.
* :func:`s3_env` / :func:`s3_objects` - point the tool at the test S3 server; read what it wrote.
* :func:`restore_with_cli` / :func:`keyspace` - restore a data dir with the ``restore`` command;
  read back the keyspace a data dir holds.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from etcdbr.compression import decompress_bytes
from etcdbr.delta import decode_delta
from etcdbr.snapshot import Kind, Snapshot, parse_key, sort_key
from services import free_port

_RUN = "from etcdbr.cli.main import main; main()"


class ServerProcess:
    """``server`` in a subprocess on 127.0.0.1 with a free port; stopped by PID at teardown."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str] | None = None, *,
                 name: str = "server", tls_context: ssl.SSLContext | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.args = ["server", "--server-host", "127.0.0.1", "--server-port", str(self.port), *args]
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / f"{name}.log"
        self.tls_context = tls_context
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls_context else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", _RUN, *self.args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, timeout: float = 30.0) -> tuple[int, dict, bytes]:
        """``(status, headers, body)``; HTTP errors are answers, not exceptions."""
        request = urllib.request.Request(self.base_url + path)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.tls_context) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str, expect: int = 200):
        status, _, body = self.get(path)
        assert status == expect, f"GET {path}: {status} {body[:500]!r}\n{self.tail()}"
        return json.loads(body)

    def healthy(self) -> bool:
        try:
            return self.get("/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}) while waiting for {what}\n{self.tail()}")
            try:
                if predicate():
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.tail()}")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self.wait_for(self.healthy, timeout, "/healthz 200")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code (fails the test on timeout)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM\n{self.tail()}") from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def tail(self, lines: int = 40) -> str:
        return "--- server log ---\n" + "\n".join(self.log_text().splitlines()[-lines:])


class EtcdWriter(threading.Thread):
    """Puts ``<prefix>k<i>`` = ``v<i>`` through etcd's gRPC gateway, ``rate`` per second."""

    def __init__(self, client_url: str, prefix: str, *, rate: float = 40.0, user: str = "", password: str = "") -> None:
        super().__init__(daemon=True)
        self.client_url = client_url
        self.prefix = prefix
        self.interval = 1.0 / rate
        self.writes: list[tuple[bytes, bytes, int]] = []
        self.errors: list[str] = []
        self._stop_event = threading.Event()
        self._token = ""
        self._token = self._authenticate(user, password) if user else ""
        self._n = 0

    def _post(self, path: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = self._token
        req = urllib.request.Request(self.client_url + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def _authenticate(self, user: str, password: str) -> str:
        return self._post("/v3/auth/authenticate", {"name": user, "password": password})["token"]

    def put_one(self) -> tuple[bytes, bytes, int]:
        key, value = f"{self.prefix}k{self._n:06d}".encode(), f"v{self._n}-{time.time_ns()}".encode()
        self._n += 1
        resp = self._post("/v3/kv/put", {"key": base64.b64encode(key).decode(),
                                         "value": base64.b64encode(value).decode()})
        write = (key, value, int(resp["header"]["revision"]))
        self.writes.append(write)
        return write

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.put_one()
            except OSError as exc:
                self.errors.append(str(exc))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


def s3_env(s3_server, workdir: Path, prefix: str = "") -> dict[str, str]:
    """Environment pointing the tool's ``<prefix>AWS_APPLICATION_CREDENTIALS_JSON`` at the server."""
    creds = workdir / f"{prefix.lower() or 'primary'}-s3.json"
    creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                 "region": s3_server.region, "s3ForcePathStyle": True}))
    return {f"{prefix}AWS_APPLICATION_CREDENTIALS_JSON": str(creds)}


def s3_primary_gcs_secondary(tmp_path: Path, s3_server, s3_bucket: str, gcs_server, gcs_bucket: str,
                             store_prefix: str, monkeypatch):
    """``(env, primary, secondary)``: the environment of a server with an S3 primary and a GCS
    secondary (set in this process too), and this process's own handles on both stores."""
    from etcdbr.config import StoreConfig
    from etcdbr.snapstore import open_store

    env = {**s3_env(s3_server, tmp_path), "STORAGE_EMULATOR_HOST": gcs_server.endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    primary = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix=store_prefix,
                                     endpoint_override=s3_server.endpoint))
    secondary = open_store(StoreConfig(provider="GCS", container=gcs_bucket, prefix=store_prefix,
                                       env_prefix="SECONDARY_"))
    return env, primary, secondary


def s3_store_args(s3_server, bucket: str, store_prefix: str) -> list[str]:
    return ["--storage-provider", "S3", "--store-container", bucket, "--store-prefix", store_prefix,
            "--store-endpoint-override", s3_server.endpoint]


def s3_objects(s3_server, bucket: str, store_prefix: str) -> list[Snapshot]:
    """Every snapshot object under ``<store_prefix>/v2``, sorted as the tool sorts them."""
    client = s3_server.client()
    snaps = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{store_prefix}/v2/"):
        for obj in page.get("Contents", []):
            snaps.append(parse_key(obj["Key"]))
    return sorted(snaps, key=sort_key)


def read_delta(s3_server, bucket: str, snap: Snapshot):
    body = s3_server.client().get_object(Bucket=bucket, Key=snap.key)["Body"].read()
    return decode_delta(decompress_bytes(body, snap.compression_suffix))


def fulls(snaps) -> list[Snapshot]:
    return [s for s in snaps if s.kind is Kind.FULL]


def deltas(snaps) -> list[Snapshot]:
    return [s for s in snaps if s.kind is Kind.INCR]


def restore_with_cli(tmp_path: Path, name: str, store_flags: list[str], env: dict) -> Path:
    """Run ``restore`` (in-process, as the CLI) into ``tmp_path/<name>.etcd``; the data dir."""
    from click.testing import CliRunner

    import snapshot_factory as sf
    from etcdbr.cli.main import cli

    data_dir = tmp_path / f"{name}.etcd"
    result = CliRunner().invoke(cli, [
        "restore", f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={tmp_path / (name + '-tmp')}",
        f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={name}", f"--initial-cluster={name}=http://localhost:2380",
        *store_flags], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return data_dir


def keyspace(data_dir: Path):
    """The keyspace and revision of a data dir, read through a temporary etcd serving it."""
    import snapshot_factory as sf

    server = sf.serve(data_dir, sf.etcd_bin_dir())
    try:
        return sf.dump(server.client_url)
    finally:
        server.cleanup()
