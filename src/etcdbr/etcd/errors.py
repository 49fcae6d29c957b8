"""A failed etcd call as one line: ``etcd <endpoint>: <what> failed: <details> (<gRPC code>)``."""

from __future__ import annotations

import asyncio

import grpc

from .. import logs
from ..errors import EtcdError

# Failures of a call (or of a channel closed under it by a reconnect elsewhere).
RPC_ERRORS = (grpc.RpcError, grpc.aio.BaseError, asyncio.TimeoutError, OSError)


def describe(exc: BaseException) -> str:
    """``details (CODE)`` of a gRPC error, ``Type: text`` of anything else."""
    code = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and callable(code):
        status = code()
        details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
        return f"{details} ({status.name if status else 'unknown'})"
    return f"{type(exc).__name__}: {exc}"


def grpc_code(exc: BaseException) -> grpc.StatusCode | None:
    code = getattr(exc, "code", None)
    return code() if isinstance(exc, grpc.RpcError) and callable(code) else None


def etcd_error(exc: BaseException, endpoint: str, what: str) -> EtcdError:
    """``exc`` as an EtcdError naming the endpoint and the call (secrets redacted); its
    ``grpc_code`` tells callers an expired auth token (reconnect) from an unreachable member."""
    if isinstance(exc, EtcdError):
        return exc
    error = EtcdError(f"etcd {endpoint}: {what} failed: {logs.redact(describe(exc))}")
    error.grpc_code = grpc_code(exc)
    return error


def needs_reconnect(exc: BaseException) -> bool:
    """True for failures a fresh channel and auth token may cure (etcd restarted, token expired)."""
    return getattr(exc, "grpc_code", None) in (grpc.StatusCode.UNAUTHENTICATED,)
