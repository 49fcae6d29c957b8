"""The one retry policy: which failures are tried again, how often, how far apart, and how to wait.

Every loop in the project that tries a failed operation again goes through :func:`retry_call`
(blocking code, threads) or :func:`aretry_call` (the event loop) with a :class:`Policy`, and every
pause that must end early when the process stops is :func:`wait_unless_stopped` (or
``threading.Event.wait`` in threads). Both are built on tenacity.

Retries are stacked in at most three layers, each small, so that one failing operation makes a
bounded, documented number of requests (``docs/dual-endpoint.md``, "Timeouts and retries"):

1. the providers' SDKs try each request :data:`SDK_ATTEMPTS` times (their fast transport retry);
2. :data:`STORE_PART` tries one upload part or server-side copy step again while the store is
   unavailable;
3. the callers with a schedule of their own: the copier (``--backup-sync-max-retries``,
   ``--backup-sync-retry-backoff``) and the snapshotter at start (``--backoff-*``), built with
   :meth:`Policy.from_flags`.

Only failures that a retry can change are retried: :func:`is_transient` says which (a store that
is unavailable, an etcd that cannot be reached); a missing object, refused credentials or a hash
mismatch are facts about the request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from .errors import EtcdError, StoreUnavailable

T = TypeVar("T")

#: Tries of one request inside a provider's SDK (S3 ``total_max_attempts``, ABS and GCS alike).
SDK_ATTEMPTS = 2
#: Longest pause of an SDK between its tries, seconds.
SDK_RETRY_WAIT = 1.0
#: The pause GCS's and ABS's SDKs are set to (ABS adds a jitter of half of it; botocore's own
#: backoff stays under :data:`SDK_RETRY_WAIT`).
SDK_RETRY_PAUSE = 0.5


@dataclass(frozen=True)
class Policy:
    """``attempts`` tries in all (the first included); before try ``n + 2`` a pause of
    ``first_wait * multiplier ** n`` seconds, at most ``max_wait``."""

    attempts: int
    first_wait: float
    multiplier: float = 2.0
    max_wait: float = float("inf")

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy makes at least one attempt")

    @classmethod
    def from_flags(cls, retries: int, first_wait: float, multiplier: float = 2.0,
                   max_wait: float = float("inf")) -> "Policy":
        """A policy from a flag that counts *retries* (tries after the first)."""
        return cls(1 + max(0, retries), max(0.0, first_wait), multiplier, max_wait)

    def wait(self, retry: int) -> float:
        """The pause before retry number ``retry`` (0 = the pause after the first failure)."""
        return min(self.max_wait, self.first_wait * self.multiplier ** retry)

    def waits(self) -> list[float]:
        """Every pause a fully failing operation takes, in order."""
        return [self.wait(n) for n in range(self.attempts - 1)]

    def worst_case(self, per_attempt: float) -> float:
        """Seconds one failing operation can take when each attempt takes ``per_attempt``."""
        return self.attempts * per_attempt + sum(self.waits())


#: One upload part or server-side copy step on top of the SDK's own tries: 1s, then 2s.
STORE_PART = Policy(attempts=3, first_wait=1.0, max_wait=16.0)


def is_transient(exc: BaseException) -> bool:
    """Can trying again change the outcome? Only for an unreachable or overloaded service."""
    return isinstance(exc, (StoreUnavailable, EtcdError))


def _waiter(policy: Policy) -> Callable[[RetryCallState], float]:
    return lambda state: policy.wait(state.attempt_number - 1)


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
               on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """``fn()`` tried as ``policy`` says while ``retry_on(error)`` holds; the last error is raised.

    ``stop`` (set from another thread) ends a pause at once and raises the last error: a process
    that stops does not wait out a backoff, nor start another attempt. ``on_retry(attempt, error,
    pause)`` is told of each retry before its pause (for a log line)."""
    attempts = _Attempts(on_retry)

    def pause(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    retrying = Retrying(stop=stop_after_attempt(policy.attempts), wait=_waiter(policy),
                        retry=retry_if_exception(retry_on), sleep=pause, before_sleep=attempts.before_sleep,
                        reraise=True)
    try:
        return retrying(fn)
    except _Stopped:
        raise attempts.stopped() from None


async def aretry_call(policy: Policy, fn: Callable[[], Awaitable[T]], *,
                      retry_on: Callable[[BaseException], bool] = is_transient,
                      stop: asyncio.Event | None = None,
                      on_retry: Callable[[int, BaseException, float], None] | None = None) -> T:
    """:func:`retry_call` for coroutines: ``fn`` returns a fresh awaitable for every try, and
    ``stop`` is an :class:`asyncio.Event` of the running loop."""
    attempts = _Attempts(on_retry)

    async def pause(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
        elif await wait_unless_stopped(stop, seconds):
            raise _Stopped

    retrying = AsyncRetrying(stop=stop_after_attempt(policy.attempts), wait=_waiter(policy),
                             retry=retry_if_exception(retry_on), sleep=pause, before_sleep=attempts.before_sleep,
                             reraise=True)
    try:
        return await retrying(fn)
    except _Stopped:
        raise attempts.stopped() from None


async def wait_unless_stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Pause up to ``seconds``; True as soon as ``stop`` is set (at once if it already is)."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except asyncio.TimeoutError:
        return stop.is_set()
    return True


__all__ = ["Policy", "SDK_ATTEMPTS", "SDK_RETRY_PAUSE", "SDK_RETRY_WAIT", "STORE_PART", "aretry_call", "is_transient", "retry_call",
           "wait_unless_stopped"]
