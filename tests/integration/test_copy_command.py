"""The ``copy`` command (Local stores, then real S3 with SOURCE_ credentials) and the example
commands of docs/dual-endpoint.md: each one parses, and the ones that need no cloud run."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
from datetime import datetime, timedelta, timezone
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from etcdbr.cli import cmd_copy
from etcdbr.cli.main import cli
from etcdbr.cli.options import add_options, resolve
from etcdbr.config import StoreConfig
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store
from etcdbr.snapstore.local import LocalStore

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "dual-endpoint.md"
NOW = datetime.now(timezone.utc).replace(microsecond=0)
FAST = ["--backup-sync-retry-backoff=1ms", "--backup-sync-max-retries=1"]


def local(home: Path, container: str, prefix: str = "") -> LocalStore:
    store = LocalStore(StoreConfig(provider="Local", container=container, prefix=prefix))
    assert store.root == home / container
    return store


def seed(store, specs) -> list:
    out = []
    for kind, start, last, age_days, final in specs:
        s = new_snapshot(kind, start, last, prefix=store.prefix, compression_suffix=".gz", is_final=final,
                         created_on=NOW - timedelta(days=age_days, minutes=-last))
        store.save(s, io.BytesIO(f"{s.snap_name}".encode() * 40))
        out.append(s)
    return out


def names(store) -> set[str]:
    return {s.snap_name for s in store.list()}


def invoke(*args, env=None):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result


BACKUPS = [
    (Kind.FULL, 0, 10, 20, False), (Kind.INCR, 11, 20, 20, False),
    (Kind.FULL, 0, 30, 3, False), (Kind.INCR, 31, 40, 3, False),
    (Kind.FULL, 0, 50, 0, True),
]


def test_copy_all_then_rerun_is_idempotent(tmp_home):
    src = local(tmp_home, "primary")
    seed(src, BACKUPS)
    result = invoke("copy", "--source-store-container=primary", "--store-container=secondary")
    assert result.exit_code == 0, result.stderr
    dst = local(tmp_home, "secondary")
    assert names(dst) == {n.removesuffix(".final") for n in names(src)}
    assert "Found 5 snapshots to copy and 0 to delete" in result.stderr
    assert "Successfully copied all 5 snapshots to secondary" in result.stderr
    assert "[5/5] copied" in result.stderr          # plain progress lines off a terminal
    assert "is in sync" in result.stdout
    again = invoke("copy", "--source-store-container=primary", "--store-container=secondary")
    assert again.exit_code == 0 and "Found 0 snapshots to copy and 0 to delete" in again.stderr


def test_dry_run_prints_plan_and_changes_nothing(tmp_home):
    src = local(tmp_home, "primary")
    snaps = seed(src, BACKUPS)
    dst = local(tmp_home, "secondary")
    seed(dst, [(Kind.FULL, 0, 5, 30, False)])
    before = names(dst)
    result = invoke("copy", "--source-store-container=primary", "--store-container=secondary", "--dry-run",
                    "--delete-orphans", "--backup-sync-max-delete-fraction=1")
    assert result.exit_code == 0, result.stderr
    assert names(dst) == before
    out = result.stdout
    for s in snaps:
        assert f"would copy   {s.key}" in out
    assert "would delete v2/Full-00000000-00000005-" in out
    assert "plan: 5 to copy, 1 to delete; nothing changed" in out


def test_filters_select_newest_backups(tmp_home):
    src = local(tmp_home, "primary")
    seed(src, BACKUPS)
    result = invoke("copy", "--source-store-container=primary", "--store-container=secondary",
                    "--max-backups-to-copy=2")
    assert result.exit_code == 0, result.stderr
    dst = local(tmp_home, "secondary")
    assert sorted((s.kind.value, s.last_revision) for s in dst.list()) == [("Full", 30), ("Full", 50), ("Incr", 40)]
    result = invoke("copy", "--source-store-container=primary", "--store-container=age", "--max-backup-age=7")
    assert result.exit_code == 0
    assert sorted(s.last_revision for s in local(tmp_home, "age").list()) == [30, 40, 50]


def test_source_inherits_destination_provider_and_prefix(tmp_home):
    src = local(tmp_home, "primary", prefix="cluster/a")
    seed(src, BACKUPS[:2])
    result = invoke("copy", "--storage-provider=Local", "--source-store-container=primary",
                    "--store-container=secondary", "--store-prefix=cluster/a")
    assert result.exit_code == 0, result.stderr
    assert len(local(tmp_home, "secondary", prefix="cluster/a").list()) == 2
    same = invoke("copy", "--source-store-container=primary", "--store-container=primary")
    assert same.exit_code == 2 and "same location" in same.stderr


def test_failed_copy_exits_non_zero_and_names_it(tmp_home):
    src = local(tmp_home, "primary")
    snaps = seed(src, BACKUPS[:2])
    # A directory where the copy must go (looks like a chunk leftover): the write cannot succeed.
    blocker = tmp_home / "secondary" / "v2" / snaps[0].snap_name
    blocker.mkdir(parents=True)
    (blocker / "0000000001").write_bytes(b"x")
    result = invoke("copy", "--source-store-container=primary", "--store-container=secondary", *FAST)
    assert result.exit_code == 1
    assert f"Failed to copy snapshot {snaps[0].snap_name}: " in result.stderr
    assert f"missing on destination: {snaps[0].snap_name}" in result.stderr
    assert "NOT in sync" in result.stderr


def test_delete_orphans_and_guard(tmp_home):
    src = local(tmp_home, "primary")
    seed(src, BACKUPS)
    assert invoke("copy", "--source-store-container=primary", "--store-container=secondary").exit_code == 0
    dst = local(tmp_home, "secondary")
    seed(dst, [(Kind.INCR, 1, 9, 40, False)])
    without = invoke("copy", "--source-store-container=primary", "--store-container=secondary")
    assert without.exit_code == 0 and len(dst.list()) == 6      # the Go copy never deletes
    with_delete = invoke("copy", "--source-store-container=primary", "--store-container=secondary", "--delete-orphans")
    assert with_delete.exit_code == 0, with_delete.stderr
    assert "Found 0 snapshots to copy and 1 to delete" in with_delete.stderr
    assert len(dst.list()) == 5
    # An empty source never empties the destination, and the command says it is not in sync.
    guarded = invoke("copy", "--source-store-container=empty", "--store-container=secondary", "--delete-orphans",
                     "--backup-sync-max-delete-fraction=1")
    assert guarded.exit_code == 1
    assert "Skipping deletion of orphaned snapshots on secondary: the primary lists no snapshots" in guarded.stderr
    assert len(dst.list()) == 5


def test_wait_for_final_snapshot(tmp_home, monkeypatch):
    monkeypatch.setattr(cmd_copy, "FINAL_POLL_SECONDS", 0.05)
    src = local(tmp_home, "primary")
    seed(src, BACKUPS[:4])   # no final snapshot
    result = invoke("copy", "--source-store-container=primary", "--store-container=secondary",
                    "--wait-for-final-snapshot", "--wait-for-final-snapshot-timeout=300ms")
    assert result.exit_code == 0
    assert "No final full snapshot appeared before the timeout" in result.stderr
    seed(src, BACKUPS[4:])
    result = invoke("copy", "--source-store-container=primary", "--store-container=secondary",
                    "--wait-for-final-snapshot=true")
    assert result.exit_code == 0 and "Final full snapshot found on the source" in result.stderr


def test_bad_flag_values_exit_2(tmp_home):
    assert invoke("copy", "--max-backup-age=-5").exit_code == 2
    assert invoke("copy", "--wait-for-final-snapshot-timeout=soon").exit_code == 2
    assert invoke("copy", "--max-parallel-copy-operations=0").exit_code == 2


# -- the guide's example commands -------------------------------------------------------------
def doc_commands() -> list[tuple[str, list[str]]]:
    """(kind, argv) for every shell line of the guide's bash blocks; kind is export/etcd-backup-restore."""
    text = DOC.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            argv = shlex.split(line)   # a trailing '# comment' after '\' would break this on purpose
            commands.append((argv[0], argv))
    return commands


def test_guide_has_the_documents_examples():
    argvs = [" ".join(a) for _, a in doc_commands()]
    assert len(argvs) >= 15
    assert any("--backup-sync-period=5m" in a and "--secondary-store-prefix=etcd-backups-secondary" in a for a in argvs)
    assert any("--secondary-max-parallel-chunk-uploads=8" in a for a in argvs)
    assert any("SECONDARY_GOOGLE_APPLICATION_CREDENTIALS=" in a for a in argvs)
    assert any("SECONDARY_AZURE_APPLICATION_CREDENTIALS_JSON=" in a for a in argvs)
    assert any("SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON=" in a for a in argvs)


def server_params(args: list[str]) -> dict:
    """Parse server flags without starting anything: through the server command when it exists,
    else through a command with the server's store, secondary and sync groups."""
    try:
        from etcdbr.cli.cmd_server import command as server
    except ModuleNotFoundError:
        @click.command()
        @add_options("store", "secondary", "sync")
        def server(**_):  # pragma: no cover - never invoked
            pass
    ctx = server.make_context("server", list(args), resilient_parsing=False)
    return ctx.params


def test_every_guide_command_parses_and_local_ones_run(tmp_home, monkeypatch):
    for var in list(os.environ):
        if var.endswith(("STORAGE_CONTAINER", "STORAGE_PROVIDER", "APPLICATION_CREDENTIALS_JSON")):
            monkeypatch.delenv(var)
    ran = parsed = 0
    for program, argv in doc_commands():
        if program == "export":
            name, _, value = argv[1].partition("=")
            monkeypatch.setenv(name, value)
            continue
        if program == "curl":   # needs a running server: only its path is checked
            assert re.search(r"http://localhost:8080/(snapshot/sync|sync/status)$", argv[-1]), argv
            continue
        assert program == "etcd-backup-restore", argv
        command, args = argv[1], argv[2:]
        if command == "server":
            config = resolve(server_params(args), "store", "secondary", "sync")
            if "--secondary-storage-provider=GCS" in args:
                assert config.secondary.provider == "GCS" and config.store.provider == "S3"
            assert config.sync.enabled
            parsed += 1
        elif command == "snapshot":
            from etcdbr.cli.cmd_snapshot import list_command

            assert args[0] == "list"
            config = resolve(list_command.make_context("list", args[1:]).params, "store")
            assert config.store.provider == "S3"
            parsed += 1
        elif command == "copy":
            params = cmd_copy.command.make_context("copy", list(args)).params
            config = resolve(params, *cmd_copy.GROUPS, extra=cmd_copy.COPY_EXTRA)
            if config.store.effective_provider == "Local" and config.source.effective_provider == "Local":
                result = invoke(*argv[1:])
                assert result.exit_code == 0, (argv, result.stderr)
                ran += 1
            else:
                parsed += 1
        elif command == "restore":
            from etcdbr.cli import cmd_restore

            params = cmd_restore.command.make_context("restore", list(args)).params
            config = resolve(params, *cmd_restore.GROUPS, extra=cmd_restore.EXTRA)
            assert config.restoration.restore_from == "secondary" and config.secondary.provider == "GCS"
            parsed += 1
        else:
            raise AssertionError(f"unexpected command in the guide: {argv}")
    assert ran == 2 and parsed >= 7


def test_env_example_resolves_both_endpoints(monkeypatch):
    for name, value in (("STORAGE_CONTAINER", "my-primary-bucket"), ("STORAGE_PROVIDER", "S3"),
                        ("SECONDARY_STORAGE_CONTAINER", "my-secondary-bucket"), ("SECONDARY_STORAGE_PROVIDER", "S3")):
        monkeypatch.setenv(name, value)
    config = resolve(server_params(["--backup-sync-enabled=true"]), "store", "secondary", "sync")
    assert (config.store.provider, config.store.container) == ("S3", "my-primary-bucket")
    assert (config.secondary.provider, config.secondary.container) == ("S3", "my-secondary-bucket")
    assert config.secondary.env_prefix == "SECONDARY_"
    go_style = resolve(server_params(["--secondary-backup-sync-enabled", "--secondary-backup-sync-period=1h"]),
                       "store", "secondary", "sync")
    assert go_style.sync.enabled and go_style.sync.period == timedelta(hours=1)


# -- real S3 with SOURCE_ credentials ---------------------------------------------------------
@pytest.mark.integration
def test_copy_between_s3_buckets_with_source_credentials(s3_server, tmp_path, monkeypatch):
    src_bucket = s3_server.create_bucket(f"src-{os.urandom(4).hex()}")
    dst_bucket = s3_server.create_bucket(f"dst-{os.urandom(4).hex()}")
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                 "region": s3_server.region}))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": "nope-" + "x" * 20,
                                 "region": s3_server.region}))
    monkeypatch.setenv("SOURCE_AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    src = open_store(StoreConfig(provider="S3", container=src_bucket, prefix="etcd",
                                 endpoint_override=s3_server.endpoint, env_prefix="SOURCE_"))
    snaps = seed(src, BACKUPS)
    args = ["copy", "--source-storage-provider=S3", f"--source-store-container={src_bucket}",
            "--source-store-prefix=etcd",
            f"--source-store-endpoint-override={s3_server.endpoint}", "--storage-provider=S3",
            f"--store-container={dst_bucket}", "--store-prefix=copy", f"--store-endpoint-override={s3_server.endpoint}"]
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr
    dst = open_store(StoreConfig(provider="S3", container=dst_bucket, prefix="copy",
                                 endpoint_override=s3_server.endpoint))
    assert {s.snap_name for s in dst.list()} == {s.snap_name.removesuffix(".final") for s in snaps}
    # The source's credentials come from SOURCE_*: wrong ones there fail the command with exit 1.
    monkeypatch.setenv("SOURCE_AWS_APPLICATION_CREDENTIALS_JSON", str(wrong))
    failed = invoke(*args)
    assert failed.exit_code in (1, 2) and "secret" not in failed.stderr.lower().replace("secretaccesskey", "")
    src.close()
    dst.close()


def test_progress_bar_on_a_terminal_and_lines_elsewhere(capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    snap = new_snapshot(Kind.FULL, 0, 10, prefix="v2", created_on=NOW)
    term = Terminal()
    bar = cmd_copy._Progress(term)
    bar("plan", None, 2)
    bar("copied", snap, 100)
    bar("deleted", snap, 0)
    bar.close()
    assert "2/2" in term.getvalue() and "100%" in term.getvalue()
    plain = io.StringIO()
    lines = cmd_copy._Progress(plain)
    lines("plan", None, 1)
    lines("copied", snap, 100)
    assert plain.getvalue() == f"[1/1] copied {snap.snap_name} (100 bytes)\n"


@pytest.mark.integration
def test_guide_local_server_example_runs(tmp_home, tmp_path, etcd_server):
    """The guide's local server example, as written plus the test etcd's endpoint and a free port."""
    from server_helpers import ServerProcess

    (argv,) = [a for _, a in doc_commands() if a[:2] == ["etcd-backup-restore", "server"]
               and "--storage-provider=Local" in a]
    server = ServerProcess(tmp_path, [*argv[2:], "--endpoints", etcd_server.client_url,
                                      "--delta-snapshot-period=1s"], env={"HOME": str(tmp_home)})
    server.start()
    try:
        server.wait_healthy()
        primary, secondary = local(tmp_home, "etcd-primary"), local(tmp_home, "etcd-secondary")
        etcd_server.etcdctl("put", "/copier-guide/a", "1")
        # Fulls and deltas reach the secondary at once (event-driven), with .final ignored.
        server.wait_for(lambda: primary.list() and {s.copier_key() for s in primary.list()}
                        == {s.copier_key() for s in secondary.list()}
                        and any(s.kind is Kind.INCR for s in secondary.list()), 60, "secondary in sync")
        status = server.get_json("/sync/status")
        assert status["secondary"]["endpoint"] == "Local/etcd-secondary" and status["lastRun"]["succeeded"]
        assert server.terminate() == 0
    finally:
        server.stop()
    log = server.log_text()
    assert ("INFO: Creating snapstore with backup copier - Primary: Local/etcd-primary, "
            "Secondary: Local/etcd-secondary") in log
    assert "INFO: Starting backup copier..." in log
    assert "INFO: Found " in log
