"""A stand-in of the Kubernetes ``coordination.k8s.io/v1`` Lease endpoints, owned by the tests.

No kube-apiserver can be installed from the package registries here, so the tests of the
Kubernetes leases talk to this instead, through a real kubeconfig file (:meth:`LeaseAPI.kubeconfig`)
and the tool's real Kubernetes client (lightkube). It implements what the API server does for
Leases and nothing more:

* ``GET``, ``PUT``, ``PATCH`` of ``/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}``
  and ``POST`` (create) of ``.../namespaces/{ns}/leases``;
* ``resourceVersion``: a counter bumped by every write; a ``PUT``, or a merge patch, carrying
  another version than the stored one is refused with 409 Conflict (optimistic locking);
  ``POST`` of an existing name is 409 AlreadyExists; a missing lease is 404 NotFound; errors are
  ``Status`` objects as the API server sends them;
* ``PATCH`` with ``application/merge-patch+json`` (RFC 7386) and
  ``application/strategic-merge-patch+json`` (the same for a Lease: it has no lists);
* bearer-token authentication (401 otherwise).

Every request is recorded (``requests``: method, path, body) for the tests to inspect.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from ._proc import LOCALHOST, free_port

PREFIX = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


def _json(body: Any, status: int = 200) -> web.Response:
    # exactly the API server's Content-Type (clients compare it, charset-less)
    return web.Response(body=json.dumps(body).encode(), status=status, headers={"Content-Type": "application/json"})


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return _json(body, code)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class LeaseAPI:
    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.leases: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._version = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    # -- the store ---------------------------------------------------------------------------
    def _bump(self, lease: dict) -> dict:
        self._version += 1
        lease.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        return lease

    def create(self, namespace: str, name: str, spec: dict | None = None, annotations: dict | None = None) -> dict:
        """A lease as etcd-druid creates it (the tool only updates leases)."""
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                              "creationTimestamp": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
                 "spec": dict(spec or {})}
        if annotations:
            lease["metadata"]["annotations"] = dict(annotations)
        with self._lock:
            self.leases[(namespace, name)] = self._bump(lease)
            return copy.deepcopy(lease)

    def get(self, namespace: str, name: str) -> dict:
        with self._lock:
            return copy.deepcopy(self.leases[(namespace, name)])

    # -- HTTP ------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler):
        body = await request.text() if request.can_read_body else ""
        self.requests.append((request.method, request.path, json.loads(body) if body else None))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _get(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        with self._lock:
            lease = self.leases.get(key)
            if lease is None:
                return _status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
            return _json(lease)

    async def _put(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        body = await request.json()
        with self._lock:
            current = self.leases.get(key)
            if current is None:
                return _status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
            given = body.get("metadata", {}).get("resourceVersion")
            if given != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io '
                                                f'"{key[1]}": the object has been modified; please apply your '
                                                "changes to the latest version and try again")
            body["metadata"] = {**current["metadata"], **body.get("metadata", {})}
            self.leases[key] = self._bump(body)
            return _json(body)

    async def _patch(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if request.content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            return _status(415, "UnsupportedMediaType", f"the stand-in does not implement {request.content_type}")
        patch = await request.json()
        with self._lock:
            current = self.leases.get(key)
            if current is None:
                return _status(404, "NotFound", f'leases.coordination.k8s.io "{key[1]}" not found')
            given = (patch.get("metadata") or {}).get("resourceVersion")
            if given is not None and given != current["metadata"]["resourceVersion"]:
                return _status(409, "Conflict", f'Operation cannot be fulfilled on leases.coordination.k8s.io '
                                                f'"{key[1]}": the object has been modified; please apply your '
                                                "changes to the latest version and try again")
            updated = merge_patch(current, patch)
            updated["metadata"].pop("resourceVersion", None)
            self.leases[key] = self._bump(updated)
            return _json(updated)

    async def _post(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        body = await request.json()
        name = body.get("metadata", {}).get("name", "")
        with self._lock:
            if (ns, name) in self.leases:
                return _status(409, "AlreadyExists", f'leases.coordination.k8s.io "{name}" already exists')
        return _json(self.create(ns, name, body.get("spec"), body.get("metadata", {}).get("annotations")), 201)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> "LeaseAPI":
        app = web.Application(middlewares=[self._auth])
        one = PREFIX + "/{name}"
        app.router.add_get(one, self._get)
        app.router.add_put(one, self._put)
        app.router.add_patch(one, self._patch)
        app.router.add_post(PREFIX, self._post)
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, LOCALHOST, self.port).start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="lease-api", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Lease API stand-in did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig file that points a Kubernetes client at this stand-in."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "sidecar", "user": {"token": self.token}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "sidecar",
                                                         "namespace": namespace}}],
        }))
        return path
