"""The one runner of what ``server`` (while leading) and ``snapshot`` both do (etcdbr.backup).

Against a real etcd and a Local store: the defragmentation schedule (its clock aimed a moment
before a minute boundary, so the five-field cron fires within seconds) survives a failed run and
follows a good one with a full snapshot; a snapshotter that gives up is started again by the
server's runner and ends the ``snapshot`` command's with its error.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest

from etcdbr import metrics
from etcdbr.backup import BackupRunner
from etcdbr.config import Config, StoreConfig
from etcdbr.errors import EtcdError
from etcdbr.snapshot import Kind
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration

LOGGER = "etcdbr.backup"


def local_store(tmp_path: Path):
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="etcd"))
    store.check()
    return store


def config_for(endpoint: str, store) -> Config:
    config = Config()
    config.store = store.config
    config.etcd.endpoints = [endpoint]
    config.etcd.connection_timeout = timedelta(seconds=1)
    config.snapshotter.schedule = "0 0 1 1 *"
    config.snapshotter.delta_snapshot_period = timedelta(seconds=60)
    config.snapshotter.garbage_collection_period = timedelta(seconds=0)
    config.snapshotter.defragmentation_schedule = "* * * * *"
    config.snapshotter.backoff_attempt_limit = 1
    config.snapshotter.backoff_threshold_time = timedelta(seconds=1)
    return config


class AimedClock:
    """Unix time shifted so that the next minute boundary is ``seconds`` away; ``aim`` again later."""

    def __init__(self, seconds: float) -> None:
        self.offset = 0.0
        self.aim(seconds)

    def aim(self, seconds: float) -> None:
        now = time.time()
        self.offset = (math.floor(now / 60) + 1) * 60 - seconds - now

    def __call__(self) -> float:
        return time.time() + self.offset


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def defragmented(endpoint: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "etcdbr_defragmentation_duration_seconds_count", {"succeeded": "true", "endpoint": endpoint}) or 0


def test_defragmentation_schedule_survives_a_failure_and_follows_a_run_with_a_full_snapshot(
        etcd_factory, tmp_path, caplog):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    clock = AimedClock(seconds=2.0)   # the first run comes once the startup full snapshot is done
    asked: list[float] = []

    async def member_endpoints() -> list[str]:
        asked.append(time.monotonic())
        if len(asked) == 1:
            clock.aim(seconds=1.2)     # the next run soon, in another second than the first full
            raise RuntimeError("member list unavailable")
        return [etcd.client_url]

    before = defragmented(etcd.client_url)

    async def scenario():
        runner = BackupRunner(config_for(etcd.client_url, store), store, clock=clock, full_at_start=True,
                              restart=False, member_endpoints=member_endpoints)
        await runner.start()
        try:
            def fulls():
                return [s for s in store.list() if s.kind is Kind.FULL]

            await wait_until(lambda: len(fulls()) >= 2, 30, "a full snapshot after the defragmentation")
        finally:
            await runner.close()
        return fulls()

    with caplog.at_level(logging.INFO, logger=LOGGER):
        fulls = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert len(asked) == 2
    assert defragmented(etcd.client_url) == before + 1
    assert len({s.snap_name for s in fulls}) == len(fulls) == 2
    failed = [r for r in caplog.records if r.name == LOGGER and r.getMessage() == "scheduled defragmentation failed"]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert failed[0].error == "RuntimeError: member list unavailable"
    assert any(r.getMessage() == "defragmentation done" for r in caplog.records if r.name == LOGGER)


def test_the_servers_runner_restarts_a_snapshotter_that_gave_up_until_it_is_closed(tmp_path, caplog):
    store = local_store(tmp_path)
    config = config_for(f"http://127.0.0.1:{unused_port()}", store)   # nothing listens there

    async def scenario() -> float:
        runner = BackupRunner(config, store, full_at_start=True)
        await runner.start()
        def restarts():
            return [r for r in caplog.records
                    if r.getMessage() == "snapshotter stopped after repeated failures; restarting it"]

        try:
            await wait_until(lambda: len(restarts()) >= 2, 30, "two restarts of the snapshotter")
        finally:
            started = time.monotonic()
            await runner.close(grace=5)
        assert [r.retry_in_seconds for r in restarts()[:2]] == [1.0, 1.0]   # --backoff-threshold-time
        return time.monotonic() - started

    with caplog.at_level(logging.INFO):
        closing = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert closing < 5   # a stop ends the pause between restarts at once
    assert not any(r.getMessage() == "backup task failed" for r in caplog.records)


def test_the_snapshot_commands_runner_ends_with_the_snapshotters_error(tmp_path, caplog):
    store = local_store(tmp_path)
    config = config_for(f"http://127.0.0.1:{unused_port()}", store)

    async def scenario() -> None:
        runner = BackupRunner(config, store, full_at_start=True, restart=False)
        await runner.start()
        try:
            await runner.snapshotter_finished()
        finally:
            await runner.close()

    with caplog.at_level(logging.INFO):
        with pytest.raises(EtcdError):
            asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert not any("restarting it" in r.getMessage() for r in caplog.records)
    assert not any(r.getMessage() == "backup task failed" for r in caplog.records)   # raised, not logged twice
