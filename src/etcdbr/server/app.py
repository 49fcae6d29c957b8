"""The ``server`` lifecycle: HTTP API first, then stores, then leader election gating the backups.

Order of events (compatibility.md §4.1):

1. The HTTP API listens at once, unhealthy (503), so the etcd container's bootstrap script can
   call ``/initialization/start`` before etcd runs.
2. The stores are opened (``snapstore.open_stores``): a broken primary ends the process; a broken
   secondary means single-endpoint mode. Without ``--storage-provider`` there are no stores and
   no snapshotter, and health follows etcd's reachability.
3. Every ``--reelection-period`` the sidecar asks its own member (``--endpoints[0]``) for its
   status. While that member is the Raft leader, this sidecar runs a term: a
   :class:`~etcdbr.backup.BackupRunner` (the snapshotter, garbage collection, the defragmentation
   schedule and, with backup sync, the copier and garbage collection of the secondary), built anew
   for every term. Followers only serve the API.
4. SIGTERM/SIGINT, or the loss of leadership: the term ends within ``--backup-sync-shutdown-grace``.
   The snapshotter uploads the events it buffered as a last (``.final``) delta, and the copier
   copies it and whatever else is queued or in flight to the secondary before it stops (see
   ``BackupRunner.close``); on SIGTERM the API then closes, exit code 0.

Health (``/healthz``): 200 when etcd is reachable and has a leader and either this sidecar
follows, or it leads and the startup snapshot is done (or there is no storage provider); 503
otherwise, and while an initialization runs or the process stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Awaitable, Callable, TypeVar

from aiohttp import web

from .. import metrics
from ..backup import BackupRunner
from ..config import Config
from ..copier import BackupCopier
from ..errors import ConfigError, EtcdbrError, EtcdError
from ..etcd import client as etcdclient
from ..logs import redact
from ..snapshotter import Snapshotter
from ..snapstore import SnapStore, open_stores
from . import api
from .initialization import Initialization
from .leader import LeaderElector, Role
from .leases import LeaseKeeper

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The flag groups of ``server`` (also the keys ``/config`` serves).
SERVER_GROUPS = ("etcd", "store", "secondary", "sync", "snapshotter", "compression", "backoff",
                 "restoration", "server", "logging")
# Longest wait for one status answer in an election round (the Go tool's
# --etcd-connection-timeout-leader-election default).
ELECTION_TIMEOUT = 5.0


class BackupServer:
    """One ``server`` process. ``run()`` returns the exit code."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.config_groups = SERVER_GROUPS
        self.has_provider = bool(config.store.provider)
        self.sync_configured = bool(config.sync.enabled and config.secondary_configured and self.has_provider)
        self.primary: SnapStore | None = None
        self.secondary: SnapStore | None = None
        self.term: BackupRunner | None = None   # while leading
        self.stopping = False
        self._stop: asyncio.Event | None = None
        self._etcd = etcdclient.SharedClient(lambda: etcdclient.connect(self.config.etcd))
        self.initialization = Initialization(self._initialize)
        self.elector = LeaderElector(
            self._check_leader,
            period=config.server.reelection_period.total_seconds(),
            on_started_leading=self._start_term,
            on_stopped_leading=self._end_term,
            suspended=lambda: self.initialization.in_progress or self.stopping,
        )
        self.tls = self._tls_files()
        from .leases import LeaseSettings

        self.lease_settings = LeaseSettings.from_config(config)
        self.leases: LeaseKeeper | None = None  # once run() has a Kubernetes client

    # -- state the API reads -------------------------------------------------------------------
    @property
    def role(self) -> Role:
        return self.elector.role

    @property
    def healthy(self) -> bool:
        if self.stopping or self.initialization.in_progress:
            return False
        role = self.elector.role
        if role is Role.FOLLOWER:
            return True
        if role is not Role.LEADER:
            return False
        if not self.has_provider:
            return True
        term = self.term
        return term is not None and term.snapshotter is not None and bool(term.snapshotter.ready)

    @property
    def leader_snapshotter(self) -> Snapshotter | None:
        term = self.term
        if term is None or self.elector.role is not Role.LEADER:
            return None
        return term.snapshotter

    @property
    def copier(self) -> BackupCopier | None:
        term = self.term
        return term.copier if term is not None else None

    # -- configuration checks ------------------------------------------------------------------
    def _tls_files(self) -> tuple[str, str] | None:
        cert, key = self.config.server.server_cert, self.config.server.server_key
        if not cert and not key:
            return None
        if not (cert and key):
            raise ConfigError("--server-cert and --server-key must be given together")
        for flag, path in (("--server-cert", cert), ("--server-key", key)):
            if not os.path.isfile(path):
                raise ConfigError(f"{flag}: file {path!r} does not exist")
        return cert, key

    # -- etcd ----------------------------------------------------------------------------------
    async def _check_leader(self) -> bool:
        timeout = min(ELECTION_TIMEOUT, self.config.etcd.connection_timeout.total_seconds())
        try:
            status = await etcdclient.status(await self._etcd.get(), timeout=timeout)
        except EtcdError:
            await self._etcd.reset()
            raise
        metrics.is_learner.set(1 if status.is_learner else 0)
        if status.leader_id == 0:
            raise EtcdError("etcd has no leader (quorum lost or an election is running)")
        await self._update_cluster_size(timeout)
        return status.is_leader

    async def _update_cluster_size(self, timeout: float) -> None:
        """``etcdbr_cluster_size``: the members etcd lists (learners included). The Go tool sets it
        once from --initial-cluster; this follows scale-ups and member removals."""
        try:
            members = await etcdclient.member_list(await self._etcd.get(), linearizable=False, timeout=timeout)
        except EtcdError as exc:
            log.debug("member list failed; etcdbr_cluster_size unchanged", extra={"error": redact(str(exc))})
            return
        metrics.cluster_size.set(len(members))

    def _start_leases(self) -> asyncio.Task | None:
        """The Kubernetes leases the Go tool keeps (see :mod:`.leases`); the member heartbeat's task."""
        from . import leases

        settings = self.lease_settings
        if not settings.any:
            return None
        keeper = leases.LeaseKeeper(settings, leases.kube_client(), clock=self.clock)
        self.leases = keeper
        if not settings.member_lease:
            return None
        name = leases.member_lease_name()
        peer_urls = self.config.restoration.initial_advertise_peer_urls
        peer_tls = bool(peer_urls) and all(u.startswith("https://") for u in peer_urls)
        timeout = self.config.etcd.connection_timeout.total_seconds()

        async def status():
            return await etcdclient.status(await self._etcd.get(), timeout=timeout)

        assert self._stop is not None
        return asyncio.get_running_loop().create_task(keeper.heartbeat(self._stop, name, status, peer_tls),
                                                      name="member-lease")

    async def backup_leader_url(self) -> str:
        """The base URL of the backup leader's sidecar, found as the Go server finds it: etcd's
        leader (the status of --endpoints[0]), its first client URL's host, and this sidecar's
        --server-port (every sidecar listens on the same port of its member's host)."""
        from urllib.parse import urlsplit

        timeout = self.config.etcd.connection_timeout.total_seconds()
        client = await self._etcd.get()
        status = await etcdclient.status(client, timeout=timeout)
        if status.leader_id == 0:
            raise EtcdError("etcd has no leader (quorum lost or an election is running)")
        members = await etcdclient.member_list(client, linearizable=False, timeout=timeout)
        leader = next((m for m in members if m.ID == status.leader_id), None)
        if leader is None or not leader.clientURLs:
            raise EtcdError(f"etcd's leader {status.leader_id:x} has no client URL in the member list")
        host = urlsplit(leader.clientURLs[0]).hostname or ""
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.config.server.port}"

    async def cluster_endpoints(self) -> list[str]:
        """Client URLs of every member (for defragmentation), or ``--endpoints`` if unknown."""
        client = await self._etcd.get()
        try:
            members = await etcdclient.member_list(client, linearizable=False,
                                                   timeout=self.config.etcd.connection_timeout.total_seconds())
        except Exception as exc:  # noqa: BLE001 - fall back to what we were told
            log.debug("member list failed; defragmenting --endpoints", extra={"error": redact(str(exc))})
            return list(self.config.etcd.endpoints)
        urls = [m.clientURLs[0] for m in members if m.clientURLs]
        return urls or list(self.config.etcd.endpoints)

    # -- leadership ----------------------------------------------------------------------------
    async def _start_term(self) -> None:
        term = BackupRunner(self.config, self.primary, self.secondary, clock=self.clock,
                            member_endpoints=self.cluster_endpoints)
        self.term = term
        try:
            await term.start()
        except EtcdbrError as exc:
            log.error("could not start the backup leader's components", extra={"error": redact(str(exc))})
        if self.leases is not None and self.lease_settings.snapshot_leases and term.snapshotter is not None:
            self.leases.watch_snapshotter(term.snapshotter)

    async def _end_term(self, reason: str) -> None:
        term, self.term = self.term, None
        if self.leases is not None:
            await self.leases.stop_snapshot_leases()
        if term is not None:
            await term.close(self.config.sync.shutdown_grace.total_seconds())

    # -- initialization ------------------------------------------------------------------------
    async def start_initialization(self, mode: str | None) -> bool:
        return self.initialization.start(mode)

    async def _initialize(self, mode: str) -> None:
        # The data dir is about to be validated or replaced: no snapshots of it meanwhile.
        await self.elector.resign("initialization requested")
        from ..restore.initializer import Initializer

        await asyncio.to_thread(Initializer(self.config).run, mode)

    # -- lifecycle -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop is not None and not self._stop.is_set():
            log.info("stop requested; shutting down")
            self._stop.set()

    async def _until_stopped(self, coro: Awaitable[T]) -> tuple[bool, T | None]:
        """Await ``coro`` unless a stop comes first: ``(stopped, result)``."""
        assert self._stop is not None
        work = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if work.done():
            return False, work.result()
        work.cancel()
        return True, None

    async def _start_http(self) -> web.AppRunner:
        app = api.build_app(self, tls=self.tls is not None)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        ssl_context = api.ssl_context(*self.tls) if self.tls else None
        host, port = self.config.server.host, self.config.server.port
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise EtcdbrError(f"cannot serve the HTTP API on {host}:{port}: {exc.strerror or exc}") from None
        log.info("HTTP server started", extra={"address": f"{'https' if self.tls else 'http'}://{host}:{port}"})
        return runner

    async def run(self) -> int:
        self._stop = asyncio.Event()
        # As the Go server does at start: the size etcd's initial cluster names, until etcd answers.
        from ..restore.membership import cluster_size

        metrics.cluster_size.set(cluster_size(self.config.restoration.initial_cluster))
        if self.has_provider:
            # A data dir rolled back to a point in time must not be backed up into the old
            # timeline's prefix (restore/rollback.py): refused before anything starts.
            from ..restore.rollback import guard_configured

            await asyncio.to_thread(guard_configured, self.config, self.config.restoration.data_dir)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        runner = await self._start_http()
        try:
            if self.has_provider:
                stopped, stores = await self._until_stopped(asyncio.to_thread(open_stores, self.config))
                if stopped or stores is None:
                    return 0
                self.primary, self.secondary = stores
            else:
                log.warning("No snapstore storage provider configured. Will not start backup schedule.")
            log.info("waiting for etcd; backups run only while its member is the Raft leader",
                     extra={"endpoint": self.config.etcd.endpoints[0] if self.config.etcd.endpoints else ""})
            heartbeat = self._start_leases()
            await self.elector.run(self._stop)
            if heartbeat is not None:
                await heartbeat
            return 0
        finally:
            self.stopping = True
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.elector.resign("shutdown")
            await self.initialization.cancel()
            await runner.cleanup()
            await self._etcd.reset()
            for store in (self.primary, self.secondary):
                if store is not None:
                    store.close()
            log.info("server stopped")


def run_server(config: Config) -> int:
    """Run ``server`` until SIGTERM/SIGINT; the exit code."""
    return asyncio.run(BackupServer(config).run())


__all__ = ["BackupServer", "SERVER_GROUPS", "run_server"]
