"""The one retry policy (etcdbr.retry): attempts, pauses, what is retried, and stopping early."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from etcdbr.errors import ObjectNotFound, StoreUnavailable
from etcdbr.retry import (
    STORE_PART,
    UNLIMITED,
    Policy,
    any_failure,
    aretry_call,
    retry_call,
    wait_unless_stopped,
)


class Flaky:
    """Fails with ``errors`` in turn, then returns ``value``; counts its calls."""

    def __init__(self, *errors: BaseException, value: str = "ok") -> None:
        self.errors = list(errors)
        self.calls = 0
        self.value = value

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


def unavailable() -> StoreUnavailable:
    return StoreUnavailable("down", endpoint="S3/b")


def test_policy_pauses_double_up_to_the_cap():
    policy = Policy(attempts=5, first_wait=1.0, max_wait=3.0)
    assert policy.waits() == [1.0, 2.0, 3.0, 3.0]
    assert policy.worst_case(per_attempt=10.0) == 50.0 + 9.0
    assert Policy.from_flags(retries=2, first_wait=30.0).waits() == [30.0, 60.0]
    assert Policy.from_flags(retries=-1, first_wait=30.0).attempts == 1
    with pytest.raises(ValueError):
        Policy(attempts=0, first_wait=1.0)


def test_store_part_policy_is_the_documented_one():
    assert STORE_PART.attempts == 3 and STORE_PART.waits() == [1.0, 2.0]


def test_transient_failures_are_retried_until_success():
    fn = Flaky(unavailable(), unavailable())
    seen = []
    assert retry_call(Policy(3, 0.0), fn, on_retry=lambda n, exc, pause: seen.append((n, type(exc), pause))) == "ok"
    assert fn.calls == 3
    assert seen == [(1, StoreUnavailable, 0.0), (2, StoreUnavailable, 0.0)]


def test_the_last_failure_is_raised_after_every_attempt():
    fn = Flaky(unavailable(), unavailable(), unavailable(), unavailable())
    with pytest.raises(StoreUnavailable):
        retry_call(Policy(3, 0.0), fn)
    assert fn.calls == 3


def test_facts_about_the_request_are_not_retried():
    fn = Flaky(ObjectNotFound("gone"))
    with pytest.raises(ObjectNotFound):
        retry_call(Policy(5, 0.0), fn)
    assert fn.calls == 1


def test_a_stop_ends_the_pause_at_once_and_raises_the_last_failure():
    stop = threading.Event()
    fn = Flaky(unavailable(), unavailable())
    threading.Timer(0.05, stop.set).start()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        retry_call(Policy(3, 60.0), fn, stop=stop)
    assert time.monotonic() - started < 10
    assert fn.calls == 1


def test_async_retries_and_stop():
    async def scenario():
        fn = Flaky(unavailable(), value="done")

        async def once():
            return fn()

        assert await aretry_call(Policy(2, 0.0), once) == "done"
        assert fn.calls == 2

        stop = asyncio.Event()
        failing = Flaky(unavailable(), unavailable())

        async def fail():
            return failing()

        asyncio.get_running_loop().call_later(0.05, stop.set)
        with pytest.raises(StoreUnavailable):
            await aretry_call(Policy(3, 60.0), fail, stop=stop)
        assert failing.calls == 1

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_wait_unless_stopped():
    async def scenario():
        stop = asyncio.Event()
        assert await wait_unless_stopped(stop, 0.0) is False
        asyncio.get_running_loop().call_later(0.01, stop.set)
        assert await wait_unless_stopped(stop, 60.0) is True
        assert await wait_unless_stopped(stop, 60.0) is True  # already set: no wait

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_unlimited_policy_has_pauses_but_no_last_one():
    policy = Policy(attempts=UNLIMITED, first_wait=0.2, max_wait=5.0)
    assert [policy.wait(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.unlimited and not Policy(3, 1.0).unlimited
    with pytest.raises(ValueError):
        policy.waits()


def test_unlimited_retries_go_on_until_success():
    fn = Flaky(*[unavailable() for _ in range(25)])
    assert retry_call(Policy(UNLIMITED, 0.0), fn) == "ok"
    assert fn.calls == 26


def test_a_time_bound_ends_the_retries_before_the_count():
    fn = Flaky(*[unavailable() for _ in range(1000)])
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        retry_call(Policy(UNLIMITED, 0.01, multiplier=1.0, within=0.2), fn)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 5
    assert 2 <= fn.calls < 1000


def test_any_failure_retries_every_error_but_not_a_cancellation():
    assert any_failure(ValueError("x")) and any_failure(ObjectNotFound("gone"))
    assert not any_failure(asyncio.CancelledError()) and not any_failure(KeyboardInterrupt())
    fn = Flaky(ValueError("bad"), value="fine")
    assert retry_call(Policy(2, 0.0), fn, retry_on=any_failure) == "fine"


def test_on_stop_returns_instead_of_raising_and_only_when_a_stop_cut_a_pause_short():
    stop = threading.Event()
    fn = Flaky(unavailable(), unavailable())
    threading.Timer(0.05, stop.set).start()
    seen = []
    assert retry_call(Policy(3, 60.0), fn, stop=stop, on_stop=lambda last: seen.append(last) or "stopped") == "stopped"
    assert fn.calls == 1 and isinstance(seen[0], StoreUnavailable)
    # the attempts running out is no stop: the last failure is raised
    with pytest.raises(StoreUnavailable):
        retry_call(Policy(2, 0.0), Flaky(unavailable(), unavailable()), stop=threading.Event(),
                   on_stop=lambda last: "stopped")

    async def scenario():
        astop = asyncio.Event()
        failing = Flaky(unavailable(), unavailable())

        async def fail():
            return failing()

        asyncio.get_running_loop().call_later(0.05, astop.set)
        assert await aretry_call(Policy(3, 60.0), fail, stop=astop, on_stop=lambda last: "stopped") == "stopped"
        assert failing.calls == 1

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_wait_replaces_the_policys_pauses():
    pauses = []
    fn = Flaky(unavailable(), unavailable())
    assert retry_call(Policy(3, 60.0), fn, wait=lambda n: 0.01 * (n + 1),
                      on_retry=lambda n, exc, pause: pauses.append(pause)) == "ok"
    assert pauses == [0.01, 0.02]

    async def scenario():
        failing = Flaky(unavailable())

        async def once():
            return failing()

        started = time.monotonic()
        assert await aretry_call(Policy(2, 60.0), once, wait=lambda n: 0.0) == "ok"
        assert time.monotonic() - started < 10

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_wait_unless_stopped_with_a_wake_event():
    async def scenario():
        stop, wake = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        assert await wait_unless_stopped(stop, 0.01, wake=wake) is False  # the time ran out
        loop.call_later(0.01, wake.set)
        started = time.monotonic()
        assert await wait_unless_stopped(stop, 60.0, wake=wake) is False  # woken, not stopped
        assert time.monotonic() - started < 10
        assert await wait_unless_stopped(stop, 60.0, wake=wake) is False  # already awake: no wait
        wake.clear()
        loop.call_later(0.01, stop.set)
        assert await wait_unless_stopped(stop, 60.0, wake=wake) is True
        assert await wait_unless_stopped(stop, 60.0, wake=wake) is True  # already stopped
        wake.set()
        assert await wait_unless_stopped(stop, 60.0, wake=wake) is True  # a stop wins over a wake

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_async_retries_take_any_callable_that_returns_an_awaitable():
    async def scenario():
        fn = Flaky(unavailable(), value="done")

        async def once():
            return fn()

        assert await aretry_call(Policy(2, 0.0), lambda: once()) == "done"
        assert fn.calls == 2

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
