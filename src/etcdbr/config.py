"""Typed configuration shared by every command, with every default, and its value syntaxes.

Every flag's default is the default of a field here, defined once: the flag reads it from the
dataclass (``etcdbr.cli.options``). Values arrive as text from flags, environment variables or a
YAML file; the parsers below turn text into typed values or raise :class:`ValueError` with what
was expected, which the CLI's parameter types (``etcdbr.cli.types``) turn into one line naming the
flag.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlparse

from .snapstore.providers import PROVIDERS, UNSUPPORTED_PROVIDERS  # noqa: F401 - the flags' choices

MIN_CHUNK_SIZE = 5 * 1024 * 1024


# -- value syntaxes -------------------------------------------------------------------------
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> timedelta:
    """Go's ``time.ParseDuration`` syntax: ``300ms``, ``20s``, ``1h30m``, ``-1.5h``, ``0``."""
    s = str(text).strip()
    if s in ("0", "+0", "-0"):
        return timedelta(0)
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if not s:
        raise ValueError("a duration such as 30s, 5m or 1h30m")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError("a duration such as 30s, 5m or 1h30m")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return timedelta(seconds=sign * total)


def format_duration(d: timedelta) -> str:
    """Render like Go's ``Duration.String`` for whole seconds (``1h30m0s``); used in help and /config."""
    total = d.total_seconds()
    if total == 0:
        return "0s"
    sign = "-" if total < 0 else ""
    total = abs(total)
    if total < 1:
        return f"{sign}{total * 1000:g}ms"
    hours, rem = divmod(total, 3600)
    minutes, seconds = divmod(rem, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    out += f"{seconds:g}s"
    return sign + out


def parse_bool(text: str) -> bool:
    """pflag's ``strconv.ParseBool`` set."""
    t = str(text).strip()
    if t in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if t in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError("true or false")


def parse_int(text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ValueError("an integer") from None


def parse_cron(text: str) -> str:
    """A standard 5-field cron expression (validated, returned as given)."""
    from croniter import croniter

    expr = str(text).strip()
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise ValueError("a 5-field cron expression such as '0 */1 * * *'")
    return expr


def read_yaml_mapping(path: str, *, unreadable: str, invalid: str, not_mapping: str) -> dict:
    """A YAML file holding a mapping (an empty file: an empty one). The messages of the
    :class:`ConfigError` raised otherwise are templates with ``{path}``, ``{reason}`` (why the file
    cannot be read) and ``{where}`` (`` at line N`` of a syntax error)."""
    import yaml

    from .errors import ConfigError

    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(unreadable.format(path=path, reason=exc.strerror)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(invalid.format(path=path, where=where)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(not_mapping.format(path=path))
    return data


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with its zone (``2026-12-05T14:02:00Z``, ``...+01:00``; fractions allowed)."""
    from .delta import parse_go_time

    try:
        return parse_go_time(str(text).strip())
    except ValueError:
        raise ValueError("an RFC 3339 time with a zone, such as 2026-12-05T14:02:00Z") from None


def parse_url(text: str) -> str:
    t = str(text).strip()
    if not t:
        return ""
    parsed = urlparse(t)
    if not parsed.scheme or not parsed.netloc:
        raise ValueError("a URL such as https://s3.example.com:9000")
    return t


# -- configuration objects ------------------------------------------------------------------
@dataclass
class StoreConfig:
    """One snapstore endpoint. ``env_prefix`` selects whose credentials: '', SECONDARY_ or SOURCE_."""

    provider: str = ""
    container: str = ""
    prefix: str = ""
    endpoint_override: str = ""
    min_chunk_size: int = MIN_CHUNK_SIZE
    max_parallel_chunk_uploads: int = 5
    temp_dir: str = "/tmp"
    env_prefix: str = ""
    #: Longest wait for the service on one request (connecting, or between bytes of its answer).
    timeout: timedelta = timedelta(seconds=20)

    @property
    def effective_provider(self) -> str:
        return self.provider or "Local"

    @property
    def prefix_v2(self) -> str:
        """The Go tool always appends ``/v2`` to the configured prefix."""
        p = self.prefix.strip("/")
        return f"{p}/v2" if p else "v2"

    @property
    def role(self) -> str:
        return {"": "primary", "SECONDARY_": "secondary", "SOURCE_": "source"}.get(self.env_prefix, "store")

    @property
    def display(self) -> str:
        """``S3/bucket1``: how logs name an endpoint."""
        return f"{self.effective_provider}/{self.container}"

    def env(self, name: str) -> str | None:
        """An environment variable of this endpoint's credential family."""
        return os.environ.get(self.env_prefix + name)


@dataclass
class EtcdConnectionConfig:
    endpoints: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    service_endpoints: list[str] = field(default_factory=list)
    username: str = ""
    password: str = ""
    connection_timeout: timedelta = timedelta(seconds=30)
    snapshot_timeout: timedelta = timedelta(minutes=15)
    defrag_timeout: timedelta = timedelta(minutes=8)
    insecure_transport: bool = True
    insecure_skip_tls_verify: bool = True
    cert: str = ""
    key: str = ""
    cacert: str = ""


@dataclass
class SnapshotterConfig:
    schedule: str = "0 */1 * * *"
    delta_snapshot_period: timedelta = timedelta(seconds=20)
    delta_snapshot_memory_limit: int = 10 * 1024 * 1024
    garbage_collection_period: timedelta = timedelta(minutes=1)
    garbage_collection_policy: str = "Exponential"
    max_backups: int = 7
    delta_snapshot_retention_period: timedelta = timedelta(0)
    compress_snapshots: bool = True
    compression_policy: str = "gzip"
    defragmentation_schedule: str = "0 0 */3 * *"
    backoff_multiplier: int = 2
    backoff_attempt_limit: int = 6
    backoff_threshold_time: timedelta = timedelta(seconds=128)

    @property
    def compression(self) -> str | None:
        return self.compression_policy if self.compress_snapshots else None

    @property
    def delta_enabled(self) -> bool:
        return self.delta_snapshot_period >= timedelta(seconds=1)


@dataclass
class RestorationConfig:
    initial_cluster: str = "default=http://localhost:2380"
    initial_cluster_token: str = "etcd-cluster"
    initial_cluster_state: str = ""  # only from etcd's config file (ETCD_CONF): new or existing
    data_dir: str = "default.etcd"
    temp_snapshots_dir: str = "default.restoration.tmp"
    initial_advertise_peer_urls: list[str] = field(default_factory=lambda: ["http://localhost:2380"])
    name: str = "default"
    skip_hash_check: bool = False
    max_fetchers: int = 6
    max_call_send_message_size: int = 10 * 1024 * 1024
    max_request_bytes: int = 10 * 1024 * 1024
    max_txn_ops: int = 10240
    embedded_etcd_quota_bytes: int = 8 * 1024 * 1024 * 1024
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "30m"
    restore_from: str = "primary"
    etcd_bin_dir: str = ""
    # how deltas are replayed: "direct" (written into the restored db, see restore/direct.py) or
    # "etcd" (transactions through a temporary etcd, the Go tool's way)
    delta_replay: str = "direct"


@dataclass
class ServerConfig:
    port: int = 8080
    host: str = "0.0.0.0"
    server_cert: str = ""
    server_key: str = ""
    enable_profiling: bool = False
    reelection_period: timedelta = timedelta(seconds=5)


@dataclass
class SyncConfig:
    """The BackupCopier of the dual-endpoint feature."""

    enabled: bool = False
    period: timedelta = timedelta(minutes=5)
    max_retries: int = 2
    retry_backoff: timedelta = timedelta(seconds=30)
    concurrent_copies: int = 10
    max_delete_fraction: float = 0.5
    shutdown_grace: timedelta = timedelta(seconds=30)
    #: "content" (read back, SHA-256) or "metadata" (server-side copies: the service's size and
    #: content digest, content otherwise); see copier.BackupCopier._copy_verified.
    verify: str = "content"


@dataclass
class Config:
    """Everything a command may read. Commands fill only the groups they accept."""

    store: StoreConfig = field(default_factory=StoreConfig)
    secondary: StoreConfig = field(default_factory=lambda: StoreConfig(env_prefix="SECONDARY_"))
    source: StoreConfig = field(default_factory=lambda: StoreConfig(env_prefix="SOURCE_"))
    etcd: EtcdConnectionConfig = field(default_factory=EtcdConnectionConfig)
    snapshotter: SnapshotterConfig = field(default_factory=SnapshotterConfig)
    restoration: RestorationConfig = field(default_factory=RestorationConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    log_level: str = "info"
    log_format: str = "text"
    extra: dict = field(default_factory=dict)

    @property
    def secondary_configured(self) -> bool:
        return bool(self.secondary.provider)


# -- settings of single commands ------------------------------------------------------------------
# The flags only one command has keep their values in ``Config.extra`` under the field's name;
# these dataclasses hold their defaults (and those of a shared setting whose default differs for
# one command, such as the server's --restore-from).
@dataclass
class RestoreOptions:
    restore_from: str = "primary"
    dry_run: bool = False
    replace_data_dir: bool = False


@dataclass
class PointInTimeOptions:
    """``restore`` and ``initialize``: where a restore stops (None: the end of the chain)."""

    to_revision: int | None = None
    to_time: datetime | None = None


@dataclass
class InitializeOptions:
    validation_mode: str = "full"
    #: Multi-member clusters: how long to wait for the peers to show a leader (--quorum-wait).
    quorum_wait: timedelta = timedelta(seconds=30)


@dataclass
class ServerOptions:
    #: The initializer's restore source; None: auto with a secondary store, else primary
    #: (decided once the stores are known).
    restore_from: str | None = None


@dataclass
class CompactOptions:
    defragment: bool = True
    etcd_snapshot_timeout: timedelta = timedelta(minutes=30)
    etcd_defrag_timeout: timedelta = timedelta(minutes=8)
    # Accepted for compatibility with the Go tool, without effect (the lease names are checked).
    metrics_scrape_wait_duration: timedelta = timedelta(0)
    enable_snapshot_lease_renewal: bool = False
    full_snapshot_lease_name: str = "full-snapshot-revisions"
    delta_snapshot_lease_name: str = "delta-snapshot-revisions"


@dataclass
class CopyOptions:
    max_backups_to_copy: int = -1     # -1: all
    max_backup_age: int = -1          # days; -1: all
    wait_for_final_snapshot: bool = False
    wait_for_final_snapshot_timeout: timedelta = timedelta(0)  # 0: no limit
    delete_orphans: bool = False
    dry_run: bool = False


@dataclass
class VerifyOptions:
    output: str = "table"
    max_parallel_reads: int = 4
    names_only: bool = False


@dataclass
class ListOptions:
    output: str = "table"


@dataclass
class HistoryOptions:
    """``snapshot history``: the window searched (None: open) and what is printed."""

    prefix: bool = False
    from_revision: int | None = None
    to_revision: int | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None
    show_values: bool = False
    output: str = "table"
