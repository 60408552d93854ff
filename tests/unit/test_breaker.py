"""The dead-letter circuit breaker with a fake clock and a fake ops.family_pauses."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from projections.metrics import WorkerMetrics
from streams.errors import DependencyUnavailable, HandlerError
from streams.log.consumed import AppliedEvent, Outcome
from streams.worker.breaker import BreakerPolicy, DeadLetterBreaker
from streams.worker.settling import BatchSettler, RetryPolicy
from tests.unit.test_dead_letters import FakeProjection, consumed

START = 1_800_000_000.0
POLICY = BreakerPolicy(share=0.5, min_events=5, window=60.0, backoff=300.0)
ERROR = HandlerError("customer cus_1: balance 9223372036854775808 is out of range")


@dataclass
class FakeClock:
    """Wall-clock seconds that move only when someone sleeps, running what is due meanwhile."""

    now: float = START
    due: list[tuple[float, Callable[[], None]]] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[], None]) -> None:
        self.due.append((when, action))

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        for when, action in [item for item in self.due if item[0] <= self.now]:
            self.due.remove((when, action))
            action()
        await asyncio.sleep(0)


@dataclass
class FakePauses:
    """ops.family_pauses: each family's resume_at and reason, on the fake clock."""

    clock: FakeClock
    rows: dict[str, tuple[float, str]] = field(default_factory=dict)
    outages: int = 0
    """How many more reads fail with DependencyUnavailable."""
    reads: int = 0

    async def pause_family(self, family: str, seconds: float, reason: str) -> datetime:
        self.rows[family] = (self.clock.now + seconds, reason)
        return datetime.fromtimestamp(self.clock.now + seconds, UTC)

    async def paused_families(self) -> dict[str, datetime]:
        self.reads += 1
        if self.outages:
            self.outages -= 1
            raise DependencyUnavailable("PostgreSQL unavailable: connection refused")
        return {
            family: datetime.fromtimestamp(resume_at, UTC)
            for family, (resume_at, _) in self.rows.items()
            if resume_at > self.clock.now
        }

    def resume(self, family: str) -> None:
        """What ``stripe-streams dlq resume FAMILY`` does."""
        del self.rows[family]


@dataclass
class Harness:
    clock: FakeClock
    pauses: FakePauses
    metrics: WorkerMetrics
    breaker: DeadLetterBreaker

    def paused_metric(self, family: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "stripe_streams_family_paused", {"family": family}
        )


def harness(policy: BreakerPolicy = POLICY) -> Harness:
    clock = FakeClock()
    pauses = FakePauses(clock)
    metrics = WorkerMetrics()
    breaker = DeadLetterBreaker(
        policy, pauses, retry=RetryPolicy(backoff=1.0), metrics=metrics, clock=clock,
        sleep=clock.sleep,
    )
    return Harness(clock, pauses, metrics, breaker)


def settle(h: Harness, family: str, count: int, outcome: Outcome = Outcome.PROCESSED) -> None:
    h.breaker.settled(family, [AppliedEvent(consumed(n), outcome) for n in range(count)])


async def dead_letters_until_held(h: Harness, family: str, limit: int = 1000) -> int:
    """Offer dead letters one a second until the breaker holds one; return how many it let go."""
    for let_go in range(limit):
        if await h.breaker.holds(family, ERROR):
            return let_go
        await h.clock.sleep(1.0)
    return limit


async def test_the_breaker_trips_at_the_minimum_of_dead_letters_and_pauses_in_postgresql(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness()
    caplog.set_level(logging.INFO, logger="streams.worker.breaker")

    assert await dead_letters_until_held(h, "customers") == POLICY.min_events - 1

    resume_at, reason = h.pauses.rows["customers"]
    assert resume_at == h.clock.now + POLICY.backoff
    assert reason.startswith("5 of 5 events failed every attempt in the last 60 s")
    assert "HandlerError: customer cus_1: balance" in reason
    assert h.paused_metric("customers") == 1
    [line] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "customers: paused until" in line.getMessage()
    assert "'stripe-streams dlq resume customers'" in line.getMessage()
    assert reason in line.getMessage()


async def test_the_breaker_trips_only_once_dead_letters_reach_the_share_of_settled_events() -> None:
    h = harness()
    settle(h, "customers", 10)

    # 5 of 15 is a third; the share is reached at 10 of 20.
    assert await dead_letters_until_held(h, "customers") == 9
    assert h.pauses.rows["customers"][1].startswith("10 of 20 events")


async def test_a_few_poison_events_among_many_good_ones_never_pause_the_family() -> None:
    h = harness()
    for _ in range(200):
        settle(h, "customers", 50)
        assert not await h.breaker.holds("customers", ERROR)
        await h.clock.sleep(0.5)

    assert h.pauses.rows == {}
    assert h.paused_metric("customers") == 0


async def test_skipped_events_do_not_dilute_the_share() -> None:
    h = harness()
    settle(h, "customers", 100, Outcome.SKIPPED)

    assert await dead_letters_until_held(h, "customers") == POLICY.min_events - 1


async def test_dead_letters_older_than_the_window_are_forgotten() -> None:
    h = harness()
    for _ in range(POLICY.min_events - 1):
        assert not await h.breaker.holds("customers", ERROR)
        await h.clock.sleep(1.0)
    await h.clock.sleep(POLICY.window)

    assert await dead_letters_until_held(h, "customers") == POLICY.min_events - 1


async def test_other_families_are_not_paused() -> None:
    h = harness()
    await dead_letters_until_held(h, "customers")

    assert not await h.breaker.holds("invoices", ERROR)
    await asyncio.wait_for(h.breaker.wait_while_paused("invoices"), 1)
    assert set(h.pauses.rows) == {"customers"}
    assert h.paused_metric("invoices") == 0
    assert h.paused_metric("customers") == 1


async def test_a_pause_ends_after_the_backoff_and_the_counts_start_afresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness()
    caplog.set_level(logging.INFO, logger="streams.worker.breaker")
    await dead_letters_until_held(h, "customers")
    paused_at = h.clock.now

    await h.breaker.wait_while_paused("customers")

    assert paused_at + POLICY.backoff <= h.clock.now <= paused_at + POLICY.backoff + 2.0
    assert h.paused_metric("customers") == 0
    assert "customers: resumed: its back-off is over" in caplog.messages
    # The event that tripped the breaker, failing again, is dead-lettered like a poison event.
    assert not await h.breaker.holds("customers", ERROR)


async def test_a_resume_by_command_is_seen_within_the_poll_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness()
    caplog.set_level(logging.INFO, logger="streams.worker.breaker")
    await dead_letters_until_held(h, "customers")
    resumed_at = h.clock.now + 30.0
    h.clock.at(resumed_at, lambda: h.pauses.resume("customers"))

    await h.breaker.wait_while_paused("customers")

    assert resumed_at <= h.clock.now <= resumed_at + 2.0
    assert h.paused_metric("customers") == 0
    assert "customers: resumed: its pause was lifted" in caplog.messages


async def test_a_pause_recorded_by_another_worker_holds_this_one_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = harness()
    caplog.set_level(logging.INFO, logger="streams.worker.breaker")
    await h.pauses.pause_family("customers", 60.0, "tripped by another worker")

    assert await h.breaker.holds("customers", ERROR)
    assert h.paused_metric("customers") == 1
    await h.breaker.wait_while_paused("customers")
    assert h.clock.now >= START + 60.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_pauses_are_read_at_most_once_per_poll_interval() -> None:
    h = harness()
    for _ in range(100):
        await h.breaker.wait_while_paused("customers")
        await h.breaker.wait_while_paused("invoices")
        await h.clock.sleep(0.1)

    assert 4 <= h.pauses.reads <= 6


async def test_an_outage_while_reading_pauses_is_waited_out() -> None:
    h = harness()
    h.pauses.outages = 3

    await asyncio.wait_for(h.breaker.wait_while_paused("customers"), 5)

    assert h.pauses.reads == 4


async def test_the_settler_holds_the_tripping_event_and_applies_it_once_resumed() -> None:
    h = harness(BreakerPolicy(share=0.5, min_events=3, window=60.0, backoff=300.0))
    fake = FakeProjection(poison={f"evt_0_{n}" for n in range(5)})
    settler = BatchSettler(
        "customers", store=fake, projection="customers", publish=fake.publish,
        handler_of=lambda event_type: "customers.customer_changed",
        retry=RetryPolicy(max_attempts=2, backoff=0.1), sleep=h.clock.sleep, breaker=h.breaker,
    )

    def fixed_and_resumed() -> None:
        fake.poison.clear()
        h.pauses.resume("customers")

    h.clock.at(START + 100.0, fixed_and_resumed)
    results = await settler.apply([consumed(n) for n in range(8)])

    assert [r.outcome for r in results] == [Outcome.DEAD_LETTERED] * 2 + [Outcome.PROCESSED] * 6
    assert [letter.event.id for letter in fake.published] == ["evt_0_0", "evt_0_1"]
    assert fake.applied == [f"evt_0_{n}" for n in range(2, 8)]
    # The held event starts its attempts afresh once the family resumes.
    assert fake.attempts["evt_0_2"] == 1
    assert h.paused_metric("customers") == 0
