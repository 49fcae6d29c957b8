"""The one retry policy: which failures are tried again, how often, how far apart, and how to wait.

Every loop in the project that tries a failed operation again goes through :func:`retry_call`
(blocking code, threads) or :func:`aretry_call` (the event loop) with a :class:`Policy`, and every
pause that must end early when the process stops is :func:`wait_unless_stopped` (or
``threading.Event.wait`` in threads); every wait for a condition with a time bound (a temporary
etcd ready, a learner in sync, a final snapshot listed) is :func:`poll` or :func:`apoll`. They are
built on tenacity.

Retries are stacked in at most three layers, each small, so that one failing operation makes a
bounded, documented number of requests (``docs/dual-endpoint.md``, "Timeouts and retries"):

1. the providers' SDKs try each request :data:`SDK_ATTEMPTS` times (their fast transport retry);
2. :data:`STORE_PART` tries one upload part or server-side copy step again while the store is
   unavailable;
3. the callers with a schedule of their own: the copier (``--backup-sync-max-retries``,
   ``--backup-sync-retry-backoff``) and the snapshotter at start (``--backoff-*``), built with
   :meth:`Policy.from_flags`.

Loops that keep going until they are stopped use a policy of :data:`UNLIMITED` attempts for their
pauses only: the server restarting a snapshotter that gave up, the snapshotter's watch reconnecting,
and the snapshotter's loop, which is a schedule ("no delta before this time") rather than a call to
repeat and so asks :meth:`Policy.wait` for its pauses. Membership changes during ``initialize`` are
bounded by time (``within``) rather than by a count.

Only failures that a retry can change are retried: :func:`is_transient` says which (a store that
is unavailable, an etcd that cannot be reached); a missing object, refused credentials or a hash
mismatch are facts about the request.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
)

from .errors import EtcdError, StoreUnavailable

T = TypeVar("T")

#: Tries of one request inside a provider's SDK (S3 ``total_max_attempts``, ABS and GCS alike).
SDK_ATTEMPTS = 2
#: Longest pause of an SDK between its tries, seconds.
SDK_RETRY_WAIT = 1.0
#: The pause GCS's and ABS's SDKs are set to (ABS adds a jitter of half of it; botocore's own
#: backoff stays under :data:`SDK_RETRY_WAIT`).
SDK_RETRY_PAUSE = 0.5
#: ``Policy.attempts`` of a loop that goes on until it is stopped.
UNLIMITED = sys.maxsize


@dataclass(frozen=True)
class Policy:
    """``attempts`` tries in all (the first included); before try ``n + 2`` a pause of
    ``first_wait * multiplier ** n`` seconds, at most ``max_wait``. ``within``: no try starts
    once that many seconds passed since the first one (None: no time bound)."""

    attempts: int
    first_wait: float
    multiplier: float = 2.0
    max_wait: float = float("inf")
    within: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy makes at least one attempt")

    @property
    def unlimited(self) -> bool:
        return self.attempts >= UNLIMITED

    @classmethod
    def from_flags(cls, retries: int, first_wait: float, multiplier: float = 2.0,
                   max_wait: float = float("inf")) -> "Policy":
        """A policy from a flag that counts *retries* (tries after the first)."""
        return cls(1 + max(0, retries), max(0.0, first_wait), multiplier, max_wait)

    def wait(self, retry: int) -> float:
        """The pause before retry number ``retry`` (0 = the pause after the first failure)."""
        return min(self.max_wait, self.first_wait * self.multiplier ** retry)

    def waits(self) -> list[float]:
        """Every pause a fully failing operation takes, in order (a bounded policy only)."""
        if self.unlimited:
            raise ValueError("an unlimited policy has no last pause")
        return [self.wait(n) for n in range(self.attempts - 1)]

    def worst_case(self, per_attempt: float) -> float:
        """Seconds one failing operation can take when each attempt takes ``per_attempt``."""
        return self.attempts * per_attempt + sum(self.waits())


#: One upload part or server-side copy step on top of the SDK's own tries: 1s, then 2s.
STORE_PART = Policy(attempts=3, first_wait=1.0, max_wait=16.0)


def is_transient(exc: BaseException) -> bool:
    """Can trying again change the outcome? Only for an unreachable or overloaded service."""
    return isinstance(exc, (StoreUnavailable, EtcdError))


def any_failure(exc: BaseException) -> bool:
    """For loops that try again whatever failed (the snapshotter's startup, its restarts); a
    cancellation is no failure."""
    return isinstance(exc, Exception)


def _waiter(policy: Policy, wait: Callable[[int], float] | None) -> Callable[[RetryCallState], float]:
    pause = wait or policy.wait
    return lambda state: pause(state.attempt_number - 1)


def _stopper(policy: Policy):
    stop = stop_after_attempt(policy.attempts)
    return stop if policy.within is None else stop | stop_after_delay(policy.within)


class _Stopped(Exception):
    """Raised out of a pause that ``stop`` ended; the caller gets the last failure instead."""


class _Attempts:
    """What the tenacity hooks share for one call: the last failure, and the caller's report."""

    def __init__(self, on_retry: Callable[[int, BaseException, float], None] | None) -> None:
        self.on_retry = on_retry
        self.last: BaseException | None = None

    def before_sleep(self, state: RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        self.last = state.outcome.exception()
        if self.on_retry is not None and self.last is not None:
            self.on_retry(state.attempt_number, self.last, state.next_action.sleep)

    def stopped(self) -> BaseException:
        assert self.last is not None
        return self.last


def retry_call(policy: Policy, fn: Callable[[], T], *, retry_on: Callable[[BaseException], bool] = is_transient,
               stop: threading.Event | None = None,
               on_retry: Callable[[int, BaseException, float], None] | None = None,
               on_stop: Callable[[BaseException], T] | None = None,
               wait: Callable[[int], float] | None = None) -> T:
    """``fn()`` tried as ``policy`` says while ``retry_on(error)`` holds; the last error is raised.

    ``stop`` (set from another thread) ends a pause at once and raises the last error: a process
    that stops does not wait out a backoff, nor start another attempt; with ``on_stop``, the call
    returns ``on_stop(last error)`` instead. ``on_retry(attempt, error, pause)`` is told of each
    retry before its pause (for a log line). ``wait(n)`` replaces ``policy.wait(n)`` for callers
    whose pauses depend on their state (the copier's are short while it drains)."""
    attempts = _Attempts(on_retry)

    def pause(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    retrying = Retrying(stop=_stopper(policy), wait=_waiter(policy, wait),
                        retry=retry_if_exception(retry_on), sleep=pause, before_sleep=attempts.before_sleep,
                        reraise=True)
    try:
        return retrying(fn)
    except _Stopped:
        if on_stop is not None:
            return on_stop(attempts.stopped())
        raise attempts.stopped() from None


async def aretry_call(policy: Policy, fn: Callable[[], Awaitable[T]], *,
                      retry_on: Callable[[BaseException], bool] = is_transient,
                      stop: asyncio.Event | None = None,
                      on_retry: Callable[[int, BaseException, float], None] | None = None,
                      on_stop: Callable[[BaseException], T] | None = None,
                      wait: Callable[[int], float] | None = None) -> T:
    """:func:`retry_call` for coroutines: ``fn`` returns a fresh awaitable for every try, and
    ``stop`` is an :class:`asyncio.Event` of the running loop."""
    attempts = _Attempts(on_retry)

    async def pause(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
        elif await wait_unless_stopped(stop, seconds):
            raise _Stopped

    async def attempt() -> T:
        # tenacity awaits only what a coroutine function returns; ``fn`` may be any callable
        # that returns an awaitable (a lambda, a bound method's call).
        return await fn()

    retrying = AsyncRetrying(stop=_stopper(policy), wait=_waiter(policy, wait),
                             retry=retry_if_exception(retry_on), sleep=pause, before_sleep=attempts.before_sleep,
                             reraise=True)
    try:
        return await retrying(attempt)
    except _Stopped:
        if on_stop is not None:
            return on_stop(attempts.stopped())
        raise attempts.stopped() from None


def _polling(every: float, within: float | None) -> dict:
    """What :func:`poll` and :func:`apoll` hand tenacity: check again while the check returns None,
    ``every`` seconds apart, the last pause cut short to end at ``within``, one check there."""

    def pause(state: RetryCallState) -> float:
        return every if within is None else max(0.0, min(every, within - (state.seconds_since_start or 0.0)))

    return dict(stop=stop_never if within is None else stop_after_delay(within), wait=pause,
                retry=retry_if_result(lambda result: result is None), retry_error_callback=lambda state: None)


def poll(check: Callable[[], T | None], *, every: float, within: float | None) -> T | None:
    """``check()`` every ``every`` seconds until it returns something other than None, which is
    returned; None once ``within`` seconds passed since the first check (None: no bound). A check
    that raises ends the poll with its error. For waiting on a condition (a member ready, a final
    snapshot listed), not for trying a failed call again (:func:`retry_call`)."""
    return Retrying(**_polling(every, within))(check)


async def apoll(check: Callable[[], Awaitable[T | None]], *, every: float, within: float | None) -> T | None:
    """:func:`poll` for a check that is a coroutine (a fresh awaitable each time)."""

    async def attempt() -> T | None:
        return await check()

    return await AsyncRetrying(**_polling(every, within))(attempt)


async def wait_unless_stopped(stop: asyncio.Event, seconds: float, *, wake: asyncio.Event | None = None) -> bool:
    """Pause up to ``seconds``; True as soon as ``stop`` is set (at once if it already is).

    ``wake`` also ends the pause, early and without stopping (False, unless ``stop`` is set too):
    a loop that sleeps until its next deadline or until something asks it to look again."""
    if stop.is_set():
        return True
    if wake is None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
        except asyncio.TimeoutError:
            return stop.is_set()
        return True
    if wake.is_set():
        return False
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return stop.is_set()


__all__ = ["Policy", "SDK_ATTEMPTS", "SDK_RETRY_PAUSE", "SDK_RETRY_WAIT", "STORE_PART", "UNLIMITED", "any_failure",
           "apoll", "aretry_call", "is_transient", "poll", "retry_call", "wait_unless_stopped"]
