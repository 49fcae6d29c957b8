"""A small blocking etcd client for the temporary etcd a restore drives.

The restore is an ordered conversation with one local member (one transaction per revision,
at most two in flight), so blocking gRPC calls and futures are simpler and faster than an event
loop. Only plaintext loopback is needed: the member is ours.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

import grpc

from . import ALL_KEYS, proto
from .errors import etcd_error

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
        self.kv = proto.KVStub(self._channel)
        self.maintenance = proto.MaintenanceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "EtcdKV":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, what: str, method, request, *, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise etcd_error(exc, self.endpoint, what) from exc

    # -- reads -------------------------------------------------------------------------------
    def revision(self) -> int:
        """The member's current revision (header of a count-only range over a single key)."""
        return self._call("range", self.kv.Range, proto.RangeRequest(key=ALL_KEYS, count_only=True)).header.revision

    def status(self) -> proto.StatusResponse:
        return self._call("status", self.maintenance.Status, proto.StatusRequest())

    def iter_all(self, page: int = 1000) -> Iterator[proto.KeyValue]:
        """Every key-value at one revision, in key order, paged."""
        start, rev = ALL_KEYS, 0
        while True:
            resp = self._call("range", self.kv.Range,
                              proto.RangeRequest(key=start, range_end=ALL_KEYS, limit=page, revision=rev))
            rev = rev or resp.header.revision
            yield from resp.kvs
            if not resp.more or not resp.kvs:
                return
            start = resp.kvs[-1].key + b"\0"

    # -- writes ------------------------------------------------------------------------------
    def txn(self, ops: list[proto.RequestOp]) -> proto.TxnResponse:
        """One unconditional transaction; raises grpc.RpcError untranslated so callers can react
        to specific codes (quota, size)."""
        return self.kv.Txn(proto.TxnRequest(success=ops), timeout=self.timeout)

    def txn_future(self, ops: list[proto.RequestOp], compare: list[proto.Compare]) -> grpc.Future:
        """Send a conditional transaction without waiting for it (its result raises grpc.RpcError)."""
        return self.kv.Txn.future(proto.TxnRequest(compare=compare, success=ops), timeout=self.timeout)

    def compact(self, revision: int, *, physical: bool = True, timeout: float | None = None) -> None:
        self._call("compact", self.kv.Compact, proto.CompactionRequest(revision=revision, physical=physical),
                   timeout=timeout)

    def defragment(self, *, timeout: float | None = None) -> None:
        self._call("defragment", self.maintenance.Defragment, proto.DefragmentRequest(), timeout=timeout)

    def disarm_nospace(self) -> None:
        self._call("alarm", self.maintenance.Alarm,
                   proto.AlarmRequest(action=proto.AlarmRequest.DEACTIVATE, memberID=0, alarm=proto.NOSPACE))

    def snapshot(self, out: BinaryIO, *, timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """Stream the Maintenance Snapshot RPC into ``out``; returns (bytes written, sha256 of
        everything but the last 32 bytes, the last 32 bytes) so the caller can check etcd's
        trailer without reading the file again."""
        total = 0
        tail = b""
        hasher = hashlib.sha256()
        try:
            for resp in self.maintenance.Snapshot(proto.SnapshotRequest(), timeout=timeout or self.timeout):
                blob = resp.blob
                out.write(blob)
                total += len(blob)
                # Hash lazily: the last 32 bytes seen so far may be the trailer.
                data = tail + blob
                hasher.update(data[:-32])
                tail = data[-32:]
        except grpc.RpcError as exc:
            raise etcd_error(exc, self.endpoint, "snapshot") from exc
        return total, hasher.digest(), tail


def put_op(key: bytes, value: bytes) -> proto.RequestOp:
    return proto.RequestOp(request_put=proto.PutRequest(key=key, value=value))


def delete_op(key: bytes) -> proto.RequestOp:
    return proto.RequestOp(request_delete_range=proto.DeleteRangeRequest(key=key))


def modified_at(key: bytes, revision: int) -> proto.Compare:
    """True while ``key``'s last modification is at ``revision``."""
    return proto.Compare(target=proto.Compare.MOD, key=key, mod_revision=revision, result=proto.Compare.EQUAL)


def absent(key: bytes) -> proto.Compare:
    """True while ``key`` does not exist."""
    return proto.Compare(target=proto.Compare.VERSION, key=key, version=0, result=proto.Compare.EQUAL)
