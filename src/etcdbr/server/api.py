"""The HTTP API of ``server`` (compatibility.md §6), served by aiohttp in the server's event loop.

Paths and JSON shapes are the Go tool's; HTTP methods are not enforced (any verb works, as
there). Error responses carry a small JSON body ``{"error": ...}`` where Go sent none.

Deliberate differences:

* A follower forwards ``/snapshot/full`` and ``/snapshot/delta`` to the backup leader's sidecar as
  the Go server does (:func:`_forward`); when that fails it answers 503 with
  ``{"error": "not the backup leader: ..."}`` where the Go server answers 405 without a body.
  ``/snapshot/latest`` on a follower is answered from the store listing (what the leader's
  in-memory view is built from) instead of being forwarded.
* ``/config`` renders etcd's member configuration as the Go server does (:mod:`.etcdconfig`);
  this tool's own effective configuration (flag-keyed YAML, or JSON with ``?format=json``, secrets
  masked) is at ``/effective-config``.
* ``/snapshot/sync`` and ``/sync/status`` belong to the dual-endpoint copier.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import ssl
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .. import logs, metrics
from ..config import parse_bool
from ..errors import EtcdbrError
from ..snapshot import latest_chain
from . import configview

if TYPE_CHECKING:  # pragma: no cover
    from .app import BackupServer

log = logging.getLogger(__name__)

NOT_LEADER = "not the backup leader"
SERVER_KEY: web.AppKey[BackupServer] = web.AppKey("server")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=logs.redact(json.dumps(data)), status=status, content_type="application/json")


def _error(status: int, message: str, **fields: Any) -> web.Response:
    return _json({"error": logs.redact(message), **fields}, status=status)


def _server(request: web.Request) -> "BackupServer":
    return request.app[SERVER_KEY]


def _not_leader(server: "BackupServer") -> web.Response:
    return _error(503, NOT_LEADER, role=server.role.value)


def _plain(value: Any) -> Any:
    """Make a copier result JSON-serialisable whatever its type."""
    for name in ("to_json", "as_dict", "to_dict"):
        fn = getattr(value, name, None)
        if callable(fn):
            return _plain(fn())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- health and initialization ---------------------------------------------------------------
async def healthz(request: web.Request) -> web.Response:
    healthy = _server(request).healthy
    return web.Response(text=json.dumps({"health": healthy}, separators=(",", ":")),
                        status=200 if healthy else 503, content_type="application/json")


async def initialization_start(request: web.Request) -> web.Response:
    server = _server(request)
    await server.start_initialization(request.query.get("mode"))
    return web.Response(status=200)


async def initialization_status(request: web.Request) -> web.Response:
    return web.Response(text=_server(request).initialization.report(), content_type="text/plain")


# -- snapshots -------------------------------------------------------------------------------
#: Marks a request a follower forwarded, so that it is never forwarded again (two sidecars that
#: each take the other for the leader during an election would bounce it otherwise).
FORWARDED = "X-Etcdbr-Forwarded-By"
#: Hop-by-hop headers a proxy does not pass on (RFC 9110 7.6.1), plus what aiohttp sets itself.
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length"}


async def _forward(request: web.Request, server: "BackupServer") -> web.Response:
    """Hand a snapshot trigger to the backup leader's sidecar, as the Go server does: find it
    through etcd, check its /healthz, then pass the request on and its answer back."""
    import aiohttp

    if request.headers.get(FORWARDED):
        return _error(503, f"{NOT_LEADER} (a forwarded request is not forwarded again)", role=server.role.value)
    try:
        leader = await server.backup_leader_url()
    except EtcdbrError as exc:
        return _error(503, f"{NOT_LEADER}: cannot find the backup leader ({exc})", role=server.role.value)
    own = {f"{h}:{server.config.server.port}" for h in (server.config.server.host, request.host.rsplit(":", 1)[0])}
    if leader.split("://", 1)[1] in own or request.host == leader.split("://", 1)[1]:
        # etcd's leader is on this host and the sidecars do not each have their own address (the
        # Go tool's assumption): the leader's sidecar cannot be reached at its member's host
        return _error(503, f"{NOT_LEADER}: the backup leader's sidecar would be at {leader}, where this one "
                      "listens (sidecars sharing a host need their own addresses to forward)", role=server.role.value)
    tls: ssl.SSLContext | bool = True  # the default verification (unused for http)
    if leader.startswith("https:"):
        tls = ssl.create_default_context(cafile=server.config.etcd.cacert or None)
    snapshot_timeout = server.config.etcd.snapshot_timeout.total_seconds()
    timeout = aiohttp.ClientTimeout(total=snapshot_timeout + 60, connect=10)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
    headers[FORWARDED] = f"{server.config.server.host}:{server.config.server.port}"
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{leader}/healthz", ssl=tls, timeout=aiohttp.ClientTimeout(total=10)) as health:
                healthy = health.status == 200 and (await health.json(content_type=None)).get("health") is True
            if not healthy:
                return _error(503, f"{NOT_LEADER}: the backup leader at {leader} is not healthy",
                              role=server.role.value)
            log.info("forwarding the request to the backup leader", extra={"path": request.path, "leader": leader})
            async with session.request(request.method, f"{leader}{request.path_qs}", headers=headers,
                                       data=await request.read(), ssl=tls) as answer:
                body = await answer.read()
                return web.Response(body=body, status=answer.status,
                                    headers={k: v for k, v in answer.headers.items() if k.lower() not in _HOP})
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return _error(503, f"{NOT_LEADER}: the backup leader at {leader} did not answer ({type(exc).__name__}: {exc})",
                      role=server.role.value)


def _snapshotter_or_response(server: "BackupServer"):
    if not server.has_provider:
        return None, _error(405, "no storage provider configured, so there is no snapshotter")
    snapshotter = server.leader_snapshotter
    if snapshotter is None:
        return None, None  # not the leader: the caller forwards
    if not getattr(snapshotter, "active", False):
        return None, _error(500, "snapshotter is not active yet")
    return snapshotter, None


async def snapshot_full(request: web.Request) -> web.Response:
    server = _server(request)
    final = False
    if request.query.get("final", "") != "":
        try:
            final = parse_bool(request.query["final"])
        except ValueError:
            return _error(400, "parameter 'final' must be true or false")
    snapshotter, refusal = _snapshotter_or_response(server)
    if refusal is not None:
        return refusal
    if snapshotter is None:
        return await _forward(request, server)
    try:
        snap = await snapshotter.take_full_snapshot(final=final)
    except EtcdbrError as exc:
        log.warning("Skipped triggering out-of-schedule full snapshot", extra={"error": logs.redact(str(exc))})
        return _error(500, str(exc))
    return _json(snap.to_json() if snap is not None else None)


async def snapshot_delta(request: web.Request) -> web.Response:
    server = _server(request)
    snapshotter, refusal = _snapshotter_or_response(server)
    if refusal is not None:
        return refusal
    if snapshotter is None:
        return await _forward(request, server)
    # With scheduled deltas off (--delta-snapshot-period below 1s) the snapshotter watches just
    # long enough to take this one (the Go tool answers 500 here: upstream issue #965).
    try:
        snap = await snapshotter.take_delta_snapshot()
    except EtcdbrError as exc:
        log.warning("Skipped triggering out-of-schedule delta snapshot", extra={"error": logs.redact(str(exc))})
        return _error(500, str(exc))
    return _json(snap.to_json() if snap is not None else None)


def _latest_json(full, deltas) -> dict:
    return {
        "fullSnapshot": full.to_json() if full is not None else None,
        "deltaSnapshots": [d.to_json() for d in deltas] if full is not None or deltas else None,
    }


async def snapshot_latest(request: web.Request) -> web.Response:
    import asyncio

    server = _server(request)
    if not server.has_provider:
        return _error(405, "no storage provider configured, so there is no snapshotter")
    snapshotter = server.leader_snapshotter
    if snapshotter is not None:
        full, deltas = snapshotter.latest()
        return _json(_latest_json(full, deltas))
    if server.primary is None:
        return _not_leader(server)
    try:
        snaps = await asyncio.to_thread(server.primary.list)
    except EtcdbrError as exc:
        return _error(500, str(exc))
    full, deltas = latest_chain(snaps)
    return _json(_latest_json(full, deltas))


# -- dual endpoint ---------------------------------------------------------------------------
async def snapshot_sync(request: web.Request) -> web.Response:
    server = _server(request)
    if not server.sync_configured:
        return _error(405, "backup sync is not enabled (--backup-sync-enabled with a secondary store)")
    if server.role.value != "Leader":
        return _not_leader(server)
    copier = server.copier
    if copier is None:
        return _error(409, "no backup copier is running (single endpoint mode; see the startup log)")
    try:
        result = await copier.sync_once()
    except EtcdbrError as exc:
        return _error(500, str(exc))
    return _json(_plain(result))


async def sync_status(request: web.Request) -> web.Response:
    server = _server(request)
    if not server.sync_configured:
        return _json({"enabled": False})
    copier = server.copier
    if copier is None:
        reason = NOT_LEADER if server.role.value != "Leader" else "no backup copier is running (single endpoint mode)"
        return _json({"enabled": True, "active": False, "role": server.role.value, "reason": reason})
    status = _plain(copier.status())
    if isinstance(status, dict):
        status = {"enabled": True, "active": True, "role": server.role.value, **status}
    return _json(status)


# -- configuration and metrics ---------------------------------------------------------------
async def etcd_config(request: web.Request) -> web.Response:
    """etcd's member configuration, as the Go server renders it for etcd-wrapper."""
    from . import etcdconfig

    try:
        text = await etcdconfig.render(_server(request).config)
    except EtcdbrError as exc:
        log.warning("cannot serve etcd's member configuration", extra={"error": logs.redact(str(exc))})
        return _error(500, str(exc))
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def effective_config(request: web.Request) -> web.Response:
    server = _server(request)
    fmt = "json" if request.query.get("format") == "json" else "yaml"
    text = configview.render(server.config, server.config_groups, fmt)
    if fmt == "json":
        return web.Response(text=text, content_type="application/json")
    return web.Response(text=text, content_type="application/yaml")


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    # on_response_prepare: also covers 404s and other responses no handler of ours made.
    response.headers["Strict-Transport-Security"] = "max-age=31536000"
    response.headers["Content-Security-Policy"] = "default-src 'self'"


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a handler bug answers 500, never a traceback page
        log.warning("HTTP handler failed", extra={"path": request.path,
                                                  "error": logs.redact(f"{type(exc).__name__}: {exc}")})
        return _error(500, "internal error")


ROUTES = {
    "/healthz": healthz,
    "/initialization/start": initialization_start,
    "/initialization/status": initialization_status,
    "/snapshot/full": snapshot_full,
    "/snapshot/delta": snapshot_delta,
    "/snapshot/latest": snapshot_latest,
    "/snapshot/sync": snapshot_sync,
    "/sync/status": sync_status,
    "/config": etcd_config,
    "/effective-config": effective_config,
    "/metrics": metrics_handler,
}


def build_app(server: "BackupServer", *, tls: bool) -> web.Application:
    app = web.Application(middlewares=[_errors])
    if tls:
        app.on_response_prepare.append(_security_headers)
    app[SERVER_KEY] = server
    for path, handler in ROUTES.items():
        app.router.add_route("*", path, handler)
    return app


def ssl_context(cert: str, key: str) -> ssl.SSLContext:
    """Server TLS from PEM files (checked by the caller to exist)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
