"""Every row of docs/configuration-rules.md: a configuration the rule refuses exits 2 with one
line, before etcd, a store or a data dir is touched (the endpoints and stores named here do not
exist: reaching them would be another error). And the member's identity from etcd's config file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from etcdbr.cli.main import cli
from etcdbr.config import Config
from etcdbr.errors import ConfigError
from etcdbr.etcdconf import apply_member_identity

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration-rules.md"
NOWHERE = "--endpoints=http://127.0.0.1:1"

# rule -> (argv, what the one line must say)
CASES: dict[str, tuple[list[str], str]] = {
    "connection-timeout": (["snapshot", "--etcd-connection-timeout=0s"],
                           "--etcd-connection-timeout: expected a duration > 0"),
    "snapshot-timeout-positive": (["initialize", "--etcd-snapshot-timeout=-1s"],
                                  "--etcd-snapshot-timeout: expected a duration > 0"),
    "snapshot-timeout": (["server", "--etcd-snapshot-timeout=10s", "--etcd-connection-timeout=30s"],
                         "--etcd-snapshot-timeout (10s) must not be shorter than --etcd-connection-timeout (30s)"),
    "defrag-timeout": (["snapshot", "--etcd-defrag-timeout=0"], "--etcd-defrag-timeout: expected a duration > 0"),
    "schedule": (["snapshot", "--schedule=@hourly"], "--schedule: expected a 5-field cron expression"),
    "gc-policy": (["server", "--garbage-collection-policy=Linear"], "expected one of Exponential, LimitBased"),
    "gc-limit-based": (["snapshot", "--garbage-collection-policy=LimitBased", "--max-backups=0"],
                       "--max-backups must be greater than 0 with --garbage-collection-policy=LimitBased (got 0)"),
    "max-backups-bound": (["server", "--max-backups=9223372036854775808"], "--max-backups must be at most"),
    "delta-memory-limit": (["snapshot", "--delta-snapshot-memory-limit=-1"], "expected an integer >= 0"),
    "delta-memory-bound": (["snapshot", "--delta-snapshot-memory-limit=99999999999999999999"],
                           "--delta-snapshot-memory-limit must be at most"),
    "chunk-uploads": (["server", "--secondary-max-parallel-chunk-uploads=0"],
                      "--secondary-max-parallel-chunk-uploads: expected an integer > 0"),
    "min-chunk-size": (["restore", "--min-chunk-size=1024"], "--min-chunk-size: expected a size in bytes >= 5242880"),
    "endpoint-override": (["copy", "--source-store-endpoint-override=not a url"], "expected a URL"),
    "compression-policy": (["compact", "--compression-policy=brotli"], "expected one of gzip, zlib, lzw, zstd"),
    "defrag-schedule": (["snapshot", "--defragmentation-schedule=0 0 */3 *"],
                        "--defragmentation-schedule: expected a 5-field"),
    "backoff-multiplier": (["server", "--backoff-multiplier=0"], "--backoff-multiplier: expected an integer > 0"),
    "backoff-attempt-limit": (["snapshot", "--backoff-attempt-limit=-3"],
                              "--backoff-attempt-limit: expected an integer > 0"),
    "backoff-threshold": (["server", "--backoff-threshold-time=0s"],
                          "--backoff-threshold-time: expected a duration > 0"),
    "initial-cluster-urls": (["initialize", "--initial-cluster=a=http://a:2380/path"],
                             "--initial-cluster: 'http://a:2380/path' must not contain a path"),
    "peer-urls": (["server", "--initial-advertise-peer-urls=ftp://a:2380"],
                  "--initial-advertise-peer-urls: 'ftp://a:2380': the scheme must be http, https, unix or unixs"),
    "member-in-cluster": (["restore", "--name=b", "--initial-cluster=a=http://a:2380"],
                          "--name 'b' is not a member of --initial-cluster (members: a)"),
    # ETCD_CONF names a file saying only "initial-cluster-state: bootstrapping" (see the test)
    "initial-cluster-state": (["initialize"], "initial-cluster-state must be new or existing, not 'bootstrapping'"),
    "max-call-send": (["restore", "--max-call-send-message-size=0"],
                      "--max-call-send-message-size: expected an integer > 0"),
    "max-fetchers": (["initialize", "--max-fetchers=0"], "--max-fetchers: expected an integer > 0"),
    "embedded-quota": (["compact", "--embedded-etcd-quota-bytes=-1"],
                       "--embedded-etcd-quota-bytes: expected an integer > 0"),
    "auto-compaction-mode": (["server", "--auto-compaction-mode=hourly"], "expected one of periodic, revision"),
    "reelection-period": (["server", "--reelection-period=1s"], "--reelection-period must be longer than 1s (got 1s)"),
    "leader-election-timeout": (["server", "--etcd-connection-timeout-leader-election=500ms"],
                                "--etcd-connection-timeout-leader-election must be longer than 1s (got 500ms)"),
    "heartbeat-duration": (["server", "--k8s-heartbeat-duration=0s"],
                           "--k8s-heartbeat-duration must be greater than 0"),
    "lease-names": (["server", "--enable-snapshot-lease-renewal=true", "--delta-snapshot-lease-name="],
                    "--delta-snapshot-lease-name must not be empty with --enable-snapshot-lease-renewal=true"),
    "server-tls": (["server", "--server-cert={missing}", "--server-key={missing}"], "does not exist"),
    "compact-timeouts": (["compact", "--etcd-defrag-timeout=0s"], "--etcd-defrag-timeout: expected a duration > 0"),
    "copy-max-backups": (["copy", "--max-backups-to-copy=-2"], "--max-backups-to-copy: expected a number of backups"),
    "copy-max-age": (["copy", "--max-backup-age=-5"], "--max-backup-age: expected a number of days"),
    "copy-parallel": (["copy", "--max-parallel-copy-operations=0"], "expected an integer > 0"),
    "copy-final-timeout": (["copy", "--wait-for-final-snapshot-timeout=-1m"],
                           "--wait-for-final-snapshot-timeout: expected a duration >= 0"),
    "validation-mode": (["initialize", "--validation-mode=thorough"], "expected one of full, sanity"),
}


def doc_rules() -> list[str]:
    return re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), re.M)


def test_the_docs_table_lists_every_rule_tested_here():
    assert sorted(doc_rules()) == sorted(CASES)
    assert len(doc_rules()) == len(set(doc_rules()))


@pytest.mark.parametrize("rule", sorted(CASES))
def test_each_rule_refuses_with_one_line_and_exit_2(rule, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("ETCD_CONF", "POD_NAME", "POD_NAMESPACE"):
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "etcd.conf.yaml"
    conf.write_text("initial-cluster-state: bootstrapping\n")
    if rule == "initial-cluster-state":
        monkeypatch.setenv("ETCD_CONF", str(conf))
    argv, expected = CASES[rule]
    argv = [a.format(missing=tmp_path / "missing.pem") for a in argv]
    extra = [NOWHERE] if argv[0] in ("server", "snapshot", "initialize") else []
    store = [f"--store-container={tmp_path / 'no-store'}"] if argv[0] != "copy" else []
    result = CliRunner().invoke(cli, [*argv, *extra, *store, f"--data-dir={tmp_path / 'no.etcd'}"]
                                if argv[0] in ("restore", "initialize", "server", "compact") else [*argv, *extra,
                                                                                                   *store],
                                catch_exceptions=False)
    assert result.exit_code == 2, (rule, result.output)
    lines = result.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == lines[-1:] and expected in lines[-1] and "Traceback" not in result.output, (rule, result.stderr)
    assert len(lines) == 1 or rule == "server-tls", lines  # the server logs its version first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etcd.conf.yaml"]


def test_the_go_tools_defaults_pass_every_rule(tmp_path, monkeypatch):
    from etcdbr.configcheck import check

    check(Config(), ("etcd", "snapshotter", "server", "restoration", "store"), member_urls=True)


# -- etcd's config file ---------------------------------------------------------------------------
def _apply(monkeypatch, tmp_path, text: str, **env) -> Config:
    conf = tmp_path / "etcd.conf.yaml"
    conf.write_text(text)
    monkeypatch.setenv("ETCD_CONF", str(conf))
    for var in ("POD_NAME",):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = Config()
    config.extra["origins"] = {"name": "default", "data-dir": "default", "initial-cluster": "default",
                               "initial-cluster-token": "default", "initial-advertise-peer-urls": "default"}
    apply_member_identity(config)
    return config


def test_etcd_config_file_in_etcds_own_format(monkeypatch, tmp_path):
    c = _apply(monkeypatch, tmp_path, "name: m0\ndata-dir: /var/etcd/data/new.etcd\n"
               "initial-cluster: m0=https://m0:2380,m1=https://m1:2380\ninitial-cluster-token: tok\n"
               "initial-cluster-state: existing\ninitial-advertise-peer-urls: https://m0:2380\n")
    r = c.restoration
    assert (r.name, r.data_dir, r.initial_cluster_token, r.initial_cluster_state) == (
        "m0", "/var/etcd/data/new.etcd", "tok", "existing")
    assert r.initial_advertise_peer_urls == ["https://m0:2380"]
    assert c.extra["origins"]["name"] == f"'name' in etcd config file {tmp_path / 'etcd.conf.yaml'}"


def test_etcd_druids_form_names_the_member_after_the_pod(monkeypatch, tmp_path):
    text = ("name: etcd-main\nmember-name-prefix: shoot\ninitial-cluster: shoot-etcd-main-1=https://p1:2380\n"
            "initial-advertise-peer-urls:\n  shoot-etcd-main-0:\n  - https://p0:2380\n"
            "  shoot-etcd-main-1:\n  - https://p1:2380\n")
    c = _apply(monkeypatch, tmp_path, text, POD_NAME="etcd-main-1")
    assert c.restoration.name == "shoot-etcd-main-1"
    assert c.restoration.initial_advertise_peer_urls == ["https://p1:2380"]
    assert c.extra["origins"]["name"].startswith("POD_NAME and member-name-prefix with etcd config file")
    with pytest.raises(ConfigError, match="lists members shoot-etcd-main-0, shoot-etcd-main-1 but not this member "
                                          "'shoot-etcd-main-7'"):
        _apply(monkeypatch, tmp_path, text, POD_NAME="etcd-main-7")


def test_flags_win_over_etcd_config_file(monkeypatch, tmp_path):
    conf = tmp_path / "etcd.conf.yaml"
    conf.write_text("name: from-file\ndata-dir: /from/file\n")
    monkeypatch.setenv("ETCD_CONF", str(conf))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["restore", "--name=from-flag", "--initial-cluster=from-flag=http://a:2380",
                                      "--initial-advertise-peer-urls=http://a:2380", "--dry-run",
                                      f"--store-container={tmp_path / 'empty'}"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "member settings from etcd's config file" in result.stderr and "data_dir=/from/file" in result.stderr
    assert "from-file" not in result.stderr


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "must be a YAML mapping"),
    ("name: [a\n", "is not valid YAML at line"),
    ("initial-advertise-peer-urls: ''\n", "initial-advertise-peer-urls is empty"),
])
def test_a_bad_etcd_config_file_is_one_line(monkeypatch, tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _apply(monkeypatch, tmp_path, text)


@pytest.mark.parametrize("policy, warned", [("zstd", True), ("gzip", False), ("lzw", False)])
def test_zstd_warns_that_the_go_tool_cannot_read_it(policy, warned, tmp_path):
    result = CliRunner().invoke(cli, ["compact", f"--compression-policy={policy}",
                                      f"--store-container={tmp_path / 'store'}"])
    assert result.exit_code == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "WARN:" in line and "Go etcdbrctl cannot read" in line]
    assert bool(warning) is warned, result.stderr
    if warned:
        assert "--compression-policy=zstd writes .zst snapshots" in warning[0]
