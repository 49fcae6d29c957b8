"""Every flag in one table, its environment fallbacks, and how a Config is resolved from them.

Precedence: flag > environment > config file (``--config-file``, YAML keyed by flag names) >
default. Values are parsed here, not by click, so that a bad value is one line naming the flag and
what it expects, with exit code 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import click
import yaml

from ..config import (
    MIN_CHUNK_SIZE,
    PROVIDERS,
    Config,
    format_duration,
    parse_bool,
    parse_cron,
    parse_duration,
    parse_int,
    parse_url,
)
from ..errors import ConfigError


@dataclass(frozen=True)
class Opt:
    name: str                 # long flag without dashes
    dest: str                 # dotted attribute path in Config
    parse: Callable[[str], Any]
    default: Any
    help: str
    env: tuple[str, ...] = ()
    short: str | None = None
    aliases: tuple[str, ...] = ()
    is_bool: bool = False
    multiple: bool = False    # repeatable and comma-separated lists
    secret: bool = False


# -- value parsers with their "expected" wording ------------------------------------------------
def positive_int(text: str) -> int:
    v = parse_int(text)
    if v <= 0:
        raise ValueError("an integer > 0")
    return v


def non_negative_int(text: str) -> int:
    v = parse_int(text)
    if v < 0:
        raise ValueError("an integer >= 0")
    return v


def port(text: str) -> int:
    v = parse_int(text)
    if not 0 < v < 65536:
        raise ValueError("a TCP port between 1 and 65535")
    return v


def chunk_size(text: str) -> int:
    v = parse_int(text)
    if v < MIN_CHUNK_SIZE:
        raise ValueError(f"a size in bytes >= {MIN_CHUNK_SIZE} (5 MiB)")
    return v


def positive_duration(text: str) -> timedelta:
    d = parse_duration(text)
    if d <= timedelta(0):
        raise ValueError("a duration > 0 such as 30s or 5m")
    return d


def provider(text: str) -> str:
    t = text.strip()
    if t and t not in PROVIDERS:
        from ..config import UNSUPPORTED_PROVIDERS

        if t in UNSUPPORTED_PROVIDERS:
            raise ValueError(f"one of {', '.join(PROVIDERS)} ({t} is not supported by this tool)")
        raise ValueError(f"one of {', '.join(PROVIDERS)} (case-sensitive)")
    return t


def choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in values:
            raise ValueError("one of " + ", ".join(values))
        return text

    return parse


def text(value: str) -> str:
    return str(value)


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("a number between 0 and 1") from None
    if not 0 <= v <= 1:
        raise ValueError("a number between 0 and 1")
    return v


def log_level(text: str) -> str:
    from ..logs import parse_level

    parse_level(text)
    return text


def _store_opts(flag_prefix: str, dest: str, env_prefix: str, who: str) -> list[Opt]:
    f = flag_prefix
    return [
        Opt(f"{f}storage-provider", f"{dest}.provider", provider, "",
            f"Object store of the {who}: Local, S3, GCS or ABS (empty = Local).", env=(f"{env_prefix}STORAGE_PROVIDER",)),
        Opt(f"{f}store-container", f"{dest}.container", text, "",
            f"Bucket or container of the {who} (for Local: a directory, relative to $HOME unless absolute).",
            env=(f"{env_prefix}STORAGE_CONTAINER",)),
        Opt(f"{f}store-prefix", f"{dest}.prefix", text, "",
            f"Path inside the {who}'s container; '/v2' is appended as the Go tool does.", env=(f"{env_prefix}STORAGE_PREFIX",)),
        Opt(f"{f}store-endpoint-override", f"{dest}.endpoint_override", parse_url, "",
            f"Endpoint URL of the {who} (S3-compatible servers, emulators).", env=(f"{env_prefix}STORAGE_ENDPOINT_OVERRIDE",)),
        Opt(f"{f}min-chunk-size", f"{dest}.min_chunk_size", chunk_size, MIN_CHUNK_SIZE,
            f"Part size in bytes of the {who}'s multipart uploads (>= 5 MiB); memory used is about part size x parallel uploads."),
        Opt(f"{f}max-parallel-chunk-uploads", f"{dest}.max_parallel_chunk_uploads", positive_int, 5,
            f"Parts uploaded at once to the {who}."),
        Opt(f"{f}snapstore-temp-directory", f"{dest}.temp_dir", text, "/tmp",
            f"Directory for temporary files of the {who} (created 0700 if missing). Uploads stream without "
            "temporary files; only small private files (an S3 CA bundle) go here."),
        Opt(f"{f}store-timeout", f"{dest}.timeout", positive_duration, timedelta(seconds=20),
            f"Longest wait for the {who} on one request (connecting, or between bytes of an answer). The SDK tries "
            "a request twice, so a store that accepts connections and never answers fails a call within about 2x "
            "this + 1s; 'snapshot list' gives up within 3x this (60s by default). See docs/dual-endpoint.md (Timeouts and retries) for the "
            "attempts one failing operation can make."),
    ]


_FROM_ETCD_CONF = " Unset: from etcd's config file (ETCD_CONF) for server, initialize and restore."

GROUPS: dict[str, list[Opt]] = {
    "store": _store_opts("", "store", "", "snapstore"),
    "secondary": _store_opts("secondary-", "secondary", "SECONDARY_", "secondary snapstore"),
    "source": _store_opts("source-", "source", "SOURCE_", "source snapstore (copy)"),
    "etcd": [
        Opt("endpoints", "etcd.endpoints", text, ["http://127.0.0.1:2379"], "etcd client endpoints (comma-separated).",
            short="e", multiple=True),
        Opt("service-endpoints", "etcd.service_endpoints", text, [], "etcd endpoints reachable through a Service.", multiple=True),
        Opt("etcd-username", "etcd.username", text, "", "etcd user.", env=("ETCD_USERNAME",)),
        Opt("etcd-password", "etcd.password", text, "", "etcd password (never logged).", env=("ETCD_PASSWORD",), secret=True),
        Opt("etcd-connection-timeout", "etcd.connection_timeout", positive_duration, timedelta(seconds=30),
            "Timeout of etcd calls other than snapshot and defragmentation."),
        Opt("etcd-snapshot-timeout", "etcd.snapshot_timeout", positive_duration, timedelta(minutes=15),
            "Timeout of one full snapshot stream from etcd."),
        Opt("etcd-defrag-timeout", "etcd.defrag_timeout", positive_duration, timedelta(minutes=8), "Timeout of one defragmentation."),
        Opt("insecure-transport", "etcd.insecure_transport", parse_bool, True, "Talk to etcd without TLS.", is_bool=True),
        Opt("insecure-skip-tls-verify", "etcd.insecure_skip_tls_verify", parse_bool, True,
            "Do not verify etcd's server certificate.", is_bool=True),
        Opt("cert", "etcd.cert", text, "", "Client certificate for etcd TLS."),
        Opt("key", "etcd.key", text, "", "Client key for etcd TLS."),
        Opt("cacert", "etcd.cacert", text, "", "CA bundle for etcd TLS."),
    ],
    "snapshotter": [
        Opt("schedule", "snapshotter.schedule", parse_cron, "0 */1 * * *", "Cron schedule of full snapshots.", short="s"),
        Opt("delta-snapshot-period", "snapshotter.delta_snapshot_period", parse_duration, timedelta(seconds=20),
            "Period of delta snapshots; below 1s disables them."),
        Opt("delta-snapshot-memory-limit", "snapshotter.delta_snapshot_memory_limit", non_negative_int, 10 * 1024 * 1024,
            "Buffered event bytes that trigger a delta snapshot before its period (0 = default)."),
        Opt("garbage-collection-period", "snapshotter.garbage_collection_period", parse_duration, timedelta(minutes=1),
            "Period of garbage collection; 1s or less disables it."),
        Opt("garbage-collection-policy", "snapshotter.garbage_collection_policy", choice("Exponential", "LimitBased"),
            "Exponential", "Retention policy: Exponential (hourly/daily/weekly) or LimitBased (--max-backups)."),
        Opt("max-backups", "snapshotter.max_backups", parse_int, 7, "Full snapshots kept by LimitBased GC.", short="m"),
        Opt("delta-snapshot-retention-period", "snapshotter.delta_snapshot_retention_period", parse_duration, timedelta(0),
            "Keep deltas of older full snapshots this long."),
        Opt("defragmentation-schedule", "snapshotter.defragmentation_schedule", parse_cron, "0 0 */3 * *",
            "Cron schedule of etcd defragmentation."),
    ],
    "compression": [
        Opt("compress-snapshots", "snapshotter.compress_snapshots", parse_bool, True, "Compress snapshots.", is_bool=True),
        Opt("compression-policy", "snapshotter.compression_policy", choice("gzip", "zlib", "lzw", "zstd"), "gzip",
            "Codec: gzip (.gz), zlib (.zlib), lzw (.Z) or zstd (.zst, this tool only)."),
    ],
    "backoff": [
        Opt("backoff-multiplier", "snapshotter.backoff_multiplier", positive_int, 2, "Growth factor of retry delays at startup."),
        Opt("backoff-attempt-limit", "snapshotter.backoff_attempt_limit", positive_int, 6, "Attempts before giving up at startup."),
        Opt("backoff-threshold-time", "snapshotter.backoff_threshold_time", positive_duration, timedelta(seconds=128),
            "Longest retry delay at startup."),
    ],
    "restoration": [
        Opt("initial-cluster", "restoration.initial_cluster", text, "default=http://localhost:2380",
            "Initial cluster of the restored member." + _FROM_ETCD_CONF),
        Opt("initial-cluster-token", "restoration.initial_cluster_token", text, "etcd-cluster",
            "Initial cluster token." + _FROM_ETCD_CONF),
        Opt("data-dir", "restoration.data_dir", text, "default.etcd",
            "etcd data directory to restore or validate." + _FROM_ETCD_CONF, short="d"),
        Opt("restoration-temp-snapshots-dir", "restoration.temp_snapshots_dir", text, "default.restoration.tmp",
            "Directory for snapshots downloaded during a restore."),
        Opt("initial-advertise-peer-urls", "restoration.initial_advertise_peer_urls", text, ["http://localhost:2380"],
            "Peer URLs of the restored member." + _FROM_ETCD_CONF, multiple=True),
        Opt("name", "restoration.name", text, "default", "Member name of the restored member." + _FROM_ETCD_CONF),
        Opt("skip-hash-check", "restoration.skip_hash_check", parse_bool, False,
            "Do not check the full snapshot's SHA-256 trailer (for a db copied from a data dir).", is_bool=True),
        Opt("max-fetchers", "restoration.max_fetchers", positive_int, 6, "Delta snapshots downloaded in parallel ahead of replay."),
        Opt("max-call-send-message-size", "restoration.max_call_send_message_size", positive_int, 10 * 1024 * 1024,
            "Largest gRPC message sent to the temporary etcd."),
        Opt("max-request-bytes", "restoration.max_request_bytes", positive_int, 10 * 1024 * 1024, "Largest request the temporary etcd accepts."),
        Opt("max-txn-ops", "restoration.max_txn_ops", positive_int, 10240, "Most operations in one replay transaction."),
        Opt("embedded-etcd-quota-bytes", "restoration.embedded_etcd_quota_bytes", positive_int, 8 * 1024 ** 3,
            "Backend quota of the temporary etcd."),
        Opt("auto-compaction-mode", "restoration.auto_compaction_mode", choice("periodic", "revision"), "periodic",
            "Auto-compaction mode of the temporary etcd."),
        Opt("auto-compaction-retention", "restoration.auto_compaction_retention", text, "30m", "Auto-compaction retention of the temporary etcd."),
        Opt("etcd-bin-dir", "restoration.etcd_bin_dir", text, "",
            "Directory holding the etcd and etcdutl binaries used for restores (default: found on PATH).",
            env=("ETCD_BIN_DIR",)),
    ],
    "server": [
        Opt("server-port", "server.port", port, 8080, "Port of the HTTP API.", short="p"),
        Opt("server-host", "server.host", text, "0.0.0.0", "Address the HTTP API binds to."),
        Opt("server-cert", "server.server_cert", text, "", "TLS certificate: serve HTTPS when set with --server-key."),
        Opt("server-key", "server.server_key", text, "", "TLS key for --server-cert."),
        Opt("enable-profiling", "server.enable_profiling", parse_bool, False, "Accepted for compatibility; no effect.", is_bool=True),
        Opt("reelection-period", "server.reelection_period", positive_duration, timedelta(seconds=5),
            "How often to check whether this member is etcd's leader (only the leader's sidecar takes snapshots)."),
    ],
    "sync": [
        Opt("backup-sync-enabled", "sync.enabled", parse_bool, False,
            "Keep the secondary snapstore in sync with the primary (BackupCopier).", is_bool=True,
            aliases=("secondary-backup-sync-enabled",)),
        Opt("backup-sync-period", "sync.period", positive_duration, timedelta(minutes=5),
            "How often the copier compares both stores. 5m (the document recommends 3-5m): snapshots this process takes "
            "are copied at once anyway, so the period only bounds how long other gaps (missed events, outages, GC) last.",
            aliases=("secondary-backup-sync-period",)),
        Opt("backup-sync-max-retries", "sync.max_retries", non_negative_int, 2,
            "Retries of a failed copy or deletion within one run (each try makes at most 3 tries per upload part, "
            "each of 2 requests: 18 requests per part with the default)."),
        Opt("backup-sync-retry-backoff", "sync.retry_backoff", positive_duration, timedelta(seconds=30),
            "First retry delay; doubles with each retry. While an endpoint is down, the sync run that probes it "
            "comes this often."),
        Opt("backup-sync-concurrent-copies", "sync.concurrent_copies", positive_int, 10, "Copies in flight at once.",
            aliases=("max-parallel-copy-operations",)),
        Opt("backup-sync-max-delete-fraction", "sync.max_delete_fraction", fraction, 0.5,
            "Safety guard: skip orphan deletion when a run would delete more than this share of the secondary."),
        Opt("backup-sync-shutdown-grace", "sync.shutdown_grace", parse_duration, timedelta(seconds=30),
            "On SIGTERM or loss of leadership, how long the copier gets to copy and verify what is queued and in "
            "flight, the final delta included, before it aborts the rest (each left behind is logged; the next start "
            "copies it). 30s covers a delta of the default 10 MiB memory limit read, written and read back at 1 MiB/s; "
            "keep the pod's terminationGracePeriodSeconds above it."),
        Opt("backup-sync-verify", "sync.verify", choice("content", "metadata"), "content",
            "How a copy is verified before it counts. content: the copy is read back and its size and SHA-256 must "
            "equal those of the primary's bytes (a server-side copy reads the primary's object too). metadata: a "
            "server-side copy counts when the service reports the same size and content digest (S3 ETag, GCS CRC32C) for both "
            "objects, as rclone checks, without downloading them; copies the service cannot vouch for that way "
            "(streamed between providers, SSE-C/KMS, differing digests) are still verified by content."),
    ],
    "logging": [
        Opt("log-level", "log_level", log_level, "info", "debug, info, warning or error (or the Go tool's 0-6)."),
        Opt("log-format", "log_format", choice("text", "json"), "text", "text or json."),
    ],
}

# Flags this tool accepts for compatibility with the Go tool, ignoring their value.
COMPAT_IGNORED = ["use-etcd-wrapper", "enable-snapshot-lease-renewal", "enable-member-lease-renewal", "k8s-heartbeat-duration",
                  "full-snapshot-lease-name", "delta-snapshot-lease-name", "etcd-connection-timeout-leader-election"]


def _click_option(opt: Opt) -> Callable:
    names = [f"--{opt.name}"] + [f"--{a}" for a in opt.aliases]
    if opt.short:
        names.insert(0, f"-{opt.short}")
    default_text = opt.default
    if isinstance(default_text, timedelta):
        default_text = format_duration(default_text)
    elif isinstance(default_text, list):
        default_text = ",".join(default_text)
    help_text = opt.help + (f" [default: {default_text}]" if default_text not in ("", None, []) else "")
    if opt.env:
        help_text += f" [env: {', '.join(opt.env)}]"
    kwargs: dict[str, Any] = {"default": None, "help": help_text, "show_default": False}
    if opt.is_bool:
        kwargs.update(is_flag=False, flag_value="true", metavar="BOOL")
    elif opt.multiple:
        kwargs.update(multiple=True, metavar="LIST")
    else:
        kwargs.update(metavar="TEXT")
    return click.option(*names, opt.name.replace("-", "_"), **kwargs)


def add_options(*groups: str, extra: list[Opt] | None = None) -> Callable:
    """Decorate a click command with the flags of ``groups`` (and config/compat flags)."""

    # command_runner resolves --log-level/--log-format for every command, so every command takes them.
    groups = tuple(dict.fromkeys((*groups, "logging")))

    def decorate(fn):
        opts = [o for g in groups for o in GROUPS[g]] + (extra or [])
        for opt in reversed(opts):
            fn = _click_option(opt)(fn)
        fn = click.option("--config-file", "config_file", default=None, metavar="PATH",
                          help="YAML file of flag values keyed by flag name (flags and environment win).")(fn)
        return fn

    return decorate


def _file_values(path: str | None) -> dict:
    if not path:
        return {}
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"--config-file: cannot read {path!r} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"--config-file: {path!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config-file: {path!r} must be a mapping of flag names to values")
    return {str(k).lstrip("-"): v for k, v in data.items()}


def _set(config: Config, dest: str, value: Any) -> None:
    target = config
    *path, attr = dest.split(".")
    for p in path:
        target = getattr(target, p)
    if isinstance(target, dict):
        target[attr] = value
    else:
        setattr(target, attr, value)


def _parse(opt: Opt, raw: Any, origin: str) -> Any:
    try:
        if opt.multiple:
            items = raw if isinstance(raw, (list, tuple)) else [raw]
            return [opt.parse(part.strip()) for item in items for part in str(item).split(",") if part.strip()]
        if isinstance(raw, bool) and opt.is_bool:
            return raw
        return opt.parse(str(raw) if not isinstance(raw, str) else raw)
    except ValueError as exc:
        shown = "******" if opt.secret else str(raw if not isinstance(raw, tuple) else ",".join(raw))
        raise ConfigError(f"invalid value {shown!r} for {origin}: expected {exc}") from None


def resolve(params: dict, *groups: str, extra: list[Opt] | None = None) -> Config:
    """Build the Config from click's parsed ``params`` with flag > env > file > default."""
    config = Config()
    file_values = _file_values(params.get("config_file"))
    known = {o.name for g in groups for o in GROUPS[g]} | {o.name for o in extra or []}
    known |= {a for g in groups for o in GROUPS[g] for a in o.aliases}
    unknown = sorted(set(file_values) - known - set(COMPAT_IGNORED))
    if unknown:
        raise ConfigError(f"--config-file: unknown key {unknown[0]!r} for this command")
    origins = config.extra.setdefault("origins", {})  # flag name -> where its value came from
    for opt in [o for g in groups for o in GROUPS[g]] + (extra or []):
        raw = params.get(opt.name.replace("-", "_"))
        if opt.multiple and raw == ():
            raw = None
        if raw is not None:
            origin = f"--{opt.name}"
        elif (env := next((e for e in opt.env if os.environ.get(e) not in (None, "")), None)) is not None:
            raw, origin = os.environ[env], f"environment variable {env}"
        elif (key := next((k for k in (opt.name, *opt.aliases) if k in file_values), None)) is not None:
            raw, origin = file_values[key], f"{key!r} in --config-file"
        else:
            origins[opt.name] = "default"
            _set(config, opt.dest, list(opt.default) if isinstance(opt.default, list) else opt.default)
            continue
        origins[opt.name] = origin
        _set(config, opt.dest, _parse(opt, raw, origin))
    # The Go tool's ignored flags: their values are still checked as the Go tool checks them.
    config.extra["compat"] = {n: v for n in COMPAT_IGNORED if (v := next(
        (x for x in (params.get(f"compat_{n.replace('-', '_')}"), file_values.get(n)) if x is not None), None)) is not None}
    return config


def secret_values(config: Config) -> list[str]:
    """Every secret the configuration carries (for log masking and /config redaction)."""
    return [config.etcd.password] if config.etcd.password else []
