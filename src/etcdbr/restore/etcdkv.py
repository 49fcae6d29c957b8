"""A small synchronous etcd v3 client for the temporary etcd a restore drives.

The restore is an ordered conversation with one local member (one transaction per revision,
at most two in flight), so blocking gRPC calls and futures on aetcd's generated stubs are
simpler and faster than an event loop. Only plaintext loopback is needed: the member is ours.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterable

import grpc
from aetcd.rpc import rpc_pb2 as pb
from aetcd.rpc import rpc_pb2_grpc as stubs

from ..errors import EtcdError

ALL_KEYS = b"\0"
# etcd bounds what it sends; our side must accept anything the member returns.
_RECEIVE_UNLIMITED = -1


class EtcdKV:
    """Blocking calls against one endpoint (``host:port``)."""

    def __init__(self, endpoint: str, *, max_send_bytes: int = 10 * 1024 * 1024, timeout: float = 60.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_send_message_length", max_send_bytes),
                ("grpc.max_receive_message_length", _RECEIVE_UNLIMITED),
            ],
        )
        self.kv = stubs.KVStub(self._channel)
        self.maintenance = stubs.MaintenanceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "EtcdKV":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, fn, *args, timeout: float | None = None, **kwargs):
        try:
            return fn(*args, timeout=timeout or self.timeout, **kwargs)
        except grpc.RpcError as exc:
            raise EtcdError(f"etcd {self.endpoint}: {what} failed: {rpc_error_text(exc)}") from exc

    # -- reads -------------------------------------------------------------------------------
    def revision(self) -> int:
        """The member's current revision (header of a count-only range over a single key)."""
        resp = self._call("range", self.kv.Range, pb.RangeRequest(key=ALL_KEYS, count_only=True))
        return resp.header.revision

    def status(self) -> pb.StatusResponse:
        return self._call("status", self.maintenance.Status, pb.StatusRequest())

    def iter_all(self, page: int = 1000) -> Iterable:
        """Every key-value at one revision, in key order, paged."""
        start, rev = ALL_KEYS, 0
        while True:
            resp = self._call("range", self.kv.Range,
                              pb.RangeRequest(key=start, range_end=ALL_KEYS, limit=page, revision=rev))
            rev = rev or resp.header.revision
            yield from resp.kvs
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    # -- writes ------------------------------------------------------------------------------
    def txn(self, ops: list[pb.RequestOp]) -> pb.TxnResponse:
        """One unconditional transaction; raises grpc.RpcError untranslated so callers can react
        to specific codes (quota, size)."""
        return self.kv.Txn(pb.TxnRequest(success=ops), timeout=self.timeout)

    def txn_future(self, ops: list[pb.RequestOp], compare: list[pb.Compare]) -> grpc.Future:
        """Send a conditional transaction without waiting for it (its result raises grpc.RpcError)."""
        return self.kv.Txn.future(pb.TxnRequest(compare=compare, success=ops), timeout=self.timeout)

    def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        self._call("compact", self.kv.Compact, pb.CompactionRequest(revision=revision, physical=physical),
                   timeout=timeout)

    def defragment(self, *, timeout: float | None = None) -> None:
        self._call("defragment", self.maintenance.Defragment, pb.DefragmentRequest(), timeout=timeout)

    def disarm_nospace(self) -> None:
        self._call("alarm", self.maintenance.Alarm,
                   pb.AlarmRequest(action=pb.AlarmRequest.DEACTIVATE, memberID=0, alarm=pb.NOSPACE))

    def snapshot(self, out: BinaryIO, *, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Stream the Maintenance Snapshot RPC into ``out``; returns (bytes written, sha256 of
        everything but the last 32 bytes, the last 32 bytes) so the caller can check etcd's
        trailer without reading the file again."""
        total = 0
        tail = b""
        hasher = hashlib.sha256()
        try:
            for resp in self.maintenance.Snapshot(pb.SnapshotRequest(), timeout=timeout or self.timeout):
                blob = resp.blob
                out.write(blob)
                total += len(blob)
                # Hash lazily: the last 32 bytes seen so far may be the trailer.
                data = tail + blob
                hasher.update(data[:-32])
                tail = data[-32:]
        except grpc.RpcError as exc:
            raise EtcdError(f"etcd {self.endpoint}: snapshot failed: {rpc_error_text(exc)}") from exc
        return total, hasher.digest(), tail


def put_op(key: bytes, value: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def delete_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))


def modified_at(key: bytes, revision: int) -> pb.Compare:
    """True while ``key``'s last modification is at ``revision``."""
    return pb.Compare(target=pb.Compare.MOD, key=key, mod_revision=revision, result=pb.Compare.EQUAL)


def absent(key: bytes) -> pb.Compare:
    """True while ``key`` does not exist."""
    return pb.Compare(target=pb.Compare.VERSION, key=key, version=0, result=pb.Compare.EQUAL)


def rpc_error_text(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return f"{details} ({code.name if code else 'unknown'})"
