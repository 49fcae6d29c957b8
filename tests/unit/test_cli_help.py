"""``--help`` groups the flags in one section per flag group, and shows every flag with its type or
choices, its default and its environment variable."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from etcdbr.cli.flags import GROUPS, TITLES
from etcdbr.cli.main import cli
from etcdbr.cli.options import FlagOption, _default_text

COMMANDS = ["server", "snapshot", "snapshot list", "restore", "initialize", "compact", "copy", "verify"]


def help_sections(command: str) -> dict[str, str]:
    """Section title -> its text, from ``<command> --help`` on a wide terminal (one flag a line)."""
    result = CliRunner().invoke(cli, [*command.split(), "--help"], terminal_width=400, max_content_width=400)
    assert result.exit_code == 0, result.output
    sections: dict[str, str] = {}
    title = None
    for line in result.output.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line[:-1]
            sections[title] = ""
        elif title is not None:
            sections[title] += line + "\n"
    return sections


def flag_line(text: str, flag: str) -> str:
    """The entry of ``--flag`` in a section: its line and the help wrapped below it, joined."""
    entries: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif line.startswith("   ") and entries:
            entries[-1] += " " + line.strip()
    found = [e for e in entries if re.search(rf"(^|[ ,])--{re.escape(flag)}(?![-\w])", e.split("  ")[1])]
    assert len(found) == 1, (flag, found)
    return found[0]


def command_of(path: str) -> click.Command:
    cmd: click.Command = cli
    for name in path.split():
        cmd = cmd.commands[name]  # type: ignore[attr-defined]  # a group's subcommand
    return cmd


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_is_in_its_groups_section_with_type_default_and_env(command):
    sections = help_sections(command)
    cmd = command_of(command)
    flags = [p for p in cmd.params if isinstance(p, FlagOption) and not p.hidden]
    assert flags
    for param in flags:
        spec = param.spec
        title = (param.section or cmd.name.capitalize()) + " options"
        line = flag_line(sections[title], spec.name)
        metavar = param.make_metavar(click.Context(cmd))
        names = [*([f"-{spec.short}"] if spec.short else []), f"--{spec.name}", *(f"--{a}" for a in spec.aliases)]
        assert line.startswith(f"  {', '.join(names)} {metavar}"), line  # every name, then the type or choices
        default = _default_text(spec.default)
        if default:
            assert f"default: {default}" in line, line
        for var in spec.env:
            assert f"env var: {var}" in line, line
    assert "--config-file PATH" in sections["Options"] and "--help" in sections["Options"]


def test_server_help_has_a_section_per_flag_group_in_order():
    sections = help_sections("server")
    titles = [t for t in sections if t.endswith(" options")]
    assert titles == ["Server options", *(f"{TITLES[g]} options" for g in (
        "etcd", "store", "secondary", "sync", "snapshotter", "compression", "backoff", "restoration", "server",
        "compat", "logging"))]
    assert list(sections)[-1] == "Options"


def test_types_choices_ranges_defaults_and_env_as_an_operator_reads_them():
    server = help_sections("server")
    assert "--store-timeout DURATION" in flag_line(server["Store options"], "store-timeout")
    assert "[default: 20s]" in flag_line(server["Store options"], "store-timeout")
    line = flag_line(server["Compression options"], "compression-policy")
    assert "--compression-policy [gzip|zlib|lzw|zstd]" in line and "[default: gzip]" in line
    line = flag_line(server["Store options"], "max-parallel-chunk-uploads")
    assert "INTEGER RANGE" in line and "[default: 5; x>=1]" in line
    line = flag_line(server["Store options"], "min-chunk-size")
    assert "--min-chunk-size BYTES" in line and "x>=5242880" in line
    line = flag_line(server["Secondary store options"], "secondary-storage-provider")
    assert "[Local|S3|GCS|ABS]" in line and "[env var: SECONDARY_STORAGE_PROVIDER]" in line
    assert "(empty = no secondary)" in line
    assert "(empty = Local)" in flag_line(server["Store options"], "storage-provider")
    line = flag_line(server["Backup sync options"], "backup-sync-enabled")
    assert "--backup-sync-enabled, --secondary-backup-sync-enabled [true|false]" in line and "[default: false]" in line
    assert "0<=x<=1" in flag_line(server["Backup sync options"], "backup-sync-max-delete-fraction")
    assert "-s, --schedule CRON" in flag_line(server["Snapshotter options"], "schedule")
    assert "-p, --server-port INTEGER RANGE" in flag_line(server["HTTP server options"], "server-port")
    assert "1<=x<=65535" in flag_line(server["HTTP server options"], "server-port")
    assert "--store-endpoint-override URL" in flag_line(server["Store options"], "store-endpoint-override")
    assert "[debug|info|warning|error|0-6]" in flag_line(server["Logging options"], "log-level")
    copy = help_sections("copy")
    assert "[env var: SOURCE_STORAGE_CONTAINER]" in flag_line(copy["Source store options"], "source-store-container")
    assert "--max-backups-to-copy INTEGER RANGE" in flag_line(copy["Copy options"], "max-backups-to-copy")


def test_the_go_tools_ignored_flags_are_hidden_but_accepted():
    text = CliRunner().invoke(cli, ["server", "--help"]).output
    for spec in GROUPS["compat"]:
        # the lease flags work (server/leases.py) and are explained; the others are hidden
        assert (f"--{spec.name}" in text) is bool(spec.help), spec.name
    params = {p.name for p in command_of("server").params}
    assert {spec.param for spec in GROUPS["compat"]} <= params
