"""Thin async helpers over ``aetcd``: connecting (TLS, auth), status with revision, defragmentation,
and the two streams the snapshotter lives on (Maintenance.Snapshot and a whole-keyspace Watch).

aetcd's own ``status()`` drops the header revision and its watch API hands out single events, which
hides the response boundaries the delta snapshots depend on; both are therefore done here on the
raw gRPC stubs of aetcd's channel.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import AsyncIterator, Sequence
from urllib.parse import urlparse

import aetcd
import grpc
from aetcd import rpc

from . import logs
from .config import EtcdConnectionConfig
from .errors import ConfigError, EtcdError

log = logging.getLogger(__name__)

DEFAULT_PORT = 2379
# A watch response may carry many revisions of large values; gRPC's 4 MiB default would turn a
# busy etcd into RESOURCE_EXHAUSTED errors. etcd bounds its own messages.
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": -1,
    "grpc.max_send_message_length": -1,
    # Notice a silently dead connection (etcd host gone) instead of watching it forever. etcd
    # accepts pings every 5s or more (--grpc-keepalive-min-time), and only while a call is open.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.http2.max_pings_without_data": 0,
    # etcd's snapshot stream outruns an upload: with BDP probing gRPC grows the receive window and
    # holds tens of MiB of the stream in native memory ahead of our bounded hand-over queue (peak
    # RSS 169-190 MiB for a 1 GiB snapshot). A fixed 1 MiB window keeps the stream as fast next to
    # etcd and the process at 136-139 MiB (bench/README.md, memory).
    "grpc.http2.bdp_probe": 0,
    "grpc.http2.lookahead_bytes": 1024 * 1024,
}
# Failures of a call (or of a channel closed under it by a reconnect elsewhere).
_RPC_ERRORS = (grpc.RpcError, grpc.aio.BaseError, aetcd.ClientError, asyncio.TimeoutError, OSError)
# Whole keyspace: key "\0" with range_end "\0" means every key >= "\0" (the Go tool's prefix "").
ALL_KEYS = b"\0"


@dataclass(frozen=True)
class Status:
    revision: int
    leader_id: int
    member_id: int
    db_size: int
    raft_term: int
    raft_index: int = 0
    version: str = ""

    @property
    def is_leader(self) -> bool:
        return self.leader_id != 0 and self.leader_id == self.member_id


class EtcdClient(aetcd.Client):
    """aetcd's client with TLS and without aetcd's plaintext-only channel."""

    def __init__(self, *args, credentials: grpc.ChannelCredentials | None = None,
                 target_name_override: str = "", endpoint: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._credentials = credentials
        self._target_name_override = target_name_override
        self.endpoint = endpoint

    async def connect(self) -> None:  # noqa: C901 - mirrors aetcd's connect with a TLS channel
        if self._connected.is_set():
            return
        if self._is_connecting:
            await asyncio.wait_for(self._connected.wait(), self._connect_wait_timeout)
            return
        try:
            self._is_connecting = True
            target = f"{self._host}:{self._port}"
            options = dict(self._options)
            if self._credentials is not None:
                if self._target_name_override:
                    options["grpc.ssl_target_name_override"] = self._target_name_override
                self.channel = grpc.aio.secure_channel(target, self._credentials, options=list(options.items()))
            else:
                self.channel = grpc.aio.insecure_channel(target, options=list(options.items()))
            if self._username is not None and self._password is not None:
                self.auth_stub = rpc.AuthStub(self.channel)
                try:
                    resp = await self.auth_stub.Authenticate(
                        rpc.AuthenticateRequest(name=self._username, password=self._password), timeout=self._timeout)
                    self.metadata = (("token", resp.token),)
                except grpc.aio.AioRpcError as exc:
                    # As etcd's Go client: credentials for an etcd without auth are not an error.
                    if "authentication is not enabled" not in (exc.details() or ""):
                        await self.channel.close()
                        self.channel = None
                        raise _etcd_error(exc, self.endpoint, "authenticate") from None
                    self.metadata = None
            self.kvstub = rpc.KVStub(self.channel)
            self.clusterstub = rpc.ClusterStub(self.channel)
            self.leasestub = rpc.LeaseStub(self.channel)
            self.maintenancestub = rpc.MaintenanceStub(self.channel)
            self.watchstub = rpc.WatchStub(self.channel)
            self._watcher = aetcd.watcher.Watcher(self.watchstub, timeout=self._timeout, metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False

    async def reauthenticate(self) -> None:
        """Drop the channel so the next call connects and authenticates again (expired token)."""
        await self.close()


def _parse_endpoint(endpoint: str) -> tuple[str, int, bool]:
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https", "unix", "unixs") or not parsed.hostname:
        raise ConfigError(f"invalid etcd endpoint {endpoint!r}: expected http(s)://host:port")
    return parsed.hostname, parsed.port or DEFAULT_PORT, parsed.scheme in ("https", "unixs")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path!r}: {exc.strerror}") from None


def _tls_credentials(config: EtcdConnectionConfig, host: str, port: int) -> tuple[grpc.ChannelCredentials, str]:
    root = _read(config.cacert, "--cacert") if config.cacert else None
    cert = _read(config.cert, "--cert") if config.cert else None
    key = _read(config.key, "--key") if config.key else None
    if bool(cert) != bool(key):
        raise ConfigError("--cert and --key must be given together")
    override = ""
    if root is None and config.insecure_skip_tls_verify:
        # gRPC cannot switch certificate verification off. What --insecure-skip-tls-verify means
        # in practice (a self-signed or unknown CA) is approximated by trusting the certificate
        # the server presents, under the name it carries.
        try:
            pem = ssl.get_server_certificate((host, port), timeout=5)
        except OSError as exc:
            raise EtcdError(f"etcd {host}:{port}: cannot fetch the server certificate: {exc}") from None
        root = pem.encode()
        override = _certificate_name(pem) or ""
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=cert), override


def _certificate_name(pem: str) -> str | None:
    try:
        from cryptography import x509  # optional; only for the skip-verify approximation
    except ImportError:  # pragma: no cover
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = san.get_values_for_type(x509.DNSName)
            if names:
                return names[0]
        except x509.ExtensionNotFound:
            pass
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(cns[0].value) if cns else None
    except Exception:  # noqa: BLE001 - any parse failure just means no override
        return None


def connect(etcd_config: EtcdConnectionConfig, endpoint: str | None = None) -> EtcdClient:
    """A client for ``endpoint`` (default: the first of ``--endpoints``); it connects on first use.

    The snapshot and its revision fence must come from one member, so one client talks to exactly
    one endpoint.
    """
    endpoint = endpoint or (etcd_config.endpoints[0] if etcd_config.endpoints else "http://127.0.0.1:2379")
    host, port, https = _parse_endpoint(endpoint)
    credentials, override = None, ""
    if https or not etcd_config.insecure_transport:
        credentials, override = _tls_credentials(etcd_config, host, port)
    username = etcd_config.username or None
    password = etcd_config.password or None
    if password:
        logs.register_secret(password)
    if bool(username) != bool(password):
        raise ConfigError("--etcd-username and --etcd-password must be given together")
    return EtcdClient(
        host, port,
        username=username, password=password,
        timeout=max(1, int(etcd_config.connection_timeout.total_seconds())),
        options=dict(_CHANNEL_OPTIONS),
        credentials=credentials, target_name_override=override, endpoint=endpoint,
    )


def _etcd_error(exc: BaseException, endpoint: str, what: str) -> EtcdError:
    if isinstance(exc, EtcdError):
        return exc
    code = None
    if isinstance(exc, grpc.aio.AioRpcError):
        code = exc.code()
        detail = f"{code.name}: {exc.details()}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    error = EtcdError(f"etcd {endpoint}: {what} failed ({logs.redact(detail)})")
    # Callers tell an expired auth token (reconnect) from an unreachable member by this.
    error.grpc_code = code
    return error


def needs_reconnect(exc: BaseException) -> bool:
    """True for failures a fresh channel and auth token may cure (etcd restarted, token expired)."""
    return getattr(exc, "grpc_code", None) in (grpc.StatusCode.UNAUTHENTICATED,)


def _timeout(client: aetcd.Client, timeout: float | None) -> float | None:
    return timeout if timeout is not None else client._timeout


async def status(client: aetcd.Client, timeout: float | None = None) -> Status:
    """Status of the member ``client`` talks to, with its current (member-local) revision."""
    try:
        await client.connect()
        resp = await client.maintenancestub.Status(
            rpc.StatusRequest(), timeout=_timeout(client, timeout), metadata=client.metadata)
    except _RPC_ERRORS as exc:
        raise _etcd_error(exc, getattr(client, "endpoint", ""), "status") from None
    return Status(
        revision=resp.header.revision,
        leader_id=resp.leader,
        member_id=resp.header.member_id,
        db_size=resp.dbSize,
        raft_term=resp.raftTerm,
        raft_index=resp.raftIndex,
        version=resp.version,
    )


async def current_revision(client: aetcd.Client, timeout: float | None = None) -> int:
    """The cluster's current revision, read linearizably (a Range of one key that need not exist)."""
    try:
        await client.connect()
        resp = await client.kvstub.Range(
            rpc.RangeRequest(key=ALL_KEYS, limit=1, keys_only=True),
            timeout=_timeout(client, timeout), metadata=client.metadata)
    except _RPC_ERRORS as exc:
        raise _etcd_error(exc, getattr(client, "endpoint", ""), "read revision") from None
    return resp.header.revision


async def defragment(client: aetcd.Client, timeout: float | None = None) -> None:
    try:
        await client.connect()
        await client.maintenancestub.Defragment(
            rpc.DefragmentRequest(), timeout=_timeout(client, timeout), metadata=client.metadata)
    except _RPC_ERRORS as exc:
        raise _etcd_error(exc, getattr(client, "endpoint", ""), "defragment") from None


async def defragment_members(etcd_config: EtcdConnectionConfig, endpoints: Sequence[str] | None = None) -> list[str]:
    """Defragment every endpoint, followers before the leader (a defragmenting member stalls, and a
    stalled leader stalls the cluster). Returns the endpoints in the order done."""
    from . import metrics

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


async def snapshot_stream(client: aetcd.Client, timeout: float | None = None) -> AsyncIterator[bytes]:
    """The member's backend as etcd streams it: bbolt db then a 32-byte SHA-256 trailer, in chunks.

    etcd opens its read transaction before it sends the first chunk; the snapshotter relies on
    that for its revision fence. Closing the generator cancels the call.
    """
    try:
        await client.connect()
    except _RPC_ERRORS as exc:
        raise _etcd_error(exc, getattr(client, "endpoint", ""), "snapshot") from None
    call = client.maintenancestub.Snapshot(rpc.SnapshotRequest(), timeout=timeout, metadata=client.metadata)
    try:
        while True:
            try:
                resp = await call.read()
            except _RPC_ERRORS as exc:
                raise _etcd_error(exc, getattr(client, "endpoint", ""), "snapshot") from None
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


async def watch_responses(client: aetcd.Client, start_revision: int, *, key: bytes = ALL_KEYS,
                          range_end: bytes = ALL_KEYS, progress_notify: bool = False) -> AsyncIterator:
    """Raw ``WatchResponse`` messages carrying events, from ``start_revision`` (inclusive).

    One response never splits a revision (etcd batches whole revisions unless fragmenting is
    requested, which it is not here), so a consumer that handles each response without awaiting
    in between never sees half a revision. Raises :class:`WatchCompacted` when the start revision
    is gone, :class:`EtcdError` when the stream breaks.
    """
    endpoint = getattr(client, "endpoint", "")
    try:
        await client.connect()
    except _RPC_ERRORS as exc:
        raise _etcd_error(exc, endpoint, "watch") from None
    stub = getattr(client, "watchstub", None) or rpc.WatchStub(client.channel)
    call = stub.Watch(metadata=client.metadata)
    try:
        try:
            await call.write(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision, progress_notify=progress_notify)))
        except (*_RPC_ERRORS, asyncio.InvalidStateError) as exc:
            raise _etcd_error(exc, endpoint, "watch") from None
        while True:
            try:
                resp = await call.read()
            except _RPC_ERRORS as exc:
                raise _etcd_error(exc, endpoint, "watch") from None
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
