"""``--config-file`` in the Go etcdbrctl's nested format (its server's BackupRestoreComponentConfig):
every section the Go server reads, mapped onto this tool's settings, with the Go tool's precedence
(the file's values win over flags and environment), and errors naming the file's key."""

from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner

from etcdbr.cli import cmd_server
from etcdbr.cli.goconfig import SCALARS, SECTIONS
from etcdbr.cli.main import cli
from etcdbr.cli.options import resolve
from etcdbr.config import Config

# Every setting of the Go server's config file, in the Go tool's format (keys as its structs'
# JSON tags, pkg/server/types.go and pkg/types/*.go), with values that differ from the defaults.
GO_FILE = """\
etcdConnectionConfig:
  endpoints:
  - "http://10.0.0.1:2379"
  - "http://10.0.0.2:2379"
  serviceEndpoints: ["http://etcd-client:2379"]
  username: admin
  password: s3cret-from-file
  connectionTimeout: 11s
  snapshotTimeout: 9m
  defragTimeout: 7m
  insecureTransport: false
  insecureSkipVerify: true
  certFile: /certs/tls.crt
  keyFile: /certs/tls.key
  caFile: /certs/ca.crt
  maxCallSendMsgSize: 1048576
serverConfig:
  port: 9090
  enableProfiling: true
  server-cert: /srv/tls.crt
  server-key: /srv/tls.key
snapshotterConfig:
  schedule: "*/30 * * * *"
  garbageCollectionPolicy: LimitBased
  deltaSnapshotPeriod: 45s
  deltaSnapshotMemoryLimit: 20971520
  garbageCollectionPeriod: 2m
  maxBackups: 9
  deltaSnapshotRetentionPeriod: 48h
snapstoreConfig:
  provider: S3
  container: go-bucket
  endpointOverride: http://minio:9000
  prefix: etcd-main
  tempDir: /var/tmp/etcdbr
  maxParallelChunkUploads: 7
  minChunkSize: 6291456
secondarySnapstoreConfig:
  StoreConfig:
    provider: GCS
    container: second-bucket
    prefix: etcd-second
    envPrefix: SECONDARY_
  backupSyncEnabled: true
  syncPeriod: 3m
compressionConfig:
  enabled: true
  policy: zlib
restorationConfig:
  initialCluster: "etcd-0=http://etcd-0:2380"
  initialClusterToken: tok-1
  dataDir: /var/etcd/data/new.etcd
  tempDir: /var/etcd/restoration.temp
  name: etcd-0
  autoCompactionMode: revision
  autoCompactionRetention: "1000"
  initialAdvertisePeerURLs: ["http://etcd-0:2380"]
  MaxTxnOps: 5000
  MaxRequestBytes: 4194304
  maxCallSendMsgSize: 16777216
  embeddedEtcdQuotaBytes: 4294967296
  maxFetchers: 3
  skipHashCheck: true
healthConfig:
  snapshotLeaseRenewalEnabled: true
  memberLeaseRenewalEnabled: true
  heartbeatDuration: 15s
  fullSnapshotLeaseName: etcd-main-full-snap
  deltaSnapshotLeaseName: etcd-main-delta-snap
leaderElectionConfig:
  reelectionPeriod: 7s
  etcdConnectionTimeout: 4s
exponentialBackoffConfig:
  multiplier: 3
  attemptLimit: 4
  thresholdTime: 2m
defragmentationSchedule: "0 1 * * 0"
useEtcdWrapper: true
"""


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("STORAGE_PREFIX", "STORAGE_CONTAINER", "STORAGE_PROVIDER", "SECONDARY_STORAGE_PROVIDER",
                "SECONDARY_STORAGE_CONTAINER", "SECONDARY_STORAGE_PREFIX", "ETCD_PASSWORD", "ETCD_USERNAME",
                "STORAGE_ENDPOINT_OVERRIDE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def server_config(args) -> Config:
    ctx = cmd_server.command.make_context("server", list(args))
    return resolve(ctx, *cmd_server.GROUPS, "compat", "logging", extra=cmd_server.EXTRA)


def test_every_section_of_the_go_file_sets_its_setting(tmp_path, clean_env):
    conf = tmp_path / "go.yaml"
    conf.write_text(GO_FILE)
    c = server_config([f"--config-file={conf}"])
    assert c.etcd.endpoints == ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
    assert c.etcd.service_endpoints == ["http://etcd-client:2379"]
    assert (c.etcd.username, c.etcd.password) == ("admin", "s3cret-from-file")
    assert (c.etcd.connection_timeout, c.etcd.snapshot_timeout, c.etcd.defrag_timeout) == (
        timedelta(seconds=11), timedelta(minutes=9), timedelta(minutes=7))
    assert (c.etcd.insecure_transport, c.etcd.insecure_skip_tls_verify) == (False, True)
    assert (c.etcd.cert, c.etcd.key, c.etcd.cacert) == ("/certs/tls.crt", "/certs/tls.key", "/certs/ca.crt")
    assert (c.server.port, c.server.enable_profiling, c.server.server_cert, c.server.server_key) == (
        9090, True, "/srv/tls.crt", "/srv/tls.key")
    s = c.snapshotter
    assert (s.schedule, s.garbage_collection_policy, s.delta_snapshot_period, s.delta_snapshot_memory_limit) == (
        "*/30 * * * *", "LimitBased", timedelta(seconds=45), 20971520)
    assert (s.garbage_collection_period, s.max_backups, s.delta_snapshot_retention_period) == (
        timedelta(minutes=2), 9, timedelta(hours=48))
    assert (s.compress_snapshots, s.compression_policy) == (True, "zlib")
    assert (s.backoff_multiplier, s.backoff_attempt_limit, s.backoff_threshold_time) == (3, 4, timedelta(minutes=2))
    assert s.defragmentation_schedule == "0 1 * * 0"
    st = c.store
    assert (st.provider, st.container, st.endpoint_override, st.prefix) == (
        "S3", "go-bucket", "http://minio:9000", "etcd-main")
    assert (st.temp_dir, st.max_parallel_chunk_uploads, st.min_chunk_size) == ("/var/tmp/etcdbr", 7, 6291456)
    assert (c.secondary.provider, c.secondary.container, c.secondary.prefix) == ("GCS", "second-bucket", "etcd-second")
    assert (c.sync.enabled, c.sync.period) == (True, timedelta(minutes=3))
    r = c.restoration
    assert (r.initial_cluster, r.initial_cluster_token, r.data_dir, r.temp_snapshots_dir, r.name) == (
        "etcd-0=http://etcd-0:2380", "tok-1", "/var/etcd/data/new.etcd", "/var/etcd/restoration.temp", "etcd-0")
    assert (r.auto_compaction_mode, r.auto_compaction_retention, r.initial_advertise_peer_urls) == (
        "revision", "1000", ["http://etcd-0:2380"])
    assert (r.max_txn_ops, r.max_request_bytes, r.max_call_send_message_size) == (5000, 4194304, 16777216)
    assert (r.embedded_etcd_quota_bytes, r.max_fetchers, r.skip_hash_check) == (4294967296, 3, True)
    assert c.server.reelection_period == timedelta(seconds=7)
    assert c.extra["compat"] == {
        "enable-snapshot-lease-renewal": True, "enable-member-lease-renewal": True,
        "k8s-heartbeat-duration": timedelta(seconds=15), "full-snapshot-lease-name": "etcd-main-full-snap",
        "delta-snapshot-lease-name": "etcd-main-delta-snap",
        "etcd-connection-timeout-leader-election": timedelta(seconds=4), "use-etcd-wrapper": True}
    assert c.extra["origins"]["delta-snapshot-period"] == "'snapshotterConfig.deltaSnapshotPeriod' in --config-file"


def test_the_test_file_covers_every_section_the_go_server_reads():
    import yaml

    data = yaml.safe_load(GO_FILE)
    assert set(data) == {*SECTIONS, *SCALARS}
    for name, fields in SECTIONS.items():
        keys = set(data[name]) - {"StoreConfig"}
        assert keys >= {k for k, flag in fields.items() if flag is not None}, name


def test_the_file_wins_over_flags_and_environment_as_with_the_go_tool(tmp_path, clean_env):
    conf = tmp_path / "go.yaml"
    conf.write_text("snapstoreConfig:\n  provider: Local\n  container: from-file\n"
                    "snapshotterConfig:\n  deltaSnapshotPeriod: 45s\n")
    clean_env.setenv("STORAGE_CONTAINER", "from-env")
    c = server_config(["--delta-snapshot-period=5s", "--store-prefix=from-flag", f"--config-file={conf}"])
    assert c.store.container == "from-file"                      # over the environment
    assert c.snapshotter.delta_snapshot_period == timedelta(seconds=45)   # over the flag
    assert c.store.prefix == "from-flag"                         # the file does not set it
    assert sorted(c.extra["overridden"]) == [
        "--delta-snapshot-period (set by 'snapshotterConfig.deltaSnapshotPeriod' in --config-file)",
        "its environment variable (set by 'snapstoreConfig.container' in --config-file)"]


def test_the_override_is_logged_as_a_warning(tmp_path, clean_env):
    conf = tmp_path / "go.yaml"
    conf.write_text("snapstoreConfig:\n  container: from-file\nrestorationConfig:\n  restoreDataDir: default.etcd\n")
    (tmp_path / "from-file").mkdir()  # a read-only command creates no store
    result = CliRunner().invoke(cli, ["snapshot", "list", "--store-container=from-flag", f"--config-file={conf}",
                                      f"--store-prefix={tmp_path}/p"], env={"HOME": str(tmp_path)})
    assert result.exit_code == 0, result.stderr
    assert ("WARN: --config-file (the Go tool's format) wins over --store-container (set by "
            "'snapstoreConfig.container' in --config-file)") in result.stderr
    # a key the Go tool does not read (its own example file has this one) is ignored, with a WARN
    assert "'restorationConfig.restoreDataDir' is no setting the Go tool reads; ignored" in result.stderr
    assert "Local/from-file" in result.stdout


@pytest.mark.parametrize("text, message", [
    ("snapshotterConfig:\n  deltaSnapshotPeriod: soon\n",
     "invalid value 'soon' for 'snapshotterConfig.deltaSnapshotPeriod' in --config-file: expected a duration"),
    ("snapstoreConfig:\n  provider: Swift\n",
     "invalid value 'Swift' for 'snapstoreConfig.provider' in --config-file: expected one of Local, S3, GCS, ABS"),
    ("restorationConfig:\n  maxFetchers: -2\n",
     "invalid value '-2' for 'restorationConfig.maxFetchers' in --config-file"),
    ("snapshotterConfig: 5\n", "--config-file: 'snapshotterConfig' must be a mapping (the Go tool's format)"),
    ("secondarySnapstoreConfig:\n  StoreConfig:\n    maxParallelChunkUploads: x\n",
     "'secondarySnapstoreConfig.StoreConfig.maxParallelChunkUploads' in --config-file"),
])
def test_a_bad_value_is_one_line_naming_the_files_key(text, message, tmp_path, clean_env):
    conf = tmp_path / "go.yaml"
    conf.write_text(text)
    result = CliRunner().invoke(cli, ["server", f"--config-file={conf}"])
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_keys_match_whatever_their_case_as_go_json_does(tmp_path, clean_env):
    conf = tmp_path / "go.yaml"
    conf.write_text("SnapshotterConfig:\n  DeltaSnapshotPeriod: 33s\nrestorationConfig:\n  maxTxnOps: 77\n")
    c = server_config([f"--config-file={conf}"])
    assert c.snapshotter.delta_snapshot_period == timedelta(seconds=33) and c.restoration.max_txn_ops == 77


def test_restore_takes_what_it_has_flags_for_from_a_server_file(tmp_path, clean_env):
    conf = tmp_path / "go.yaml"
    conf.write_text(GO_FILE)
    from etcdbr.cli import cmd_restore

    ctx = cmd_restore.command.make_context("restore", [f"--config-file={conf}"])
    c = resolve(ctx, *cmd_restore.GROUPS, "logging", extra=getattr(cmd_restore, "EXTRA", None))
    assert c.restoration.data_dir == "/var/etcd/data/new.etcd" and c.store.container == "go-bucket"
    assert c.restoration.max_fetchers == 3


def test_the_flat_format_keeps_its_precedence(tmp_path, clean_env):
    conf = tmp_path / "flat.yaml"
    conf.write_text("delta-snapshot-period: 45s\n")
    c = server_config(["--delta-snapshot-period=5s", f"--config-file={conf}"])
    assert c.snapshotter.delta_snapshot_period == timedelta(seconds=5) and c.extra["overridden"] == []
