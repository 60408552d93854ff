"""``stripe-streams replay``: re-apply a range of a topic to the live mirror tables.

A replay reads the range with a consumer of its own and settles it like the family agents do,
with the writer in replay mode: a row whose newest event lies in the range is written again
from that event (so a fixed handler's output replaces the old one), no row becomes older, no
delivery is counted, and ``ops.event_log`` says ``source = replay`` for what it re-applied.
An event that fails is dead-lettered as the worker would. The job stores its position after
each batch, so ``--resume JOB_ID`` continues an interrupted replay where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from projections.database import connection, create_pool, database_errors
from projections.jobs import JobState, resume_job, start_job
from projections.writer import Projecting
from streams.errors import StreamsError
from streams.handlers.registry import load_handlers
from streams.jobs.applying import CONNECTIONS, JobApplier, JobStore
from streams.jobs.reading import LogReader, Range
from streams.jobs.running import exit_code, running_job
from streams.jobs.yielding import LiveTraffic
from streams.log.dead_letter_topic import holds_dead_letter
from streams.log.routing import FAMILIES
from streams.log.topics import DEAD_LETTER_SUFFIX
from streams.settings import Settings
from streams.worker.runtime import new_producer, send_dead_letter
from streams.worker.settling import RetryPolicy, patiently

KIND = "replay"


@dataclass(frozen=True)
class ReplayRequest:
    """What the command line asked for; ``resume`` continues a job and ignores the rest."""

    topic: str | None = None
    partition: int | None = None
    from_offset: int | None = None
    from_time: datetime | None = None
    to_offset: int | None = None
    to_time: datetime | None = None
    resume: int | None = None


async def replay(settings: Settings, request: ReplayRequest) -> int:
    """Run or resume a replay job; return the command's exit code."""
    pool = create_pool(settings, min_size=1, max_size=CONNECTIONS)
    with database_errors(settings.database_url):
        await pool.open(wait=False)
    try:
        async with connection(pool) as conn:
            if request.resume is not None:
                job = await resume_job(conn, request.resume, KIND)
                topic = str(job.params["topic"])
            else:
                topic = _checked_topic(settings, request.topic)
                job = None
        async with LogReader(settings.kafka_bootstrap_servers, topic) as reader:
            if job is None:
                span = await _resolve(reader, request)
                async with connection(pool) as conn:
                    job = await start_job(
                        conn, KIND, _params(topic, request), total=span.remaining,
                        position=_position(span),
                    )
            else:
                span = Range(
                    {int(p): int(o) for p, o in job.position["next"].items()},
                    {int(p): int(o) for p, o in job.position["end"].items()},
                )
            return await _run(settings, pool, reader, job, span, topic)
    finally:
        await pool.close()


async def _run(
    settings: Settings, pool: Any, reader: LogReader, job: JobState, span: Range, topic: str
) -> int:
    retry = RetryPolicy.from_settings(settings)
    producer = new_producer(settings)
    await patiently(producer.start, retry, "starting the producer")

    async def publish(letter: Any) -> None:
        await send_dead_letter(producer, settings, letter)

    produced = partial(
        holds_dead_letter, settings.kafka_bootstrap_servers, settings.topic(DEAD_LETTER_SUFFIX)
    )
    applier = JobApplier(
        JobStore(pool, load_handlers(), Projecting.replay(), produced), publish, retry,
        in_log=topic == settings.topic(),
    )
    try:
        async with LiveTraffic(settings, pool) as live, running_job(pool, job, KIND) as running:
            async for records in reader.read(span, settings.job_batch_size):
                processed, failed = await applier.apply(records)
                await running.advance(processed, failed, _position(span))
                if running.interrupted:
                    break
                await live.give_way(running)
        running.summary(
            "interrupted" if running.interrupted else "done",
            [("topic", topic), ("remaining", f"{span.remaining:,}")]
            + ([("resume with", f"--resume {job.id}")] if running.interrupted else []),
        )
        return exit_code(running)
    finally:
        await producer.stop()


async def _resolve(reader: LogReader, request: ReplayRequest) -> Range:
    partitions = await reader.partitions()
    if request.partition is not None:
        if request.partition not in partitions:
            raise StreamsError(
                f"{reader.topic} has partitions 0 to {max(partitions)}, not {request.partition}"
            )
        partitions = [request.partition]
    return await reader.resolve(
        partitions, from_offset=request.from_offset, from_time=request.from_time,
        to_offset=request.to_offset, to_time=request.to_time,
    )


def _checked_topic(settings: Settings, topic: str | None) -> str:
    log = settings.topic()
    if topic == settings.topic(DEAD_LETTER_SUFFIX):
        raise StreamsError(
            f"{topic} holds dead letters, not events: use 'stripe-streams dlq retry'"
        )
    if topic not in (log, *(settings.topic(f) for f in FAMILIES)):
        raise StreamsError(
            f"{topic} is not a topic of this project: replay {log} or one of {log}.<family>"
        )
    return topic


def _params(topic: str, request: ReplayRequest) -> dict[str, Any]:
    return {
        "topic": topic,
        "partition": request.partition,
        "from_offset": request.from_offset,
        "from_time": request.from_time.isoformat() if request.from_time else None,
        "to_offset": request.to_offset,
        "to_time": request.to_time.isoformat() if request.to_time else None,
    }


def _position(span: Range) -> dict[str, Any]:
    return {"next": {str(p): o for p, o in span.next.items()},
            "end": {str(p): o for p, o in span.end.items()}}
