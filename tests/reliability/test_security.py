"""Secrets never leave the process, and private files are private.

Sentinel secrets are planted in every credential the tool reads - the S3 secret key and SSE-C key,
the Azure storage key, the etcd password, a GCS service account's private key, the HTTPS server key
- and then EVERYTHING the process emits is searched for them: its whole log at debug level, every
HTTP answer (bodies and headers of /config, /metrics, /sync/status, the snapshot endpoints), and
its error messages, with failures provoked on purpose (credentials rotated to wrong ones, servers
refusing them). A secret counts as leaked in raw form and in base64.
"""

from __future__ import annotations

import base64
import io
import json
import os
import ssl
import stat
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from etcdbr.config import StoreConfig
from etcdbr.snapshot import Kind
from etcdbr.snapstore import open_store
from reliability.helpers import full_payload, gz, run_cli, snap, wait_for

NO_SCHEDULED_FULL = "0 0 1 1 *"


def _forms(secret: str) -> list[str]:
    """The ways a secret could show up: as is, and base64-encoded (as in an SSE-C header)."""
    forms = [secret]
    if len(secret) >= 8:  # base64 of a short string would match by chance
        forms.append(base64.b64encode(secret.encode()).decode().rstrip("="))
    return forms


def assert_no_secret(text: str, secrets: dict[str, str], where: str) -> None:
    for name, secret in secrets.items():
        for form in _forms(secret):
            at = text.find(form)
            assert form not in text, f"{name} leaked in {where}: ...{text[max(0, at - 120):at + 40]}..."


def _pem_secret_lines(pem: bytes) -> list[str]:
    """The base64 body lines of a PEM private key (the part that is secret)."""
    return [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----") and len(ln) > 20]


def _self_signed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_path.write_bytes(pem)
    os.chmod(key_path, 0o600)
    return cert_path, key_path, pem




@pytest.mark.integration
def test_server_at_debug_level_emits_no_secret(tmp_path, etcd_factory, s3_server, s3_bucket, azurite_server,
                                               abs_container, servers, outcome):
    from integration.server_helpers import EtcdWriter, ServerProcess

    etcd_password = f"etcd-pw-SENTINEL-{uuid.uuid4().hex}"
    ssec_key = uuid.uuid4().hex  # 32 characters: an AES-256 key
    wrong_secret = f"rotated-wrong-SENTINEL-{uuid.uuid4().hex}"
    etcd = etcd_factory()
    etcd.etcdctl("user", "add", f"root:{etcd_password}")
    etcd.etcdctl("auth", "enable")
    cert, key, key_pem = _self_signed(tmp_path)
    s3_creds = tmp_path / "s3.json"

    def write_s3(secret: str) -> None:
        tmp = s3_creds.with_suffix(".tmp")
        tmp.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": secret,
                                   "region": s3_server.region, "sseCustomerKey": ssec_key,
                                   "sseCustomerAlgorithm": "AES256"}))
        tmp.replace(s3_creds)

    write_s3(s3_server.secret_key)
    abs_creds = tmp_path / "azure.json"
    abs_creds.write_text(json.dumps({"storageAccount": azurite_server.account, "storageKey": azurite_server.key}))
    env = {"AWS_APPLICATION_CREDENTIALS_JSON": str(s3_creds),
           "SECONDARY_AZURE_APPLICATION_CREDENTIALS_JSON": str(abs_creds),
           "ETCD_PASSWORD": etcd_password}
    secrets = {"etcd password": etcd_password, "S3 secret key": s3_server.secret_key, "SSE-C key": ssec_key,
               "rotated S3 secret": wrong_secret, "Azure storage key": azurite_server.key,
               **{f"TLS key line {i}": ln for i, ln in enumerate(_pem_secret_lines(key_pem))}}
    context = ssl.create_default_context(cafile=str(cert))
    server = ServerProcess(tmp_path, [
        "--endpoints", etcd.client_url, "--etcd-username", "root",
        "--storage-provider", "S3", "--store-container", s3_bucket, "--store-prefix", "sec",
        "--store-endpoint-override", s3_server.endpoint,
        "--secondary-storage-provider", "ABS", "--secondary-store-container", abs_container,
        "--secondary-store-prefix", "sec", "--secondary-store-endpoint-override", azurite_server.endpoint,
        "--backup-sync-enabled", "true", "--backup-sync-period", "2s",
        "--schedule", NO_SCHEDULED_FULL, "--delta-snapshot-period", "1s", "--reelection-period", "1.1s",
        "--server-cert", str(cert), "--server-key", str(key), "--log-level", "debug",
    ], env, tls_context=context)
    servers.append(server.start())
    seen: list[str] = []

    def get(path: str) -> int:
        status, headers, body = server.get(path)
        seen.append(f"GET {path} -> {status}\n{json.dumps(headers)}\n{body.decode(errors='replace')}")
        return status

    server.wait_healthy(90)
    writer = EtcdWriter(etcd.client_url, "sec/", rate=20, user="root", password=etcd_password)
    writer.start()
    try:
        time.sleep(1.5)
        assert get("/snapshot/full") == 200
        time.sleep(1.2)
        get("/snapshot/delta")
        for path in ("/healthz", "/config", "/effective-config", "/effective-config?format=json", "/metrics",
                     "/snapshot/latest", "/sync/status", "/initialization/status", "/no-such-path"):
            get(path)
        # The secondary really was written with the Azure key (the sync path was exercised).
        container = azurite_server.client().get_container_client(abs_container)
        wait_for(lambda: any(True for _ in container.list_blobs(name_starts_with="sec/v2/")), 30, what="a copy on ABS")
        # SSE-C really was used: without the key the object cannot be read.
        client = s3_server.client()
        first = client.list_objects_v2(Bucket=s3_bucket, Prefix="sec/v2/")["Contents"][0]["Key"]
        with pytest.raises(ClientError):
            client.get_object(Bucket=s3_bucket, Key=first)
        # Now the failure paths: the S3 secret is rotated to one the server refuses.
        write_s3(wrong_secret)
        assert get("/snapshot/full") >= 500
        get("/snapshot/latest")
        get("/sync/status")
        get("/metrics")
        time.sleep(2.5)  # a failing delta and a failing sync run get logged
    finally:
        writer.stop()
    code = server.terminate(timeout=60)
    log = server.log_text()
    assert "access refused" in log or "credentials refused" in log, "the failure path was not exercised"
    assert "credentials changed; store clients rebuilt" in log
    assert_no_secret(log, secrets, "the server log (debug level)")
    for answer in seen:
        assert_no_secret(answer, secrets, answer.splitlines()[0])
    assert code == 0, server.tail()
    outcome.record("fault", "S3 credentials file rotated on disk while `server` runs", "`server` (console script)",
                   "picked up on the next store call without restart (log: credentials changed; store clients "
                   "rebuilt); failures then name the store and the refusal")
    outcome.record("security", "S3 secret key, SSE-C key, Azure storage key, etcd password and HTTPS key planted; "
                   "server at --log-level=debug, HTTPS, dual endpoint, then S3 credentials rotated to refused ones",
                   "`server` (log, /config, /metrics, /sync/status, snapshot endpoints, errors)",
                   f"no secret in {len(log.splitlines())} log lines or {len(seen)} HTTP answers; clean exit on SIGTERM")


@pytest.mark.integration
def test_failing_commands_emit_no_secret(tmp_path, s3env, gcs_server, gcs_bucket, azurite_server, abs_container,
                                         etcd_factory, outcome):
    """Each credential wrong in its own way, each command failing at debug level: the error lines
    name what is wrong, never the secret."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    store = s3env.store()
    store.save(snap(store, Kind.FULL, 0, 10), io.BytesIO(gz(full_payload())))
    outputs: dict[str, str] = {}
    secrets: dict[str, str] = {}

    # S3: a secret the server refuses.
    bad_secret = f"s3-wrong-SENTINEL-{uuid.uuid4().hex}"
    secrets["wrong S3 secret"] = bad_secret
    s3env.write_credentials(secret=bad_secret)
    r = run_cli(["verify", "--log-level=debug", *s3env.cli_args()], env=s3env.env())
    assert r.code == 2  # a refused credential (README: exit 2)
    outputs["verify with a refused S3 secret"] = r.output

    # S3 SSE-C: objects written with one key, read with another.
    key_a, key_b = uuid.uuid4().hex, uuid.uuid4().hex
    secrets.update({"SSE-C key A": key_a, "SSE-C key B": key_b, "S3 secret key": s3env.server.secret_key})
    s3env.write_credentials(sseCustomerKey=key_a)
    enc = s3env.store(prefix="ssec")
    enc.save(snap(enc, Kind.FULL, 0, 10), io.BytesIO(gz(full_payload())))
    s3env.write_credentials(sseCustomerKey=key_b)
    r = run_cli(["verify", "--log-level=debug", *s3env.cli_args(prefix="ssec")], env=s3env.env())
    assert r.code == 1  # the store opens; verify reports the object it may not read as a defect
    outputs["verify with the wrong SSE-C key"] = r.output

    # GCS: a service account whose token endpoint refuses it (as Google does a revoked key).
    import http.server

    class TokenRefused(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    token_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenRefused)
    threading.Thread(target=token_server.serve_forever, daemon=True).start()
    pkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    sa = tmp_path / "sa.json"
    sa.write_text(json.dumps({"type": "service_account", "project_id": "p", "private_key_id": "k1",
                              "private_key": pem, "client_email": "backup@p.iam.gserviceaccount.com",
                              "client_id": "1", "token_uri": f"http://127.0.0.1:{token_server.server_port}/token"}))
    secrets.update({f"GCS private key line {i}": ln for i, ln in enumerate(_pem_secret_lines(pem.encode()))})
    r = run_cli(["snapshot", "list", "--log-level=debug", "--storage-provider=GCS", f"--store-container={gcs_bucket}",
                 f"--store-endpoint-override={gcs_server.endpoint}"], env={"GOOGLE_APPLICATION_CREDENTIALS": str(sa)},
                timeout=120)
    token_server.shutdown()
    token_server.server_close()
    assert r.code != 0
    outputs["snapshot list with a refused GCS service account"] = r.output

    # ABS: a key the service refuses.
    bad_key = base64.b64encode(f"abs-SENTINEL-{uuid.uuid4().hex}".encode()).decode()
    secrets["wrong Azure key"] = bad_key
    secrets["Azure storage key"] = azurite_server.key
    creds = tmp_path / "azure.json"
    creds.write_text(json.dumps({"storageAccount": azurite_server.account, "storageKey": bad_key}))
    r = run_cli(["verify", "--log-level=debug", "--storage-provider=ABS", f"--store-container={abs_container}",
                 f"--store-endpoint-override={azurite_server.endpoint}"],
                env={"AZURE_APPLICATION_CREDENTIALS_JSON": str(creds)})
    assert r.code == 2  # a refused credential
    outputs["verify with a refused Azure key"] = r.output

    # etcd: a wrong password on a cluster with auth enabled.
    etcd = etcd_factory()
    good_pw, bad_pw = f"etcd-good-SENTINEL-{uuid.uuid4().hex}", f"etcd-bad-SENTINEL-{uuid.uuid4().hex}"
    secrets.update({"etcd password": good_pw, "wrong etcd password": bad_pw})
    etcd.etcdctl("user", "add", f"root:{good_pw}")
    etcd.etcdctl("auth", "enable")
    local = tmp_path / "local-store"
    proc = subprocess.Popen(
        [str(Path(os.sys.executable).with_name("etcd-backup-restore")), "snapshot", "--log-level=debug",
         "--endpoints", etcd.client_url, "--etcd-username", "root", "--etcd-password", bad_pw,
         "--storage-provider=Local", f"--store-container={local}", "--backoff-attempt-limit=2",
         "--backoff-threshold-time=1s", "--etcd-connection-timeout=2s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    # It retries with backoff; once the refusal is logged, SIGTERM ends it (its output is kept).
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "auth" in line.lower() and ("fail" in line.lower() or "error" in line.lower()):
            break
        if time.monotonic() > deadline:
            break
    proc.terminate()
    rest, _ = proc.communicate(timeout=30)
    out = "".join(lines) + rest
    assert "authentication failed" in out.lower() or "auth" in out.lower(), out[-2000:]
    outputs["snapshot with a wrong etcd password"] = out

    for what, text in outputs.items():
        assert "Traceback" not in text or "--log-level=debug" in what, what
        assert_no_secret(text, secrets, what)
    outcome.record("security", "wrong S3 secret, wrong SSE-C key, refused GCS service account, refused Azure key, "
                   "wrong etcd password; each command at --log-level=debug",
                   "`verify`, `snapshot list`, `snapshot`", f"{len(outputs)} failing runs; errors name the store "
                   "and the reason, no secret in any output")


# -- private files ---------------------------------------------------------------------------------
@pytest.fixture
def open_umask():
    """A permissive umask proves modes are set on purpose, not inherited."""
    old = os.umask(0)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_s3_ca_bundle_is_private(tmp_path, monkeypatch, open_umask, outcome):
    cert_path, _, _ = _self_signed(tmp_path)
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"accessKeyID": "a", "secretAccessKey": "b-secret-value",
                                 "trustedCaCert": cert_path.read_text()}))
    monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    store = open_store(StoreConfig(provider="S3", container="b", endpoint_override="https://127.0.0.1:9"))
    try:
        ca_dir = Path(store._ca_dir)
        files = list(ca_dir.iterdir())
        assert _mode(ca_dir) == 0o700 and files and all(_mode(f) == 0o600 for f in files)
    finally:
        store.close()
    assert not ca_dir.exists(), "the CA bundle outlived the store"
    outcome.record("security", "S3 trustedCaCert written to a temp file (umask 000)", "S3 store",
                   "directory 0700, file 0600, removed on close")


def test_local_store_staging_is_private(tmp_path, open_umask, outcome):
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="p"))
    modes: list[tuple[str, int]] = []

    class Watching(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self):
            return True

        def read(self, n=-1):
            staging = tmp_path / "bucket" / ".etcdbr-staging"
            if staging.exists():
                modes.append(("dir", _mode(staging)))
                modes.extend(("file", _mode(f)) for f in staging.iterdir())
            chunk = self.data[self.pos:self.pos + 4096]
            self.pos += len(chunk)
            return chunk

    store.save(snap(store, Kind.FULL, 0, 1), Watching(full_payload(pages=40)))
    assert ("dir", 0o700) in modes and ("file", 0o600) in modes
    assert all(m == (0o700 if kind == "dir" else 0o600) for kind, m in modes), modes
    outcome.record("security", "Local store upload staging (umask 000)", "Local store",
                   "staging directory 0700, upload file 0600 while being written")


@pytest.mark.integration
def test_restore_temp_files_are_private(tmp_path, etcd_server, open_umask, monkeypatch, outcome):
    """Snapshots downloaded for a restore sit in --restoration-temp-snapshots-dir: 0600 in 0700."""
    import snapshot_factory as sf
    from etcdbr.snapstore.local import LocalStore
    from reliability.helpers import invoke

    store_dir = tmp_path / "bucket"
    store = open_store(StoreConfig(provider="Local", container=str(store_dir), prefix="perm"))
    factory = sf.SnapshotFactory(etcd_server.client_url)
    sf.run_workload(etcd_server.client_url, 60, seed=3, prefix=b"perm/a/")
    full = factory.full(store, "gzip")
    sf.run_workload(etcd_server.client_url, 90, seed=4, prefix=b"perm/b/")
    factory.deltas(store, full, parts=3)
    temp_root = tmp_path / "restore-tmp"
    seen: list[tuple[str, str, int]] = []
    original = LocalStore._open_read

    def look() -> None:
        if temp_root.exists():
            for path in [temp_root, *temp_root.rglob("*")]:
                try:  # the restore removes applied deltas meanwhile
                    seen.append(("dir" if path.is_dir() else "file", path.name, _mode(path)))
                except FileNotFoundError:
                    pass

    def watching_open(self, key):
        look()
        return original(self, key)

    from etcdbr.restore import deltas as deltas_mod

    decode = deltas_mod.decode_groups

    def watching_decode(path, where):  # a downloaded delta, complete, about to be read
        look()
        return decode(path, where)

    monkeypatch.setattr(LocalStore, "_open_read", watching_open)
    monkeypatch.setattr(deltas_mod, "decode_groups", watching_decode)
    result = invoke(["restore", "--storage-provider=Local", f"--store-container={store_dir}", "--store-prefix=perm",
                     f"--data-dir={tmp_path / 'default.etcd'}", f"--restoration-temp-snapshots-dir={temp_root}",
                     f"--etcd-bin-dir={sf.etcd_bin_dir()}", "--max-fetchers=1"])
    assert result.code == 0, result.output
    files = [s for s in seen if s[0] == "file"]
    assert any(name.startswith("delta-") for _, name, _ in files), f"no downloaded snapshot was seen: {seen}"
    bad = [s for s in seen if s[2] != (0o700 if s[0] == "dir" else 0o600)]
    assert not bad, bad
    assert not temp_root.exists() or not any(temp_root.iterdir()), "restore left temp files behind"
    outcome.record("security", "restore temp files (umask 000)", "`restore`",
                   f"{len(files)} downloaded snapshot file(s) seen: all 0600 in 0700 directories; removed afterwards")
