"""A replay or a rebuild gives way to live processing, but never waits on stopped workers."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from streams.jobs import yielding
from streams.jobs.yielding import LiveTraffic
from streams.settings import Settings


class ScriptedTraffic(LiveTraffic):
    """The backlog and worker positions a live pipeline shows, one pair per check."""

    def __init__(self, limit: int, script: Iterable[tuple[int, int]]) -> None:
        super().__init__(Settings(job_yield_backlog=limit), pool=None)  # type: ignore[arg-type]
        self.script: Iterator[tuple[int, int]] = iter(script)
        self.checks = 0

    async def backlog(self) -> tuple[int, int]:
        self.checks += 1
        return next(self.script)


def job() -> Any:
    return SimpleNamespace(
        interrupted=False, what="rebuild", state=SimpleNamespace(id=7),
        console=Console(record=True, width=200),
    )


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yielding, "_CHECK_EVERY", 0.0)
    monkeypatch.setattr(yielding, "_STALLED", 0.05)


def test_a_job_waits_while_the_workers_catch_up_and_says_so_once() -> None:
    traffic = ScriptedTraffic(2000, [(9000, 10), (6000, 13), (3000, 16), (1500, 19)])
    waiting = job()
    asyncio.run(traffic.give_way(waiting))
    assert traffic.checks == 4
    told = waiting.console.export_text()
    assert told.count("waiting while live processing is") == 1
    assert "9,000 events behind" in told


def test_a_job_does_not_wait_for_workers_that_do_not_move() -> None:
    traffic = ScriptedTraffic(2000, itertools.repeat((9000, 10)))

    async def timed() -> None:
        await asyncio.wait_for(traffic.give_way(job()), timeout=5)

    asyncio.run(timed())
    assert traffic.checks > 1


def test_a_job_under_the_limit_or_with_yielding_off_goes_straight_on() -> None:
    calm = ScriptedTraffic(2000, [(1999, 5)])
    asyncio.run(calm.give_way(job()))
    assert calm.checks == 1
    off = ScriptedTraffic(0, [])
    asyncio.run(off.give_way(job()))
    assert off.checks == 0


def test_workers_found_standing_still_are_not_waited_for_again_until_they_move() -> None:
    still = ScriptedTraffic(2000, itertools.repeat((9000, 10)))

    async def batch(traffic: ScriptedTraffic) -> int:
        before = traffic.checks
        await asyncio.wait_for(traffic.give_way(job()), timeout=5)
        return traffic.checks - before

    assert asyncio.run(batch(still)) > 1
    # Still where they stood: the next batch goes straight on.
    assert asyncio.run(batch(still)) == 1
    # Once they move again, a batch waits for them again.
    still.script = iter([(9000, 12), (9000, 14), (1000, 16)])
    assert asyncio.run(batch(still)) == 3
