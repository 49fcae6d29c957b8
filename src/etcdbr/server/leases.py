"""Kubernetes leases, as the Go server keeps them for etcd-druid.

etcd-druid creates three kinds of ``coordination.k8s.io/v1`` Lease in the pod's namespace and
reads them; the sidecar only updates them (a missing lease is an error logged as a WARN, as with
the Go tool):

* **full snapshot lease** (``--full-snapshot-lease-name``, ``full-snapshot-revisions``): holder
  identity = the last revision of the latest full snapshot, renew time = that snapshot's creation
  time. Updated after every full snapshot, and a minute after a term starts (for the full
  snapshot a previous leader took); a failed update is retried every minute until it succeeds.
  The update is a merge patch carrying the lease's resourceVersion (a conflict re-reads the
  lease, up to 4 times), and never lowers the revision.
* **delta snapshot lease** (``--delta-snapshot-lease-name``, ``delta-snapshot-revisions``):
  holder identity = the last revision of the latest delta after the latest full snapshot (``0``
  when there is none and the lease has no holder yet), renew time = now. Updated after every delta.
  druid's compaction job fires when the two revisions drift apart.
* **member lease** (named after the member: ``$POD_NAME`` after ``member-name-prefix-``): holder
  identity ``<member id hex>:<cluster id hex>:Leader|Member`` from etcd's status of
  ``--endpoints[0]``, renew time = now, annotation ``member.etcd.gardener.cloud/tls-enabled`` =
  whether every peer URL of the member is https. Renewed every ``--k8s-heartbeat-duration`` (30s)
  whether this sidecar leads or not, first one heartbeat after start.

Snapshot leases need ``--enable-snapshot-lease-renewal``, the member lease
``--enable-member-lease-renewal``; both need ``POD_NAMESPACE``. The Kubernetes API is reached with
the pod's service account in a cluster, else ``$KUBECONFIG`` or ``~/.kube/config`` (lightkube,
the ``k8s`` extra). Each update is bounded by 60s.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from ..errors import ConfigError, EtcdbrError, not_installed
from ..snapshot import Snapshot

log = logging.getLogger(__name__)

FULL_LEASE = "full-snapshot-revisions"
DELTA_LEASE = "delta-snapshot-revisions"
HEARTBEAT = timedelta(seconds=30)
#: Retry interval of a failed full snapshot lease update, and the delay of the first one of a term.
FULL_RETRY_INTERVAL = 60.0
UPDATE_TIMEOUT = 60.0
#: client-go's retry.DefaultBackoff: 4 attempts on a conflict.
CONFLICT_ATTEMPTS = 4
TLS_ANNOTATION = "member.etcd.gardener.cloud/tls-enabled"


@dataclass
class LeaseSettings:
    snapshot_leases: bool = False
    member_lease: bool = False
    full_name: str = FULL_LEASE
    delta_name: str = DELTA_LEASE
    heartbeat: timedelta = HEARTBEAT

    @classmethod
    def from_config(cls, config) -> "LeaseSettings":
        """From the Go tool's flags (they land in ``config.extra["compat"]``)."""
        given = config.extra.get("compat", {})
        return cls(snapshot_leases=bool(given.get("enable-snapshot-lease-renewal", False)),
                   member_lease=bool(given.get("enable-member-lease-renewal", False)),
                   full_name=given.get("full-snapshot-lease-name") or FULL_LEASE,
                   delta_name=given.get("delta-snapshot-lease-name") or DELTA_LEASE,
                   heartbeat=given.get("k8s-heartbeat-duration") or HEARTBEAT)

    @property
    def any(self) -> bool:
        return self.snapshot_leases or self.member_lease


class LeaseError(EtcdbrError):
    pass


def micro_time(when: datetime) -> str:
    """Kubernetes' MicroTime: RFC 3339 in UTC with microseconds."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def kube_client(namespace: str | None = None):
    """A lightkube client for ``namespace`` (default: ``$POD_NAMESPACE``): in-cluster service
    account, else $KUBECONFIG or ~/.kube/config."""
    try:
        import httpx2
        from lightkube import AsyncClient, KubeConfig
        from lightkube.core.exceptions import ConfigError as KubeConfigError
    except ImportError:
        raise not_installed("Kubernetes leases (--enable-snapshot-lease-renewal, --enable-member-lease-renewal)",
                            "lightkube", "k8s") from None
    namespace = namespace or pod_namespace()
    try:
        config = KubeConfig.from_env()
    except KubeConfigError as exc:
        raise ConfigError(f"Kubernetes leases: no Kubernetes configuration (service account, $KUBECONFIG or "
                          f"~/.kube/config): {exc}") from None
    return AsyncClient(config, namespace=namespace, timeout=httpx2.Timeout(UPDATE_TIMEOUT))


class LeaseKeeper:
    """Updates the leases of one sidecar (``client``: a lightkube AsyncClient)."""

    def __init__(self, settings: LeaseSettings, client, *, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.client = client
        self.clock = clock
        self._full_task: asyncio.Task | None = None

    # -- the API calls ---------------------------------------------------------------------
    async def _get(self, name: str):
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.coordination_v1 import Lease

        try:
            return await self.client.get(Lease, name)
        except ApiError as exc:
            raise LeaseError(f"cannot fetch lease {name}: {exc.status.code} {exc.status.message}") from None

    async def _patch(self, name: str, patch: dict) -> None:
        from lightkube.resources.coordination_v1 import Lease
        from lightkube.types import PatchType

        await self.client.patch(Lease, name, patch, patch_type=PatchType.MERGE)

    @staticmethod
    def _holder_revision(lease, name: str) -> int | None:
        holder = lease.spec.holderIdentity if lease.spec is not None else None
        if holder is None:
            return None
        try:
            return int(holder)
        except ValueError:
            raise LeaseError(f"lease {name}: holder identity {holder!r} is not a revision") from None

    # -- the snapshot leases ---------------------------------------------------------------
    async def update_full(self, snap: Snapshot) -> None:
        """Holder = the full snapshot's revision (never lowered), renew time = its creation time."""
        from lightkube.core.exceptions import ApiError

        name = self.settings.full_name
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            lease = await self._get(name)
            held = self._holder_revision(lease, name)
            if held is not None and held > snap.last_revision:
                return
            spec: dict[str, Any] = {"renewTime": micro_time(snap.created_on)}
            if held is None or held < snap.last_revision:
                spec["holderIdentity"] = str(snap.last_revision)
            try:
                await self._patch(name, {"metadata": {"resourceVersion": lease.metadata.resourceVersion},
                                         "spec": spec})
            except ApiError as exc:
                if exc.status.code == 409 and attempt < CONFLICT_ATTEMPTS:
                    continue  # someone else wrote it: read again
                raise LeaseError(f"cannot update lease {name}: {exc.status.code} {exc.status.message}") from None
            log.info("renewed full snapshot lease", extra={"lease": name, "revision": snap.last_revision})
            return

    async def update_delta(self, deltas: Sequence[Snapshot]) -> None:
        """Holder = the latest delta's revision (never lowered; ``0`` for none), renew time = now."""
        from lightkube.core.exceptions import ApiError

        name = self.settings.delta_name
        lease = await self._get(name)
        held = self._holder_revision(lease, name)
        spec: dict[str, Any] = {"renewTime": micro_time(datetime.fromtimestamp(self.clock(), tz=timezone.utc))}
        if deltas:
            last = deltas[-1].last_revision
            if held is None or held < last:
                spec["holderIdentity"] = str(last)
        elif held is None:
            spec["holderIdentity"] = "0"
        try:
            await self._patch(name, {"spec": spec})
        except ApiError as exc:
            raise LeaseError(f"cannot update lease {name}: {exc.status.code} {exc.status.message}") from None
        log.info("renewed delta snapshot lease", extra={"lease": name, "revision": spec.get("holderIdentity", held)})

    async def full_until_done(self, latest: Callable[[], Snapshot | None], delay: float = 0.0) -> None:
        """The full snapshot lease, retried every minute until an update succeeds (the Go tool's
        full snapshot lease timer). ``latest()`` gives the full snapshot at each attempt."""
        await asyncio.sleep(delay)
        while True:
            snap = latest()
            if snap is not None:
                try:
                    await asyncio.wait_for(self.update_full(snap), UPDATE_TIMEOUT)
                    return
                except Exception as exc:  # noqa: BLE001 - a lease never stops backups; the API's errors vary
                    log.warning("full snapshot lease update failed; retrying", extra={
                        "lease": self.settings.full_name, "error": str(exc), "retry_in_seconds": FULL_RETRY_INTERVAL})
            await asyncio.sleep(FULL_RETRY_INTERVAL)

    def watch_snapshotter(self, snapshotter) -> None:
        """Follow a term's snapshotter: each full snapshot and each delta updates its lease."""
        def latest_full() -> Snapshot | None:
            return snapshotter.latest()[0]

        def on_snapshot(snap: Snapshot):
            if snap.is_full:
                self._restart_full(self.full_until_done(latest_full))
                return None
            return self._delta_quietly(snapshotter.latest()[1])

        snapshotter.add_listener(on_snapshot)
        # a full snapshot a previous leader took (or this term's startup delta) still counts
        self._restart_full(self.full_until_done(latest_full, delay=FULL_RETRY_INTERVAL))

    async def _delta_quietly(self, deltas: Sequence[Snapshot]) -> None:
        try:
            await asyncio.wait_for(self.update_delta(deltas), UPDATE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a lease never stops backups; the API's errors vary
            log.warning("delta snapshot lease update failed", extra={"lease": self.settings.delta_name,
                                                                     "error": str(exc)})

    def _restart_full(self, coro) -> None:
        if self._full_task is not None:
            self._full_task.cancel()
        self._full_task = asyncio.get_running_loop().create_task(coro, name="full-snapshot-lease")

    async def stop_snapshot_leases(self) -> None:
        task, self._full_task = self._full_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- the member lease -----------------------------------------------------------------
    async def renew_member(self, name: str, status, peer_tls: bool) -> None:
        role = "Leader" if status.is_leader else "Member"
        await self._get(name)  # as the Go tool: the lease must exist (etcd-druid creates it)
        from lightkube.core.exceptions import ApiError

        holder = f"{status.member_id:x}:{status.cluster_id:x}:{role}"
        patch = {"metadata": {"annotations": {TLS_ANNOTATION: "true" if peer_tls else "false"}},
                 "spec": {"holderIdentity": holder,
                          "renewTime": micro_time(datetime.fromtimestamp(self.clock(), tz=timezone.utc))}}
        try:
            await self._patch(name, patch)
        except ApiError as exc:
            raise LeaseError(f"cannot renew member lease {name}: {exc.status.code} {exc.status.message}") from None
        log.debug("renewed member lease", extra={"lease": name, "holder": holder})

    async def heartbeat(self, stop: asyncio.Event, name: str, status_fn, peer_tls: bool) -> None:
        """Renew the member lease every heartbeat until ``stop``."""
        from ..retry import wait_unless_stopped

        period = self.settings.heartbeat.total_seconds()
        log.info("started member lease renewal", extra={"lease": name, "period_seconds": period})
        while not await wait_unless_stopped(stop, period):
            try:
                status = await status_fn()
                await asyncio.wait_for(self.renew_member(name, status, peer_tls), UPDATE_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - a lease never stops backups; the API's errors vary
                log.warning("member lease renewal failed", extra={"lease": name, "error": str(exc)})
        log.info("stopped member lease renewal", extra={"lease": name})


def member_lease_name() -> str:
    """The member's name as the Go tool derives it: ``$POD_NAME`` after the ``member-name-prefix``
    of etcd's config file (when the file exists and sets one)."""
    from ..config import read_yaml_mapping
    from ..etcdconf import config_path

    pod = os.environ.get("POD_NAME", "").strip()
    if not pod:
        raise ConfigError("--enable-member-lease-renewal needs POD_NAME (the member lease is named after the pod)")
    path, explicit = config_path()
    prefix = None
    if explicit or os.path.exists(path):
        conf = read_yaml_mapping(path, unreadable="cannot read etcd config file {path!r} ({reason})",
                                 invalid="etcd config file {path} is not valid YAML{where}",
                                 not_mapping="etcd config file {path} must be a YAML mapping")
        prefix = conf.get("member-name-prefix")
    return f"{prefix}-{pod}" if isinstance(prefix, str) and prefix else pod


def pod_namespace() -> str:
    namespace = os.environ.get("POD_NAMESPACE", "").strip()
    if not namespace:
        raise ConfigError("Kubernetes leases need POD_NAMESPACE (the pod's namespace)")
    return namespace
