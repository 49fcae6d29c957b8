"""The async etcd client the sidecar lives on: one endpoint over one ``grpc.aio`` channel.

It connects (TLS, auth token) on first use and offers what the tool needs as module functions
taking the client: status with the header revision, a linearizable current revision,
defragmentation, membership changes, and the two streams the snapshotter lives on
(Maintenance.Snapshot and a whole-keyspace Watch handing out whole responses, whose boundaries
the delta snapshots depend on). Every failure is an :class:`~etcdbr.errors.EtcdError` naming the
endpoint and the call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Sequence

import grpc

from .. import logs
from ..config import EtcdConnectionConfig
from ..errors import ConfigError, EtcdError
from . import ALL_KEYS, proto
from .channel import CHANNEL_OPTIONS, parse_endpoint, tls_credentials
from .errors import RPC_ERRORS, describe, etcd_error, grpc_code, needs_reconnect

__all__ = [
    "ALL_KEYS", "EtcdClient", "Status", "WatchCompacted", "compact", "connect", "current_revision", "defragment",
    "defragment_members", "member_add", "member_list", "member_promote", "member_remove", "needs_reconnect",
    "snapshot_stream", "status", "watch_responses",
]

log = logging.getLogger(__name__)

# etcd's answers to a call with a token it no longer knows (simple tokens do not survive a
# restart), with no token while auth is on, or with one from before an auth change: a new token
# cures them all, as in etcd's Go client.
_STALE_TOKEN = ("invalid auth token", "user name is empty", "auth store is old")


@dataclass(frozen=True)
class Status:
    revision: int
    leader_id: int
    member_id: int
    db_size: int
    raft_term: int
    raft_index: int = 0
    version: str = ""
    is_learner: bool = False
    cluster_id: int = 0

    @property
    def is_leader(self) -> bool:
        return self.leader_id != 0 and self.leader_id == self.member_id


@dataclass(frozen=True)
class _Stubs:
    kv: proto.KVStub
    maintenance: proto.MaintenanceStub
    cluster: proto.ClusterStub
    watch: proto.WatchStub


class EtcdClient:
    """One etcd endpoint over one channel, opened (and logged in) on first use.

    ``close()`` drops the channel; the next call opens a new one. ``timeout`` (seconds) bounds
    each unary call unless the call names its own.
    """

    def __init__(self, endpoint: str, target: str, *, timeout: float,
                 credentials: grpc.ChannelCredentials | None = None, server_name: str = "",
                 username: str | None = None, password: str | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._target = target
        self._credentials = credentials
        self._options: dict[str, int | str] = dict(CHANNEL_OPTIONS)
        if server_name:  # check the server's certificate against this name instead of the host
            self._options["grpc.ssl_target_name_override"] = server_name
        self._username = username
        self._password = password
        self._token: str | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stubs: _Stubs | None = None
        self._connecting: asyncio.Lock | None = None

    # -- the channel -------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open the channel and log in (when a user is configured); a no-op once connected."""
        if self._stubs is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._stubs is not None:
                return
            options = list(self._options.items())
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(self._target, self._credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(self._target, options=options)
            try:
                await self._login(channel)
            except BaseException:
                await channel.close()
                raise
            self._channel = channel
            self._stubs = _Stubs(kv=proto.KVStub(channel), maintenance=proto.MaintenanceStub(channel),
                                 cluster=proto.ClusterStub(channel), watch=proto.WatchStub(channel))

    async def _login(self, channel: grpc.aio.Channel) -> None:
        if self._username is None or self._password is None:
            return
        request = proto.AuthenticateRequest(name=self._username, password=self._password)
        try:
            resp = await proto.AuthStub(channel).Authenticate(request, timeout=self.timeout)
        except RPC_ERRORS as exc:
            # As etcd's Go client: credentials for an etcd without auth are not an error.
            if "authentication is not enabled" in describe(exc):
                self._token = None
                return
            raise etcd_error(exc, self.endpoint, "authenticate") from None
        self._token = resp.token

    async def close(self) -> None:
        """Drop the channel (calls on it fail); never raises, as a broken channel is dropped anyway."""
        channel, self._channel, self._stubs, self._token = self._channel, None, None, None
        if channel is not None:
            try:
                await channel.close()
            except Exception as exc:  # noqa: BLE001 - a broken channel may fail to close; it is dropped anyway
                log.debug("closing the etcd channel failed", extra={"endpoint": self.endpoint, "error": str(exc)})

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The call metadata carrying the auth token (None without one)."""
        return (("token", self._token),) if self._token else None

    def _connected(self) -> _Stubs:
        if self._stubs is None:
            raise EtcdError(f"etcd {self.endpoint}: not connected")
        return self._stubs

    @property
    def kv(self) -> proto.KVStub:
        return self._connected().kv

    @property
    def maintenance(self) -> proto.MaintenanceStub:
        return self._connected().maintenance

    @property
    def cluster(self) -> proto.ClusterStub:
        return self._connected().cluster

    @property
    def watch(self) -> proto.WatchStub:
        return self._connected().watch

    # -- calls -------------------------------------------------------------------------------
    async def call(self, what: str, method: Callable[[EtcdClient], Any], request, timeout: float | None = None):
        """One unary call ``method(self)(request)``, connecting first. A stale auth token is
        renewed once; any failure raises :class:`EtcdError` saying ``what`` failed."""
        renewed = False
        while True:
            try:
                await self.connect()
                return await method(self)(request, timeout=self.timeout if timeout is None else timeout,
                                          metadata=self.metadata)
            except RPC_ERRORS as exc:
                if not renewed and self._stale_token(exc):
                    renewed = True
                    log.debug("etcd refused the auth token; logging in again", extra={"endpoint": self.endpoint})
                    await self._login(self._connected_channel())
                    continue
                raise etcd_error(exc, self.endpoint, what) from None

    def _stale_token(self, exc: BaseException) -> bool:
        if self._username is None or self._channel is None:
            return False
        return grpc_code(exc) == grpc.StatusCode.UNAUTHENTICATED or any(t in describe(exc) for t in _STALE_TOKEN)

    def _connected_channel(self) -> grpc.aio.Channel:
        assert self._channel is not None
        return self._channel


class SharedClient:
    """The one client a long-running component keeps (the server's leadership checks, the
    snapshotter): made by ``factory`` on first use, dropped after a failure so that the next use
    connects afresh, closed at the end. ``factory`` returns the client or an awaitable of it."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._client: EtcdClient | None = None

    async def get(self) -> EtcdClient:
        if self._client is None:
            client = self._factory()
            if inspect.isawaitable(client):
                client = await client
            self._client = client
        return self._client

    def forget(self) -> None:
        """Drop the client without closing it: it belongs to an event loop that is gone."""
        self._client = None

    async def reset(self) -> None:
        """Drop the client (:meth:`EtcdClient.close` never raises)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def connect(etcd_config: EtcdConnectionConfig, endpoint: str | None = None) -> EtcdClient:
    """A client for ``endpoint`` (default: the first of ``--endpoints``); it connects on first use.

    The snapshot and its revision fence must come from one member, so one client talks to exactly
    one endpoint.
    """
    endpoint = endpoint or (etcd_config.endpoints[0] if etcd_config.endpoints else "http://127.0.0.1:2379")
    host, port, https = parse_endpoint(endpoint)
    credentials, server_name = None, ""
    if https or not etcd_config.insecure_transport:
        credentials, server_name = tls_credentials(etcd_config, host, port)
    username = etcd_config.username or None
    password = etcd_config.password or None
    if password:
        logs.register_secret(password)
    if bool(username) != bool(password):
        raise ConfigError("--etcd-username and --etcd-password must be given together")
    return EtcdClient(endpoint, f"{host}:{port}", timeout=max(1, int(etcd_config.connection_timeout.total_seconds())),
                      credentials=credentials, server_name=server_name, username=username, password=password)


# -- unary calls -------------------------------------------------------------------------------
async def status(client: EtcdClient, timeout: float | None = None) -> Status:
    """Status of the member ``client`` talks to, with its current (member-local) revision."""
    resp = await client.call("status", lambda c: c.maintenance.Status, proto.StatusRequest(), timeout)
    return Status(
        revision=resp.header.revision,
        leader_id=resp.leader,
        member_id=resp.header.member_id,
        db_size=resp.dbSize,
        raft_term=resp.raftTerm,
        raft_index=resp.raftIndex,
        version=resp.version,
        is_learner=resp.isLearner,
        cluster_id=resp.header.cluster_id,
    )


async def current_revision(client: EtcdClient, timeout: float | None = None) -> int:
    """The cluster's current revision, read linearizably (a Range of one key that need not exist)."""
    resp = await client.call("read revision", lambda c: c.kv.Range,
                             proto.RangeRequest(key=ALL_KEYS, limit=1, keys_only=True), timeout)
    return resp.header.revision


async def compact(client: EtcdClient, revision: int, *, physical: bool = False, timeout: float | None = None) -> None:
    """Compact the keyspace's history up to ``revision`` (``physical``: return once it is gone from disk)."""
    await client.call("compact", lambda c: c.kv.Compact, proto.CompactionRequest(revision=revision, physical=physical),
                      timeout)


async def defragment(client: EtcdClient, timeout: float | None = None) -> None:
    await client.call("defragment", lambda c: c.maintenance.Defragment, proto.DefragmentRequest(), timeout)


async def defragment_members(etcd_config: EtcdConnectionConfig, endpoints: Sequence[str] | None = None) -> list[str]:
    """Defragment every endpoint, followers before the leader (a defragmenting member stalls, and a
    stalled leader stalls the cluster). Returns the endpoints in the order done."""
    from .. import metrics

    endpoints = list(endpoints or etcd_config.endpoints)
    timeout = etcd_config.defrag_timeout.total_seconds()
    clients = {ep: connect(etcd_config, ep) for ep in endpoints}
    try:
        order: list[tuple[bool, str]] = []
        for ep, client in clients.items():
            try:
                st = await status(client)
                order.append((st.is_leader, ep))
            except EtcdError:
                order.append((False, ep))  # defragment() reports it
        order.sort(key=lambda item: item[0])
        done = []
        for _, ep in order:
            start = asyncio.get_running_loop().time()
            ok = False
            try:
                await defragment(clients[ep], timeout)
                ok = True
                done.append(ep)
            finally:
                metrics.defragmentation_duration.labels(metrics.label_bool(ok), ep).observe(
                    asyncio.get_running_loop().time() - start)
        return done
    finally:
        for client in clients.values():
            await client.close()


async def member_list(client: EtcdClient, *, linearizable: bool = True, timeout: float | None = None) -> list:
    """The cluster's members (etcd's ``Member`` messages), read linearizably unless told not to."""
    resp = await client.call("member list", lambda c: c.cluster.MemberList,
                             proto.MemberListRequest(linearizable=linearizable), timeout)
    return list(resp.members)


async def member_add(client: EtcdClient, peer_urls: Sequence[str], *, learner: bool = False,
                     timeout: float | None = None):
    """Add a member; etcd's answer holds it (``.member``) and the membership after (``.members``)."""
    return await client.call("member add", lambda c: c.cluster.MemberAdd,
                             proto.MemberAddRequest(peerURLs=list(peer_urls), isLearner=learner), timeout)


async def member_remove(client: EtcdClient, member_id: int, *, timeout: float | None = None) -> None:
    await client.call(f"member remove {member_id:x}", lambda c: c.cluster.MemberRemove,
                      proto.MemberRemoveRequest(ID=member_id), timeout)


async def member_promote(client: EtcdClient, member_id: int, *, timeout: float | None = None) -> None:
    await client.call(f"member promote {member_id:x}", lambda c: c.cluster.MemberPromote,
                      proto.MemberPromoteRequest(ID=member_id), timeout)


# -- streams -----------------------------------------------------------------------------------
async def snapshot_stream(client: EtcdClient, timeout: float | None = None) -> AsyncGenerator[bytes, None]:
    """The member's backend as etcd streams it: bbolt db then a 32-byte SHA-256 trailer, in chunks.

    etcd opens its read transaction before it sends the first chunk; the snapshotter relies on
    that for its revision fence. Closing the generator cancels the call.
    """
    try:
        await client.connect()
    except RPC_ERRORS as exc:
        raise etcd_error(exc, client.endpoint, "snapshot") from None
    call = client.maintenance.Snapshot(proto.SnapshotRequest(), timeout=timeout, metadata=client.metadata)
    try:
        while True:
            try:
                resp = await call.read()
            except RPC_ERRORS as exc:
                raise etcd_error(exc, client.endpoint, "snapshot") from None
            if resp is grpc.aio.EOF:
                return
            if resp.blob:
                yield resp.blob
    finally:
        call.cancel()


class WatchCompacted(EtcdError):
    """The watch start revision is older than etcd's compaction point."""

    def __init__(self, start_revision: int, compact_revision: int) -> None:
        super().__init__(f"watch from revision {start_revision} impossible: etcd compacted up to {compact_revision}")
        self.start_revision = start_revision
        self.compact_revision = compact_revision


async def watch_responses(client: EtcdClient, start_revision: int, *, key: bytes = ALL_KEYS,
                          range_end: bytes = ALL_KEYS, progress_notify: bool = False) -> AsyncIterator:
    """Raw ``WatchResponse`` messages carrying events, from ``start_revision`` (inclusive).

    One response never splits a revision (etcd batches whole revisions unless fragmenting is
    requested, which it is not here), so a consumer that handles each response without awaiting
    in between never sees half a revision. Raises :class:`WatchCompacted` when the start revision
    is gone, :class:`EtcdError` when the stream breaks.
    """
    endpoint = client.endpoint
    try:
        await client.connect()
    except RPC_ERRORS as exc:
        raise etcd_error(exc, endpoint, "watch") from None
    call = client.watch.Watch(metadata=client.metadata)
    try:
        try:
            await call.write(proto.WatchRequest(create_request=proto.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision, progress_notify=progress_notify)))
        except (*RPC_ERRORS, asyncio.InvalidStateError) as exc:
            raise etcd_error(exc, endpoint, "watch") from None
        while True:
            try:
                resp = await call.read()
            except RPC_ERRORS as exc:
                raise etcd_error(exc, endpoint, "watch") from None
            if resp is grpc.aio.EOF:
                raise EtcdError(f"etcd {endpoint}: watch stream closed by the server")
            if resp.compact_revision:
                raise WatchCompacted(start_revision, resp.compact_revision)
            if resp.canceled:
                error = EtcdError(f"etcd {endpoint}: watch canceled ({resp.cancel_reason or 'no reason given'})")
                # etcd refuses a watch with a stale auth token (e.g. after it restarted) by
                # cancelling it as "permission denied" rather than with a gRPC status.
                if "permission denied" in resp.cancel_reason or "auth" in resp.cancel_reason:
                    error.grpc_code = grpc.StatusCode.UNAUTHENTICATED
                raise error
            if resp.events or progress_notify:
                yield resp
    finally:
        call.cancel()
