"""The Go etcdbrctl's ``--config-file`` format, read as this tool's flags.

The Go server unmarshals the file into its ``BackupRestoreComponentConfig`` (nested sections keyed
by the Go structs' JSON names: ``etcdConnectionConfig:``, ``snapshotterConfig:``, ...). Each
setting it reads maps onto the flag that sets the same thing here (:data:`SECTIONS`). As Go's JSON
decoding does, keys match whatever their case.

Precedence, the Go tool's: its server takes its configuration from the file alone once one is
given, so a value the file sets wins over the same flag and its environment variable (this tool
logs a WARN naming each flag so overridden). Unlike the Go tool, flags for settings the file does
not mention still apply. A key the Go tool does not read is ignored as the Go tool ignores it (its
own example file carries one, ``restorationConfig.restoreDataDir``), but with a WARN naming it, so
that a misspelt key does not fall back to a default unnoticed. A bad value is an error naming its
key (``'snapshotterConfig.deltaSnapshotPeriod' in --config-file``).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

# Go JSON key -> this tool's flag (None: a Go setting with no effect here, accepted and ignored).
_ETCD: dict[str, str | None] = {
    "endpoints": "endpoints", "serviceEndpoints": "service-endpoints", "username": "etcd-username",
    "password": "etcd-password", "connectionTimeout": "etcd-connection-timeout",
    "snapshotTimeout": "etcd-snapshot-timeout", "defragTimeout": "etcd-defrag-timeout",
    "insecureTransport": "insecure-transport", "insecureSkipVerify": "insecure-skip-tls-verify",
    "certFile": "cert", "keyFile": "key", "caFile": "cacert",
    # no flag in the Go tool either; the restoration's maxCallSendMsgSize is the one that counts
    "maxCallSendMsgSize": None,
}
_SERVER: dict[str, str | None] = {"port": "server-port", "enableProfiling": "enable-profiling",
                                   "server-cert": "server-cert", "server-key": "server-key"}
_SNAPSHOTTER: dict[str, str | None] = {
    "schedule": "schedule", "garbageCollectionPolicy": "garbage-collection-policy",
    "deltaSnapshotPeriod": "delta-snapshot-period", "deltaSnapshotMemoryLimit": "delta-snapshot-memory-limit",
    "garbageCollectionPeriod": "garbage-collection-period", "maxBackups": "max-backups",
    "deltaSnapshotRetentionPeriod": "delta-snapshot-retention-period",
}


def _store(prefix: str) -> dict[str, str | None]:
    return {
        "provider": f"{prefix}storage-provider", "container": f"{prefix}store-container",
        "endpointOverride": f"{prefix}store-endpoint-override", "prefix": f"{prefix}store-prefix",
        "tempDir": f"{prefix}snapstore-temp-directory",
        "maxParallelChunkUploads": f"{prefix}max-parallel-chunk-uploads", "minChunkSize": f"{prefix}min-chunk-size",
        # set by the Go tool itself (the environment prefix of a secondary or source store)
        "envPrefix": None, "isSource": None,
    }


_COMPRESSION: dict[str, str | None] = {"policy": "compression-policy", "enabled": "compress-snapshots"}
_RESTORATION: dict[str, str | None] = {
    "initialCluster": "initial-cluster", "initialClusterToken": "initial-cluster-token", "dataDir": "data-dir",
    "tempDir": "restoration-temp-snapshots-dir", "name": "name",
    "autoCompactionRetention": "auto-compaction-retention", "autoCompactionMode": "auto-compaction-mode",
    "initialAdvertisePeerURLs": "initial-advertise-peer-urls", "MaxTxnOps": "max-txn-ops",
    "MaxRequestBytes": "max-request-bytes", "maxCallSendMsgSize": "max-call-send-message-size",
    "embeddedEtcdQuotaBytes": "embedded-etcd-quota-bytes", "maxFetchers": "max-fetchers",
    "skipHashCheck": "skip-hash-check",
}
_HEALTH: dict[str, str | None] = {
    "fullSnapshotLeaseName": "full-snapshot-lease-name", "deltaSnapshotLeaseName": "delta-snapshot-lease-name",
    "heartbeatDuration": "k8s-heartbeat-duration", "snapshotLeaseRenewalEnabled": "enable-snapshot-lease-renewal",
    "memberLeaseRenewalEnabled": "enable-member-lease-renewal",
}
_LEADER_ELECTION: dict[str, str | None] = {"reelectionPeriod": "reelection-period",
                                            "etcdConnectionTimeout": "etcd-connection-timeout-leader-election"}
_BACKOFF: dict[str, str | None] = {"multiplier": "backoff-multiplier", "attemptLimit": "backoff-attempt-limit",
                                    "thresholdTime": "backoff-threshold-time"}
_SECONDARY: dict[str, str | None] = {"backupSyncEnabled": "backup-sync-enabled", "syncPeriod": "backup-sync-period"}

#: The sections of the Go tool's BackupRestoreComponentConfig.
SECTIONS: dict[str, dict[str, str | None]] = {
    "etcdConnectionConfig": _ETCD, "serverConfig": _SERVER, "snapshotterConfig": _SNAPSHOTTER,
    "snapstoreConfig": _store(""), "secondarySnapstoreConfig": _SECONDARY, "compressionConfig": _COMPRESSION,
    "restorationConfig": _RESTORATION, "healthConfig": _HEALTH, "leaderElectionConfig": _LEADER_ELECTION,
    "exponentialBackoffConfig": _BACKOFF,
}
#: Top-level settings that are not sections.
SCALARS = {"defragmentationSchedule": "defragmentation-schedule", "useEtcdWrapper": "use-etcd-wrapper"}
#: The secondary store's own section inside secondarySnapstoreConfig (untagged Go field).
SECONDARY_STORE = ("StoreConfig", _store("secondary-"))


def _fold(keys) -> dict[str, str]:
    return {k.lower(): k for k in keys}


_TOP = _fold([*SECTIONS, *SCALARS])


def is_go_format(data: dict) -> bool:
    """Whether a config file's mapping is the Go tool's nested one (one of its section names at
    the top, whatever its case)."""
    return any(isinstance(k, str) and _TOP.get(k.lower()) in SECTIONS for k in data)


def flatten(data: dict) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """``(values by flag name, the file's key path by flag name, keys the Go tool does not read)``
    of a Go-format mapping."""
    values: dict[str, Any] = {}
    paths: dict[str, str] = {}
    ignored: list[str] = []

    def put(flag: str | None, value: Any, path: str) -> None:
        if flag is None or value is None or value == "":
            return  # a Go setting with no effect here, or one left unset
        if flag in values:
            raise ConfigError(f"--config-file: {path!r} sets the same setting as {paths[flag]!r}")
        values[flag], paths[flag] = value, path

    def section(mapping: Any, fields: dict[str, str | None], where: str, nested=None) -> None:
        if mapping is None:
            return
        if not isinstance(mapping, dict):
            raise ConfigError(f"--config-file: {where!r} must be a mapping (the Go tool's format)")
        names = _fold(fields)
        sub = nested[0].lower() if nested else None
        for key, value in mapping.items():
            path = f"{where}.{key}"
            if nested and str(key).lower() == sub:
                section(value, nested[1], path)
                continue
            name = names.get(str(key).lower())
            if name is None:
                ignored.append(path)
                continue
            put(fields[name], value, path)

    for key, value in data.items():
        name = _TOP.get(str(key).lower())
        if name is None:
            ignored.append(str(key))
        elif name in SCALARS:
            put(SCALARS[name], value, str(key))
        else:
            section(value, SECTIONS[name], str(key),
                    SECONDARY_STORE if name == "secondarySnapstoreConfig" else None)
    return values, paths, ignored
