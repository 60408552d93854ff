"""The dead-letter circuit breaker: a family whose events fail wholesale pauses instead.

A poison event is dead-lettered and its partition moves on. When most of a family's events fail
for good (a handler broken by a deploy, a migration not applied), the fault is not in the
events, and dead-lettering them all would bury it under dead letters to retry one by one. So
when, counting the event about to be dead-lettered, at least ``min_events`` of the family's
events in the last ``window`` seconds were dead-lettered and they make at least ``share`` of the
events it settled meanwhile, the breaker pauses the family instead: it records the pause in
``ops.family_pauses``, and that event waits for the family to resume.

The pause lives in PostgreSQL because several workers share a family's partitions and
``stripe-streams dlq resume FAMILY`` runs in another process: every worker's agent of the family
waits before its next batch while the pause lasts, so the family's partitions stop advancing
and nothing more of it is dead-lettered, while the other families' agents go on. The family
resumes on its own after ``backoff`` seconds, or at once when the command deletes the row; the
held event is then tried again from its first attempt, and the counts start afresh. Each worker
counts only the events it settles, so before the first of N workers pauses the family, up to
N * (min_events - 1) of its events may be dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from projections.metrics import WorkerMetrics
from streams.log.consumed import AppliedEvent, Outcome
from streams.settings import Settings
from streams.worker.settling import RetryPolicy, patiently

log = logging.getLogger(__name__)

POLL_INTERVAL = 2.0
"""Seconds a worker relies on what it last read of ``ops.family_pauses``."""
_REASON_CHARS = 500


class PauseStore(Protocol):
    """Where pauses are kept (the projections' store)."""

    async def pause_family(self, family: str, seconds: float, reason: str) -> datetime:
        """Pause ``family`` from now for ``seconds``; return when the pause ends."""

    async def paused_families(self) -> Mapping[str, datetime]:
        """The families paused right now, each with when its pause ends."""


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """How many dead letters pause a family, and for how long."""

    share: float = 0.5
    min_events: int = 20
    window: float = 60.0
    backoff: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BreakerPolicy:
        """The policy configured by STRIPE_STREAMS_PAUSE_*."""
        return cls(
            settings.pause_share, settings.pause_min_events, settings.pause_window,
            settings.pause_backoff,
        )

    def trips(self, dead_lettered: int, settled: int) -> bool:
        """Whether so many dead letters among so many settled events pause the family."""
        return dead_lettered >= self.min_events and dead_lettered >= self.share * settled


@dataclass(slots=True)
class _Second:
    second: int
    settled: int
    dead_lettered: int


class _Window:
    """A family's settled and dead-lettered events of the last ``span`` seconds, per second."""

    def __init__(self, span: float) -> None:
        self._span = span
        self._seconds: deque[_Second] = deque()
        self._settled = 0
        self._dead_lettered = 0

    def add(self, now: float, settled: int, dead_lettered: int = 0) -> None:
        self._expire(now)
        second = math.floor(now)
        if self._seconds and self._seconds[-1].second == second:
            self._seconds[-1].settled += settled
            self._seconds[-1].dead_lettered += dead_lettered
        else:
            self._seconds.append(_Second(second, settled, dead_lettered))
        self._settled += settled
        self._dead_lettered += dead_lettered

    def counts(self, now: float) -> tuple[int, int]:
        """Dead-lettered and settled events within the window."""
        self._expire(now)
        return self._dead_lettered, self._settled

    def _expire(self, now: float) -> None:
        while self._seconds and self._seconds[0].second < now - self._span:
            gone = self._seconds.popleft()
            self._settled -= gone.settled
            self._dead_lettered -= gone.dead_lettered


class DeadLetterBreaker:
    """One worker's breaker over the families it projects: counts, pauses, waits out pauses.

    ``clock`` gives the wall-clock time in seconds; ``sleep`` waits. Reading or writing a
    pause while PostgreSQL is unreachable is waited out like any outage (see
    :func:`~streams.worker.settling.patiently`).
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        store: PauseStore,
        *,
        retry: RetryPolicy,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poll: float = POLL_INTERVAL,
    ) -> None:
        self._policy = policy
        self._store = store
        self._retry = retry
        self._metrics = metrics
        self._clock = clock
        self._sleep = sleep
        self._poll = poll
        self._windows: dict[str, _Window] = {}
        self._paused: dict[str, datetime] = {}
        self._read_at = -math.inf
        # One reader at a time: the agents of all families share what it read.
        self._reading = asyncio.Lock()

    def settled(self, family: str, applied: Sequence[AppliedEvent]) -> None:
        """Count events the family's agent settled, except those settled before (skipped)."""
        count = sum(1 for item in applied if item.outcome is not Outcome.SKIPPED)
        if count:
            self._window(family).add(self._clock(), count)

    async def holds(self, family: str, error: BaseException) -> bool:
        """Whether an event about to be dead-lettered for ``error`` must wait instead.

        It must when its family is paused already (by any worker), or when, counting it, the
        family's dead letters in the window reach the policy's minimum and share: then this
        pauses the family. Otherwise the event counts as dead-lettered and False is returned.
        """
        if family in await self._read(family, fresh=True):
            return True
        window = self._window(family)
        now = self._clock()
        dead_lettered, settled = window.counts(now)
        if self._policy.trips(dead_lettered + 1, settled + 1):
            await self._pause(family, dead_lettered + 1, settled + 1, error)
            return True
        window.add(now, settled=1, dead_lettered=1)
        return False

    async def wait_while_paused(self, family: str) -> None:
        """Return once ``family`` is not paused, reading the pauses every ``poll`` seconds."""
        while family in await self._read(family):
            await self._sleep(self._poll)

    async def _pause(
        self, family: str, dead_lettered: int, settled: int, error: BaseException
    ) -> None:
        reason = (
            f"{dead_lettered} of {settled} events failed every attempt in the last "
            f"{self._policy.window:g} s; last error: {_one_line(error)}"
        )
        # Under the readers' lock, so no other agent reads the new pause as another worker's.
        async with self._reading:
            resume_at = await patiently(
                partial(self._store.pause_family, family, self._policy.backoff, reason),
                self._retry, family, self._sleep,
            )
            self._paused[family] = resume_at
        self._windows.pop(family, None)
        self._metrics.family_paused.labels(family).set(1)
        log.warning(
            "%s: paused until %s by the dead-letter circuit breaker: %s. Until then its "
            "partitions wait and nothing more of it is dead-lettered; once the cause is fixed, "
            "'stripe-streams dlq resume %s' resumes it at once",
            family, resume_at.isoformat(timespec="seconds"), reason, family,
        )

    async def _read(self, family: str, *, fresh: bool = False) -> Mapping[str, datetime]:
        """The paused families, as ``ops.family_pauses`` said at most ``poll`` seconds ago."""
        async with self._reading:
            if fresh or self._clock() - self._read_at >= self._poll:
                paused = await patiently(
                    self._store.paused_families, self._retry, family, self._sleep
                )
                self._read_at = self._clock()
                self._update(paused)
        return self._paused

    def _update(self, paused: Mapping[str, datetime]) -> None:
        """Take in the pauses just read, logging and showing each family that paused or resumed."""
        # Workers' clocks and the database's differ a little: a pause that ends within a poll
        # of now ended by its back-off.
        ending = datetime.fromtimestamp(self._clock() + self._poll, UTC)
        for family, resume_at in paused.items():
            if family not in self._paused:
                self._windows.pop(family, None)
                self._metrics.family_paused.labels(family).set(1)
                log.info(
                    "%s: paused until %s by the dead-letter circuit breaker (ops.family_pauses "
                    "says why); its batches wait", family, resume_at.isoformat(timespec="seconds"),
                )
        for family, resume_at in self._paused.items():
            if family not in paused:
                self._metrics.family_paused.labels(family).set(0)
                log.info(
                    "%s: resumed: %s", family,
                    "its back-off is over" if resume_at <= ending else "its pause was lifted",
                )
        self._paused = dict(paused)

    def _window(self, family: str) -> _Window:
        window = self._windows.get(family)
        if window is None:
            window = self._windows[family] = _Window(self._policy.window)
        return window


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else repr(error)}"
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."
