"""The CLI's parameter types and how click parses flags, environment and the config file with them:
each value syntax, pflag's booleans, repeatable comma-separated lists, precedence with where each
value came from, the config file as click's default map, and defaults taken from the config
dataclasses."""

from __future__ import annotations

from datetime import timedelta

import click
import pytest
from click.testing import CliRunner

from etcdbr.cli import cmd_copy, cmd_restore, cmd_server, options
from etcdbr.cli.cmd_snapshot import SNAPSHOT_GROUPS
from etcdbr.cli.cmd_snapshot import command as snapshot_command
from etcdbr.cli.main import cli
from etcdbr.cli.options import FlagOption, resolve
from etcdbr.cli.types import (
    Bool,
    ByteSize,
    Choice,
    Cron,
    Duration,
    Fraction,
    Integer,
    LogLevel,
    Provider,
    Url,
    positive,
)
from etcdbr.config import MIN_CHUNK_SIZE, Config


def expect_failure(param_type: click.ParamType, value, expected: str) -> None:
    with pytest.raises(click.BadParameter) as info:
        param_type.convert(value, None, None)
    assert info.value.message == expected


# -- the types on their own ----------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [
    ("20s", timedelta(seconds=20)), ("1h30m", timedelta(minutes=90)), ("300ms", timedelta(milliseconds=300)),
    ("0", timedelta(0)), ("-1.5h", timedelta(hours=-1.5)), ("1m0.5s", timedelta(seconds=60.5)),
    (timedelta(minutes=3), timedelta(minutes=3)),
])
def test_duration_takes_gos_syntax_and_timedeltas(text, value):
    assert Duration().convert(text, None, None) == value


def test_duration_refuses_other_syntax_and_values_below_its_minimum():
    expect_failure(Duration(), "5x", "a duration such as 30s, 5m or 1h30m")
    expect_failure(Duration(), "30", "a duration such as 30s, 5m or 1h30m")  # Go wants a unit
    positive_ = Duration(timedelta(0))
    expect_failure(positive_, "0s", "a duration > 0 such as 30s or 5m")
    expect_failure(positive_, "-1m", "a duration > 0 such as 30s or 5m")
    assert positive_.convert("1ms", None, None) == timedelta(milliseconds=1)
    at_least_zero = Duration(timedelta(0), inclusive=True, expect="a duration >= 0")
    assert at_least_zero.convert("0s", None, None) == timedelta(0)
    expect_failure(at_least_zero, "-1s", "a duration >= 0")


def test_cron_takes_exactly_five_valid_fields():
    assert Cron().convert("*/5 0 * * 1-5", None, None) == "*/5 0 * * 1-5"
    for bad in ("@hourly", "61 * * * *", "* * *", "0 0 * * * *", "every day"):
        expect_failure(Cron(), bad, "a 5-field cron expression such as '0 */1 * * *'")


def test_url_needs_a_scheme_and_a_host_and_empty_means_unset():
    assert Url().convert("https://s3.example.com:9000", None, None) == "https://s3.example.com:9000"
    assert Url().convert("", None, None) == ""
    for bad in ("s3.local", "http://", "::bad"):
        expect_failure(Url(), bad, "a URL such as https://s3.example.com:9000")


def test_integers_with_and_without_a_range():
    assert Integer().convert("-5", None, None) == -5
    assert Integer().convert(7, None, None) == 7  # YAML already made it a number
    expect_failure(Integer(), "lots", "an integer")
    expect_failure(Integer(), True, "an integer")  # YAML's true is not a count
    assert positive().convert("1", None, None) == 1
    expect_failure(positive(), "0", "an integer > 0")
    port = Integer(1, 65535, expect="a TCP port between 1 and 65535")
    assert port.convert("65535", None, None) == 65535
    expect_failure(port, "65536", "a TCP port between 1 and 65535")
    assert Integer().name == "integer" and positive().name == "integer range"
    assert positive()._describe_range() == "x>=1" and Integer()._describe_range() == ""


def test_byte_sizes_have_a_minimum():
    chunk = ByteSize(MIN_CHUNK_SIZE, expect="a size in bytes >= 5242880 (5 MiB)")
    assert chunk.convert(str(MIN_CHUNK_SIZE), None, None) == MIN_CHUNK_SIZE
    expect_failure(chunk, str(MIN_CHUNK_SIZE - 1), "a size in bytes >= 5242880 (5 MiB)")
    expect_failure(chunk, "-5", "a size in bytes >= 5242880 (5 MiB)")
    expect_failure(chunk, "5MiB", "an integer")  # bytes, as the Go tool takes them
    assert chunk.name == "bytes" and chunk._describe_range() == f"x>={MIN_CHUNK_SIZE}"


def test_choices_are_case_sensitive():
    codec = Choice("gzip", "zlib", "lzw", "zstd")
    assert codec.convert("zstd", None, None) == "zstd"
    expect_failure(codec, "GZIP", "one of gzip, zlib, lzw, zstd")
    expect_failure(codec, "bz2", "one of gzip, zlib, lzw, zstd")


def test_providers_name_the_go_tools_unsupported_ones():
    assert Provider().convert("", None, None) == ""
    assert Provider().convert(" S3 ", None, None) == "S3"
    expect_failure(Provider(), "s3", "one of Local, S3, GCS, ABS (case-sensitive)")
    expect_failure(Provider(), "Swift", "one of Local, S3, GCS, ABS (Swift is not supported by this tool)")


def test_fraction_is_between_0_and_1():
    assert Fraction().convert("0.25", None, None) == 0.25
    assert Fraction().convert(1, None, None) == 1.0
    for bad in ("1.5", "-0.1", "half", "nan", True):
        expect_failure(Fraction(), bad, "a number between 0 and 1")


def test_log_levels_take_names_and_the_go_tools_numbers():
    for good in ("debug", "INFO", "warning", "error", "0", "3", "6", 5):
        assert LogLevel().convert(good, None, None) == str(good)
    expect_failure(LogLevel(), "loud", "a level: debug, info, warning, error (or the Go tool's 0-6)")


@pytest.mark.parametrize("text", ["1", "t", "T", "true", "TRUE", "True", True])
def test_bool_takes_pflags_true_spellings(text):
    assert Bool().convert(text, None, None) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "false", "FALSE", "False", False])
def test_bool_takes_pflags_false_spellings(text):
    assert Bool().convert(text, None, None) is False


def test_bool_refuses_what_pflag_refuses():
    for bad in ("yes", "on", "maybe", ""):
        expect_failure(Bool(), bad, "true or false")


# -- parsing through the commands ----------------------------------------------------------------
def snapshot_config(args, **kwargs) -> Config:
    ctx = snapshot_command.make_context("snapshot", list(args), **kwargs)
    return resolve(ctx, *SNAPSHOT_GROUPS, "logging")


def server_config(args) -> Config:
    ctx = cmd_server.command.make_context("server", list(args))
    return resolve(ctx, *cmd_server.GROUPS, "compat", "logging", extra=cmd_server.EXTRA)


@pytest.mark.parametrize("args, value", [
    ([], True), (["--compress-snapshots"], True), (["--compress-snapshots=false"], False),
    (["--compress-snapshots=true"], True), (["--compress-snapshots=F"], False), (["--compress-snapshots=0"], False),
    (["--compress-snapshots", "false"], False), (["--compress-snapshots", "--log-level=debug"], True),
])
def test_booleans_as_pflag_takes_them(args, value):
    assert snapshot_config(args).snapshotter.compress_snapshots is value


def test_repeatable_flags_split_commas():
    config = snapshot_config(["-e", "http://a:1,http://b:2", "--endpoints", "http://c:3", "--endpoints=,http://d:4,"])
    assert config.etcd.endpoints == ["http://a:1", "http://b:2", "http://c:3", "http://d:4"]
    assert config.etcd.service_endpoints == []


@pytest.fixture
def no_store_env(monkeypatch):
    for var in ("STORAGE_PREFIX", "STORAGE_CONTAINER", "STORAGE_PROVIDER", "SECONDARY_STORAGE_PROVIDER",
                "SOURCE_STORAGE_CONTAINER", "ETCD_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_precedence_flag_env_file_default_and_where_each_value_came_from(tmp_path, no_store_env):
    conf = tmp_path / "c.yaml"
    conf.write_text("store-prefix: from-file\nstore-container: from-file\nstorage-provider: GCS\n"
                    "delta-snapshot-period: 45s\n")
    no_store_env.setenv("STORAGE_PREFIX", "from-env")
    no_store_env.setenv("STORAGE_CONTAINER", "from-env")
    no_store_env.setenv("STORAGE_PROVIDER", "")  # empty: unset, the file's value counts
    config = snapshot_config(["--store-prefix=from-flag", f"--config-file={conf}"])
    store = config.store
    assert (store.prefix, store.container, store.provider) == ("from-flag", "from-env", "GCS")
    assert config.snapshotter.delta_snapshot_period == timedelta(seconds=45)
    assert config.snapshotter.schedule == Config().snapshotter.schedule
    origins = config.extra["origins"]
    assert origins["store-prefix"] == "--store-prefix"
    assert origins["store-container"] == "environment variable STORAGE_CONTAINER"
    assert origins["storage-provider"] == "'storage-provider' in --config-file"
    assert origins["schedule"] == "default"


def test_secondary_and_source_environment_families(no_store_env):
    no_store_env.setenv("SECONDARY_STORAGE_PROVIDER", "GCS")
    no_store_env.setenv("SOURCE_STORAGE_CONTAINER", "src-bucket")
    assert server_config([]).secondary.provider == "GCS"
    ctx = cmd_copy.command.make_context("copy", [])
    copy = resolve(ctx, *cmd_copy.GROUPS, extra=cmd_copy.COPY_EXTRA)
    assert copy.source.container == "src-bucket" and copy.store.container == ""
    assert copy.extra["origins"]["source-store-container"] == "environment variable SOURCE_STORAGE_CONTAINER"


def test_config_file_keys_by_name_or_alias_the_name_winning(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("secondary-backup-sync-period: 1h\nbackup-sync-period: 2m\nsecondary-backup-sync-enabled: true\n"
                    "endpoints: [http://f:1, 'http://g:2,http://h:3']\nservice-endpoints: http://s:1,http://t:2\n"
                    "--max-backups: 3\nstore-prefix: null\nuse-etcd-wrapper: true\nk8s-heartbeat-duration: 10s\n")
    config = server_config([f"--config-file={conf}"])
    assert config.sync.period == timedelta(minutes=2) and config.sync.enabled is True
    assert config.extra["origins"]["backup-sync-enabled"] == "'secondary-backup-sync-enabled' in --config-file"
    assert config.etcd.endpoints == ["http://f:1", "http://g:2", "http://h:3"]
    assert config.etcd.service_endpoints == ["http://s:1", "http://t:2"]
    assert config.snapshotter.max_backups == 3
    assert config.store.prefix == "" and config.extra["origins"]["store-prefix"] == "default"
    # the Go tool's ignored flags: parsed by the server, which has them
    assert config.extra["compat"] == {"use-etcd-wrapper": True, "k8s-heartbeat-duration": timedelta(seconds=10)}


def test_the_go_tools_ignored_flags_in_another_commands_file_are_accepted(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("use-etcd-wrapper: true\nfull-snapshot-lease-name: x\n")
    ctx = cmd_restore.command.make_context("restore", [f"--config-file={conf}"])
    config = resolve(ctx, *cmd_restore.GROUPS, extra=cmd_restore.EXTRA)
    assert config.extra["compat"] == {"use-etcd-wrapper": True, "full-snapshot-lease-name": "x"}


@pytest.mark.parametrize("text, message", [
    ("no-such-flag: 1\nzzz: 2\n", "--config-file: unknown key 'no-such-flag' for this command"),
    ("config-file: other.yaml\n", "--config-file: unknown key 'config-file' for this command"),
    ("store-timeout: 0s\n", "invalid value '0s' for 'store-timeout' in --config-file: expected a duration > 0"),
    ("backup-sync-enabled: maybe\n", "invalid value 'maybe' for 'backup-sync-enabled' in --config-file: "
                                     "expected true or false"),
    ("max-parallel-copy-operations: 0\n", "invalid value '0' for 'max-parallel-copy-operations' in --config-file"),
    ("[a, b]\n", "must be a mapping of flag names to values"),
])
def test_a_bad_config_file_is_one_line_exit_2(tmp_path, text, message):
    conf = tmp_path / "c.yaml"
    conf.write_text(text)
    result = CliRunner().invoke(cli, ["copy", f"--config-file={conf}"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr


def test_file_reading_is_one_replaceable_function(monkeypatch):
    """Issue 15 adds the Go tool's nested format by replacing options.read_config_file."""
    seen = []

    def nested(path):
        seen.append(path)
        return {"store-prefix": "from-nested", "backup-sync-enabled": "true"}

    monkeypatch.setattr(options, "read_config_file", nested)
    config = server_config(["--config-file=anything.yaml"])
    assert seen == ["anything.yaml"]
    assert config.store.prefix == "from-nested" and config.sync.enabled is True


def test_bad_values_name_flag_variable_or_key_in_one_line(no_store_env):
    runner = CliRunner()
    flag = runner.invoke(cli, ["server", "--k8s-heartbeat-duration=abc"])
    assert flag.exit_code == 2
    assert flag.stderr == ("error: invalid value 'abc' for --k8s-heartbeat-duration: expected a duration such as "
                           "30s, 5m or 1h30m\n")
    env = runner.invoke(cli, ["verify"], env={"STORAGE_PROVIDER": "Swift"})
    assert env.exit_code == 2
    assert env.stderr == ("error: invalid value 'Swift' for environment variable STORAGE_PROVIDER: expected one of "
                          "Local, S3, GCS, ABS (Swift is not supported by this tool)\n")


def test_every_default_is_the_config_dataclasses(no_store_env):
    """No flag carries a default of its own: parsing nothing gives Config()'s values."""
    for var in ("ETCD_BIN_DIR", "ETCD_USERNAME", "STORAGE_ENDPOINT_OVERRIDE", "SECONDARY_STORAGE_CONTAINER",
                "SECONDARY_STORAGE_PREFIX", "SECONDARY_STORAGE_ENDPOINT_OVERRIDE", "SOURCE_STORAGE_PROVIDER",
                "SOURCE_STORAGE_PREFIX", "SOURCE_STORAGE_ENDPOINT_OVERRIDE"):
        no_store_env.delenv(var, raising=False)
    for command, groups in ((cmd_server.command, cmd_server.GROUPS), (snapshot_command, SNAPSHOT_GROUPS),
                            (cmd_copy.command, cmd_copy.GROUPS), (cmd_restore.command, cmd_restore.GROUPS)):
        ctx = command.make_context(command.name, [])
        for param in command.params:
            if isinstance(param, FlagOption) and not param.spec.compat:
                assert param.default == param.spec.default, param.name
        config = resolve(ctx, *groups, "logging")
        fresh = Config()
        for group in ("store", "secondary", "source", "etcd", "snapshotter", "restoration", "server", "sync"):
            if group in groups:
                assert getattr(config, group) == getattr(fresh, group), (command.name, group)
