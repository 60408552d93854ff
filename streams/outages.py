"""Outages logged once, not once per retry, and the dependencies missing right now.

:class:`OutageLog` turns the failures of the operations waiting on Kafka or PostgreSQL into three
kinds of lines: a WARNING when an outage starts, at most one WARNING a minute with a count while
it lasts, and an INFO with its duration when it ends. It also answers ``/readyz``: which
dependency is missing, since when, and why. :class:`RepeatFilter` does the same for the
libraries' own logs (aiokafka's connection errors, psycopg_pool's reconnection warnings): the
first record of a kind passes, the rest are counted and summarised at most once a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger(__name__)

INTERVAL = 60.0
"""Seconds between two lines about the same outage or the same kind of library record."""

QUIETED_LOGGERS = ("aiokafka", "psycopg.pool")
"""Loggers (and their children) whose repeated records :class:`RepeatFilter` summarises."""

KAFKA = "kafka"
POSTGRES = "postgres"
NAMES = {KAFKA: "Kafka", POSTGRES: "PostgreSQL"}
# The client library an error comes from tells the dependency, without importing either library.
_PACKAGES = {"aiokafka": KAFKA, "psycopg": POSTGRES, "psycopg_pool": POSTGRES}

Clock = Callable[[], float]


def dependency_of(exc: BaseException) -> str | None:
    """The dependency (``kafka``, ``postgres``) whose client raised ``exc`` or what caused it."""
    current: BaseException | None = exc
    while current is not None:
        dependency = _PACKAGES.get(type(current).__module__.partition(".")[0])
        if dependency is not None:
            return dependency
        current = current.__cause__
    return None


@dataclass
class Outage:
    """One dependency's outage: since when, how many failures, and the last error."""

    dependency: str
    since: datetime
    started: float
    error: str
    failures: int = 1
    reported: float = 0.0

    @property
    def name(self) -> str:
        return NAMES.get(self.dependency, self.dependency)

    def describe(self) -> str:
        """``unreachable since <ISO 8601>: <error>``, as ``/readyz`` shows it."""
        return f"unreachable since {self.since.isoformat(timespec='seconds')}: {self.error}"


class OutageLog:
    """Log each outage of a dependency once when it starts, once a minute, and when it ends.

    Operations waiting on a dependency report each failed try with :meth:`failed` and their
    first success with :meth:`recovered`; the dependency is read from the error (else ``what``
    names it). The first success of any operation on a dependency ends its outage.
    """

    def __init__(
        self, logger: logging.Logger = log, clock: Clock = time.monotonic,
        interval: float = INTERVAL,
    ) -> None:
        self._log = logger
        self._clock = clock
        self._interval = interval
        self._outages: dict[str, Outage] = {}
        self._waiting: dict[str, str] = {}

    def failed(self, what: str, exc: BaseException) -> None:
        """Count a failed try of ``what``; log it only if it starts an outage or a minute passed."""
        dependency = dependency_of(exc) or what
        self._waiting[what] = dependency
        now = self._clock()
        error = _one_line(exc)
        outage = self._outages.get(dependency)
        if outage is None:
            since = datetime.now(UTC)
            outage = Outage(dependency, since, started=now, error=error, reported=now)
            self._outages[dependency] = outage
            self._log.warning(
                "%s: %s; waiting for %s and retrying", what, error, outage.name
            )
            return
        outage.failures += 1
        outage.error = error
        if now - outage.reported >= self._interval:
            outage.reported = now
            self._log.warning(
                "%s still unavailable after %s (failed tries: %d); last error: %s",
                outage.name, _duration(now - outage.started), outage.failures, error,
            )

    def recovered(self, what: str) -> None:
        """Note that ``what`` succeeded; if it was waiting on a dependency, that outage ends."""
        if not self._waiting:
            return
        dependency = self._waiting.pop(what, None)
        if dependency is None:
            return
        for other in [w for w, d in self._waiting.items() if d == dependency]:
            del self._waiting[other]
        outage = self._outages.pop(dependency, None)
        if outage is not None:
            self._log.info(
                "%s answers again after %s (failed tries: %d)",
                outage.name, _duration(self._clock() - outage.started), outage.failures,
            )

    def missing(self) -> dict[str, Outage]:
        """The dependencies in an outage right now, by name (``kafka``, ``postgres``)."""
        return dict(self._outages)


outages = OutageLog()
"""The process's outage log: what the worker's and the gateway's ``/readyz`` report."""


@dataclass
class _Kind:
    since: float
    suppressed: int = 0
    level: int = logging.NOTSET


class RepeatFilter(logging.Filter):
    """Let the first record of a kind through, count the rest, summarise them once a minute.

    A kind is a logger name and a message template (``record.msg``); only records of the
    :data:`QUIETED_LOGGERS` are counted. Installed on handlers, since a logger's filters never
    see its children's records; the summary is a record of this module's logger.
    """

    def __init__(
        self, loggers: Iterable[str] = QUIETED_LOGGERS, clock: Clock = time.monotonic,
        interval: float = INTERVAL,
    ) -> None:
        super().__init__()
        self._loggers = tuple(loggers)
        self._clock = clock
        self._interval = interval
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._due = float("inf")
        self._lock = threading.Lock()
        self._last: tuple[logging.LogRecord | None, bool] = (None, True)

    def install(self, handlers: Iterable[logging.Handler]) -> None:
        """Add this filter to each handler that does not have it yet."""
        for handler in handlers:
            if self not in handler.filters:
                handler.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is shown; also emits the summaries that fell due."""
        last, verdict = self._last
        if record is last:
            return verdict  # The same record reaches every handler: count it once.
        now = self._clock()
        with self._lock:
            summaries = self._expire(now) if now >= self._due else []
            verdict = True
            if record.name.startswith(self._loggers):
                verdict = self._admit(record, now)
                self._last = (record, verdict)
        for (name, template), kind in summaries:
            log.log(
                kind.level, "%s: %d more records like %r in the %s after it", name,
                kind.suppressed, template, _duration(self._interval),
            )
        return verdict

    def _admit(self, record: logging.LogRecord, now: float) -> bool:
        key = (record.name, str(record.msg))
        kind = self._kinds.get(key)
        if kind is None:
            self._kinds[key] = _Kind(since=now)
            self._due = min(self._due, now + self._interval)
            return True
        kind.suppressed += 1
        kind.level = max(kind.level, record.levelno)
        return False

    def _expire(self, now: float) -> list[tuple[tuple[str, str], _Kind]]:
        """Forget the kinds whose minute is over; return those with records to summarise."""
        over = [(key, kind) for key, kind in self._kinds.items()
                if now - kind.since >= self._interval]
        for key, _ in over:
            del self._kinds[key]
        self._due = min((k.since + self._interval for k in self._kinds.values()),
                        default=float("inf"))
        return [(key, kind) for key, kind in over if kind.suppressed]


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return "{} h {} min".format(*divmod(minutes, 60))
