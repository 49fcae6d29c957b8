"""The server's pieces without services: leader election transitions, the initialization state
machine, what /config serves, and the HTTP answers for each role."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import yaml
from aiohttp.test_utils import TestClient, TestServer

from etcdbr import logs
from etcdbr.config import Config
from etcdbr.errors import EtcdError
from etcdbr.server import api, configview
from etcdbr.server.app import SERVER_GROUPS
from etcdbr.server.initialization import Initialization
from etcdbr.server.leader import LeaderElector, Role
from etcdbr.snapshot import Kind, Snapshot


# -- leader election -------------------------------------------------------------------------
def test_elector_starts_and_stops_terms_on_changes_only():
    answers = [False, True, True, EtcdError("down"), True, False, False]
    events = []

    async def check():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def started():
        events.append("start")

    async def stopped(reason):
        events.append(f"stop:{reason}")

    async def scenario():
        elector = LeaderElector(check, 0.01, started, stopped)
        roles = [await elector.step() for _ in range(7)]
        return elector, roles

    elector, roles = asyncio.run(scenario())
    assert roles == [Role.FOLLOWER, Role.LEADER, Role.LEADER, Role.UNKNOWN, Role.LEADER, Role.FOLLOWER, Role.FOLLOWER]
    assert events == ["start", "stop:leadership unknown", "start", "stop:another member is the etcd leader"]
    assert not elector.leading


def test_elector_does_not_lead_while_suspended_and_resigns():
    events = []
    suspended = [False]

    async def check():
        return True

    async def started():
        events.append("start")

    async def stopped(reason):
        events.append(reason)

    async def scenario():
        elector = LeaderElector(check, 0.01, started, stopped, suspended=lambda: suspended[0])
        await elector.step()
        suspended[0] = True
        await elector.step()
        await elector.step()
        suspended[0] = False
        await elector.step()
        await elector.resign("shutdown")
        stop = asyncio.Event()
        stop.set()
        await elector.run(stop)  # returns at once when already stopped
        return elector

    elector = asyncio.run(scenario())
    assert events == ["start", "initialization in progress", "start", "shutdown"]
    assert elector.role is Role.UNKNOWN


# -- initialization --------------------------------------------------------------------------
async def _until(condition, timeout: float = 5.0) -> None:
    """Let the event loop run until ``condition()`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.001)


def test_initialization_states_are_reported_once():
    async def scenario():
        gate = asyncio.Event()
        modes = []

        async def runner(mode):
            modes.append(mode)
            await gate.wait()
            if mode == "sanity":
                raise RuntimeError("data dir is corrupt")

        init = Initialization(runner)
        assert init.report() == "New"
        assert init.start("bogus") and not init.start("full")
        await _until(lambda: modes == ["full"])  # the runner is at its gate
        assert init.in_progress and init.report() == "Progress" and init.report() == "Progress"
        gate.set()
        await _until(lambda: not init.in_progress)
        assert [init.report(), init.report()] == ["Successful", "New"]
        assert init.start("sanity")
        await _until(lambda: not init.in_progress)
        assert [init.report(), init.report()] == ["Failed", "New"]
        return modes

    assert asyncio.run(scenario()) == ["full", "sanity"]


# -- /config ---------------------------------------------------------------------------------
def test_config_view_masks_secrets_and_is_flag_keyed():
    config = Config()
    config.etcd.password = "etcd-secret-value-42"
    config.etcd.username = "root"
    config.store.provider = "S3"
    config.snapshotter.delta_snapshot_period = timedelta(seconds=5)
    logs.register_secret("another-registered-secret")
    config.store.prefix = "tenant/another-registered-secret"
    text = configview.render(config, SERVER_GROUPS)
    data = yaml.safe_load(text)
    assert data["etcd-password"] == "******" and data["etcd-username"] == "root"
    assert data["delta-snapshot-period"] == "5s" and data["storage-provider"] == "S3"
    assert data["endpoints"] == ["http://127.0.0.1:2379"]
    assert "etcd-secret-value-42" not in text and "another-registered-secret" not in text
    assert json.loads(configview.render(config, SERVER_GROUPS, "json")) == data
    assert configview.effective_config(Config(), SERVER_GROUPS)["etcd-password"] == ""


# -- HTTP answers per role -------------------------------------------------------------------
class StubSnapshotter:
    active = True
    ready = True

    def __init__(self):
        self.full = Snapshot(Kind.FULL, 0, 10, datetime(2024, 1, 1, tzinfo=timezone.utc), ".gz", prefix="p/v2")
        self.calls = []

    async def take_full_snapshot(self, final=False):
        self.calls.append(final)
        return self.full

    async def take_delta_snapshot(self):
        return None

    def latest(self):
        return self.full, []


def _server(**kw):
    base = dict(healthy=True, role=Role.LEADER, has_provider=True, leader_snapshotter=StubSnapshotter(),
                primary=None, sync_configured=False, copier=None, config=Config(), config_groups=SERVER_GROUPS)
    base.update(kw)
    server = SimpleNamespace(**base)
    server.initialization = Initialization(lambda mode: asyncio.sleep(0))

    async def start_initialization(mode):
        return server.initialization.start(mode)

    server.start_initialization = start_initialization
    return server


def _requests(server, paths, tls=False):
    async def scenario():
        client = TestClient(TestServer(api.build_app(server, tls=tls)))
        await client.start_server()
        try:
            out = []
            for path in paths:
                resp = await client.get(path)
                out.append((resp.status, await resp.text(), dict(resp.headers)))
            return out
        finally:
            await client.close()

    return asyncio.run(scenario())


def test_api_as_leader():
    server = _server()
    (h, full, final, bad, delta, latest, nothere) = _requests(server, [
        "/healthz", "/snapshot/full", "/snapshot/full?final=true", "/snapshot/full?final=maybe", "/snapshot/delta",
        "/snapshot/latest", "/nothere"], tls=True)
    assert h[:2] == (200, '{"health":true}')
    assert full[0] == 200 and json.loads(full[1])["snapName"] == "Full-00000000-00000010-1704067200.gz"
    assert final[0] == 200 and server.leader_snapshotter.calls == [False, True]
    assert bad[0] == 400
    assert delta[:2] == (200, "null")
    assert json.loads(latest[1]) == {"fullSnapshot": server.leader_snapshotter.full.to_json(), "deltaSnapshots": []}
    for _status, _, headers in (h, full, bad, nothere):
        assert headers["Strict-Transport-Security"] == "max-age=31536000"
        assert headers["Content-Security-Policy"] == "default-src 'self'"


def test_api_as_follower_and_without_provider():
    follower = _server(healthy=True, role=Role.FOLLOWER, leader_snapshotter=None)

    async def no_leader():
        raise EtcdError("etcd has no leader")

    follower.backup_leader_url = no_leader  # forwarding needs etcd: tests/integration/test_go_dropin_server.py
    (full, delta, sync) = _requests(follower, ["/snapshot/full", "/snapshot/delta", "/snapshot/sync"])
    assert full[0] == 503 and json.loads(full[1]) == {
        "error": "not the backup leader: cannot find the backup leader (etcd has no leader)", "role": "Follower"}
    assert delta[0] == 503
    assert sync[0] == 405  # sync not configured
    assert "Strict-Transport-Security" not in full[2]
    unhealthy = _server(healthy=False, role=Role.UNKNOWN, leader_snapshotter=None)
    assert _requests(unhealthy, ["/healthz"])[0][:2] == (503, '{"health":false}')
    bare = _server(has_provider=False, leader_snapshotter=None)
    assert [r[0] for r in _requests(bare, ["/snapshot/full", "/snapshot/latest", "/healthz"])] == [405, 405, 200]
    syncing = _server(sync_configured=True, role=Role.LEADER, copier=None)
    (status,) = _requests(syncing, ["/snapshot/sync"])
    assert status[0] == 409


def test_api_initialization_endpoints():
    server = _server()
    start, status1 = _requests(server, ["/initialization/start?mode=sanity", "/initialization/status"])
    assert start[:2] == (200, "")
    assert status1[1] in ("Progress", "Successful")
