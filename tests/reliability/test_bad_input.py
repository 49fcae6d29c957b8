"""Bad input: malformed invocations, files and environments end in ONE clear error line and the
documented exit code (2: flags, environment, config file, credentials; 1: operational failure),
never a traceback.

A representative subset runs the installed console script as a subprocess, exactly as an operator
would; the rest goes through click's CliRunner (same code after argument parsing, much faster).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from etcdbr.config import StoreConfig
from etcdbr.snapshot import Kind
from etcdbr.snapstore import open_store
from reliability.helpers import full_payload, invoke, run_cli, save_chain, snap


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str                      # a fragment the error line must contain
    code: int = 2
    env: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)   # name -> content, created in a temp dir ({tmp} in args/env)
    subprocess: bool = False


CRON = "0 */1 * * *"
CASES = [
    # -- providers and containers
    Case("unknown provider", ["snapshot", "list", "--storage-provider=Foo"], "--storage-provider", subprocess=True),
    Case("provider in the wrong case", ["verify", "--storage-provider=s3"], "case-sensitive"),
    Case("provider of the Go tool not supported here", ["snapshot", "list", "--storage-provider=Swift"],
         "not supported"),
    Case("S3 without a bucket", ["snapshot", "list", "--storage-provider=S3"], "needs a bucket", subprocess=True),
    Case("GCS without a bucket", ["verify", "--storage-provider=GCS"], "needs a bucket"),
    Case("secondary provider unknown", ["server", "--secondary-storage-provider=Nope"], "--secondary-storage-provider"),
    # -- sizes and counts
    Case("negative min chunk size", ["snapshot", "list", "--min-chunk-size=-5"], "--min-chunk-size"),
    Case("min chunk size under 5 MiB", ["snapshot", "list", "--min-chunk-size=1048576"], "5 MiB", subprocess=True),
    Case("non-numeric min chunk size", ["verify", "--min-chunk-size=lots"], "an integer"),
    Case("zero parallel chunk uploads", ["snapshot", "list", "--max-parallel-chunk-uploads=0"], "> 0"),
    Case("zero restore fetchers", ["restore", "--max-fetchers=0"], "--max-fetchers"),
    Case("negative embedded etcd quota", ["restore", "--embedded-etcd-quota-bytes=-1"], "--embedded-etcd-quota-bytes"),
    Case("zero parallel copy operations", ["copy", "--max-parallel-copy-operations=0"], "> 0"),
    Case("non-numeric backup age", ["copy", "--max-backup-age=old"], "--max-backup-age"),
    Case("zero parallel verify reads", ["verify", "--max-parallel-reads=0"], "--max-parallel-reads"),
    Case("server port out of range", ["server", "--server-port=99999"], "--server-port", subprocess=True),
    Case("negative server port", ["server", "--server-port=-1"], "--server-port"),
    # -- durations, cron strings, booleans, choices
    Case("cron minute out of range", ["snapshot", f"--schedule=61 {CRON[2:]}"], "--schedule", subprocess=True),
    Case("cron with three fields", ["server", "--schedule=* * *"], "5-field cron"),
    Case("bad defragmentation cron", ["snapshot", "--defragmentation-schedule=every day"],
         "--defragmentation-schedule"),
    Case("duration with unknown unit", ["snapshot", "--delta-snapshot-period=5x"], "duration", subprocess=True),
    Case("zero connection timeout", ["snapshot", "--etcd-connection-timeout=0s"], "> 0"),
    Case("negative snapshot timeout", ["server", "--etcd-snapshot-timeout=-1m"], "--etcd-snapshot-timeout"),
    Case("zero backup sync period", ["server", "--backup-sync-period=0"], "--backup-sync-period"),
    Case("bad compact timeout", ["compact", "--etcd-snapshot-timeout=soon"], "--etcd-snapshot-timeout"),
    Case("bad boolean", ["snapshot", "--compress-snapshots=maybe"], "true or false", subprocess=True),
    Case("bad boolean for sync", ["server", "--backup-sync-enabled=yesplease"], "true or false"),
    Case("unknown compression policy", ["snapshot", "--compression-policy=bz2"], "--compression-policy"),
    Case("unknown GC policy", ["server", "--garbage-collection-policy=Weird"], "Exponential, LimitBased"),
    Case("unknown restore source", ["restore", "--restore-from=tertiary"], "primary, secondary, auto"),
    Case("unknown validation mode", ["initialize", "--validation-mode=paranoid"], "full, sanity"),
    Case("unknown auto-compaction mode", ["compact", "--auto-compaction-mode=sometimes"], "periodic, revision"),
    Case("unknown output format", ["verify", "--output=xml"], "table, json"),
    Case("unknown log level", ["restore", "--log-level=loud"], "--log-level"),
    # -- URLs
    Case("endpoint override without scheme", ["snapshot", "list", "--store-endpoint-override=s3.local"], "URL",
         subprocess=True),
    Case("endpoint override without host", ["verify", "--store-endpoint-override=http://"], "URL"),
    # -- TLS files
    Case("server certificate missing", ["server", "--server-cert={tmp}/none.pem", "--server-key={tmp}/none.key"],
         "--server-cert"),
    # -- config files
    Case("config file missing", ["verify", "--config-file={tmp}/missing.yaml"], "cannot read"),
    Case("config file not YAML", ["server", "--config-file={tmp}/bad.yaml"], "not valid YAML",
         files={"bad.yaml": "store-prefix: [unclosed\n"}, subprocess=True),
    Case("config file not a mapping", ["verify", "--config-file={tmp}/list.yaml"], "mapping",
         files={"list.yaml": "- a\n- b\n"}),
    Case("config file with an unknown key", ["restore", "--config-file={tmp}/unk.yaml"], "unknown key",
         files={"unk.yaml": "no-such-flag: 1\n"}),
    Case("config file with a bad value", ["verify", "--config-file={tmp}/small.yaml"], "in --config-file",
         files={"small.yaml": "min-chunk-size: 12\n"}),
    # -- environment
    Case("provider from the environment in the wrong case", ["snapshot", "list"], "STORAGE_PROVIDER",
         env={"STORAGE_PROVIDER": "s3"}),
    Case("endpoint override from the environment malformed", ["verify"], "STORAGE_ENDPOINT_OVERRIDE",
         env={"STORAGE_ENDPOINT_OVERRIDE": "::bad"}),
    # -- credentials
    Case("S3 credentials file missing", ["verify", "--storage-provider=S3", "--store-container=b"], "cannot read",
         env={"AWS_APPLICATION_CREDENTIALS_JSON": "{tmp}/absent.json"}, subprocess=True),
    Case("S3 credentials file malformed", ["verify", "--storage-provider=S3", "--store-container=b"], "not valid JSON",
         env={"AWS_APPLICATION_CREDENTIALS_JSON": "{tmp}/c.json"}, files={"c.json": '{"accessKeyID": "x", '}),
    Case("S3 credentials file not an object", ["verify", "--storage-provider=S3", "--store-container=b"],
         "JSON object", env={"AWS_APPLICATION_CREDENTIALS_JSON": "{tmp}/c.json"}, files={"c.json": "[1, 2]"}),
    Case("S3 credentials lacking the secret", ["snapshot", "list", "--storage-provider=S3", "--store-container=b"],
         "lack", env={"AWS_APPLICATION_CREDENTIALS_JSON": "{tmp}/c.json"}, files={"c.json": '{"accessKeyID": "a"}'}),
    Case("S3 credentials directory missing", ["verify", "--storage-provider=S3", "--store-container=b"], "directory",
         env={"AWS_APPLICATION_CREDENTIALS": "{tmp}/nodir"}),
    Case("S3 SSE-C algorithm without a key", ["verify", "--storage-provider=S3", "--store-container=b"],
         "sseCustomerKey", env={"AWS_APPLICATION_CREDENTIALS_JSON": "{tmp}/c.json"},
         files={"c.json": '{"accessKeyID": "a", "secretAccessKey": "b", "sseCustomerAlgorithm": "AES256"}'}),
    Case("GCS credentials file malformed", ["verify", "--storage-provider=GCS", "--store-container=b"], "JSON",
         env={"GOOGLE_APPLICATION_CREDENTIALS": "{tmp}/g.json"}, files={"g.json": "{nope"}),
    Case("ABS credentials incomplete", ["verify", "--storage-provider=ABS", "--store-container=b"], "storageKey",
         env={"AZURE_APPLICATION_CREDENTIALS_JSON": "{tmp}/a.json"}, files={"a.json": '{"storageAccount": "x"}'}),
    Case("ABS key not base64", ["verify", "--storage-provider=ABS", "--store-container=b"], "base64",
         env={"AZURE_APPLICATION_CREDENTIALS_JSON": "{tmp}/a.json"},
         files={"a.json": '{"storageAccount": "x", "storageKey": "not base64!"}'}),
    # -- usage
    Case("unknown flag", ["verify", "--no-such-flag"], "No such option"),
    Case("unknown command", ["bogus-command"], "No such command"),
]


def _materialise(case: Case, tmp: Path) -> tuple[list[str], dict]:
    for name, content in case.files.items():
        (tmp / name).write_text(content)
    def sub(s):
        return s.replace("{tmp}", str(tmp))

    return [sub(a) for a in case.args], {k: sub(v) for k, v in case.env.items()}


def _check_one_error_line(result, case: Case) -> str:
    assert "Traceback" not in result.output, result.output
    assert result.code == case.code, f"exit {result.code}, expected {case.code}: {result.output}"
    lines = result.error_lines()
    assert len(lines) == 1, f"expected one error line, got {lines!r} in {result.output!r}"
    assert case.expect in lines[0], f"{case.expect!r} not in {lines[0]!r}"
    assert "internal error" not in lines[0], lines[0]
    # Nothing but the error (and log lines) on stderr: no usage block, no third-party warning.
    noise = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("error:")]
    assert all(" INFO: " in ln or " WARN: " in ln for ln in noise), noise
    return lines[0]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("AWS_APPLICATION_CREDENTIALS", "AWS_APPLICATION_CREDENTIALS_JSON", "GOOGLE_APPLICATION_CREDENTIALS",
                "AZURE_APPLICATION_CREDENTIALS", "AZURE_APPLICATION_CREDENTIALS_JSON", "STORAGE_EMULATOR_HOST",
                "STORAGE_PROVIDER", "STORAGE_CONTAINER", "STORAGE_ENDPOINT_OVERRIDE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30
    assert sum(c.subprocess for c in CASES) >= 8
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path, clean_env, outcome):
    args, env = _materialise(case, tmp_path)
    if case.subprocess:
        result = run_cli(args, env=env, home=clean_env)
        how = "console script"
    else:
        result = invoke(args, env=env)
        how = "CliRunner"
    line = _check_one_error_line(result, case)
    outcome.record("bad-input", case.id, f"`{args[0]}` ({how})", f"exit {result.code}: {line}")


# -- bad files in a store (operational failures: exit 1, the object named) ---------------------------
@pytest.fixture
def bin_dir():
    import snapshot_factory

    return snapshot_factory.etcd_bin_dir()


def _restore_args(store_dir: Path, tmp: Path, bin_dir) -> list[str]:
    return ["restore", "--storage-provider=Local", f"--store-container={store_dir}", "--store-prefix=etcd",
            f"--data-dir={tmp / 'member.etcd'}", f"--restoration-temp-snapshots-dir={tmp / 'restore-tmp'}",
            f"--etcd-bin-dir={bin_dir}"]


@pytest.mark.parametrize("what", ["not-etcd", "unknown-suffix", "bad-trailer"])
def test_restore_from_a_bad_object_names_it_and_keeps_the_data_dir(tmp_path, clean_env, bin_dir, outcome, what):
    store_dir = tmp_path / "bucket"
    store = open_store(StoreConfig(provider="Local", container=str(store_dir), prefix="etcd"))
    if what == "not-etcd":
        bad = snap(store, Kind.FULL, 0, 100, suffix="")
        store.save(bad, io.BytesIO(b"<html>this is not an etcd snapshot</html>\n" * 50))
        expect = bad.snap_name
    elif what == "unknown-suffix":
        bad = snap(store, Kind.FULL, 0, 100, suffix=".bz2")
        store.save(bad, io.BytesIO(full_payload()))
        expect = "unknown compression suffix"
    else:
        # One page and a 32-byte trailer that is not its SHA-256.
        bad = snap(store, Kind.FULL, 0, 100, suffix="")
        store.save(bad, io.BytesIO(b"\0" * 512 + b"x" * 32))
        expect = bad.snap_name
    data_dir = tmp_path / "member.etcd"
    (data_dir / "member").mkdir(parents=True)
    (data_dir / "member" / "marker").write_text("old data")
    # --replace-data-dir: the old data dir (not an etcd data dir) may be replaced, once a restore completes
    result = run_cli([*_restore_args(store_dir, tmp_path, bin_dir), "--replace-data-dir"], home=clean_env, timeout=120)
    assert "Traceback" not in result.output
    assert result.code == 1, result.output
    lines = result.error_lines()
    assert len(lines) == 1 and expect in lines[0], result.output
    assert (data_dir / "member" / "marker").read_text() == "old data"
    assert not (tmp_path / "member.etcd.part").exists()
    label = {"not-etcd": "is not an etcd snapshot", "unknown-suffix": "has an unknown compression suffix",
             "bad-trailer": "has a wrong SHA-256 trailer"}[what]
    outcome.record("bad-input", f"restore from a store whose full snapshot {label}",
                   "`restore` (console script)", f"exit 1: {lines[0]}", "nothing (old data dir intact)")


def test_unparseable_names_in_a_bucket_are_skipped_with_a_warning(tmp_path, clean_env, outcome):
    store_dir = tmp_path / "bucket"
    store = open_store(StoreConfig(provider="Local", container=str(store_dir), prefix="etcd"))
    chain = save_chain(store)
    for stray in ("Full-xx-yy-zz", "Incr-00000200-00000100-1714564800.gz",
                  "Full-00000000-00000001-99999999999999999999",
                  "notes.txt"):
        (store_dir / "etcd" / "v2" / stray).write_text("?")
    result = run_cli(["snapshot", "list", "--storage-provider=Local", f"--store-container={store_dir}",
                      "--store-prefix=etcd", "--output=json"], home=clean_env)
    assert result.code == 0, result.output
    assert "Traceback" not in result.output
    listed = [s["snapName"] for s in json.loads(result.stdout)["snapshots"]]
    assert listed == [s.snap_name for s in chain]
    warnings = [ln for ln in result.stderr.splitlines() if "skipping object that is not a snapshot" in ln]
    assert len(warnings) == 4
    outcome.record("bad-input", "unparseable object names in the bucket (4 kinds, incl. an out-of-range time)",
                   "`snapshot list` (console script)",
                   "exit 0: one warning per stray object; every real snapshot still listed (`verify` exits 1 on them)")


@pytest.mark.integration
def test_unreachable_and_refusing_stores_fail_with_one_line(s3env, tmp_path, clean_env, outcome):
    from services import free_port

    dead = run_cli(["snapshot", "list", *s3env.cli_args(endpoint=f"http://127.0.0.1:{free_port()}")],
                   env=s3env.env(), home=clean_env)
    assert dead.code == 1 and len(dead.error_lines()) == 1 and "S3/" in dead.error_lines()[0], dead.output
    assert "Traceback" not in dead.output
    outcome.record("bad-input", "S3 endpoint with nothing listening", "`snapshot list` (console script)",
                   f"exit 1: {dead.error_lines()[0]}")
    s3env.write_credentials(secret="wrong-secret-0123456789")
    denied = run_cli(["verify", *s3env.cli_args()], env=s3env.env(), home=clean_env)
    assert denied.code == 2 and len(denied.error_lines()) == 1, denied.output
    assert "refused" in denied.error_lines()[0] or "denied" in denied.error_lines()[0].lower()
    assert "wrong-secret" not in denied.output
    outcome.record("bad-input", "S3 credentials refused by the server", "`verify` (console script)",
                   f"exit 2: {denied.error_lines()[0]}")
    s3env.write_credentials()
    missing = run_cli(["snapshot", "list", "--storage-provider=S3", "--store-container=no-such-bucket-here",
                       f"--store-endpoint-override={s3env.endpoint}"], env=s3env.env(), home=clean_env)
    assert missing.code == 1 and "does not exist" in missing.error_lines()[0], missing.output
    outcome.record("bad-input", "S3 bucket does not exist", "`snapshot list` (console script)",
                   f"exit 1: {missing.error_lines()[0]}")
