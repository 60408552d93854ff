"""`stripe-streams replay`: a range of the log applied again, as live processing applies it."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.integration.log_support import log_positions, query, run_command, start_command
from tests.integration.test_projection_ordering import (
    apply_in_batches,
    deliver,
    empty_tables,
    envelope_of,
    mirror_snapshot,
)
from tests.integration.test_projection_writer import customer_events
from tests.integration.test_worker_crash import many_stories
from tests.integration.worker_support import (
    WorkerProcess,
    logged_events,
    prepare_topics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_a_replay_from_the_start_projects_the_log_as_live_processing_does(
    settings: Settings, tmp_path: Path
) -> None:
    story = many_stories(12)
    asyncio.run(apply_in_batches(settings.database_url, deliver(story)))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    prepare_topics(settings)
    asyncio.run(produce(settings, story))

    done = run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                       "--from-offset", "0")

    assert done.returncode == 0, done.stderr
    assert mirror_snapshot(settings.database_url) == expected
    assert query(settings.database_url,
                 "SELECT DISTINCT source, deliveries FROM ops.event_log") == [("replay", 1)]
    # Each event's audit trail says the replay re-applied it, once.
    assert query(settings.database_url, "SELECT stage, count(DISTINCT event_id), count(*) "
                 "FROM ops.event_trail GROUP BY stage") == [("replayed", len(story), len(story))]
    [(kind, status, processed, failed)] = query(
        settings.database_url, "SELECT kind, status, processed, failed FROM ops.batch_jobs"
    )
    assert (kind, status, processed, failed) == ("replay", "succeeded", len(story), 0)


def test_a_partition_and_an_upper_offset_bound_the_replay(
    settings: Settings, tmp_path: Path
) -> None:
    story = many_stories(12)
    prepare_topics(settings)
    asyncio.run(produce(settings, story))
    positions = log_positions(settings)
    partition = positions[0][0]
    in_partition = [(offset, event_id) for p, offset, event_id in positions if p == partition]
    last = in_partition[len(in_partition) // 2][0]
    first = in_partition[2][0]

    done = run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                       "--partition", str(partition), "--from-offset", str(first),
                       "--to-offset", str(last))

    assert done.returncode == 0, done.stderr
    expected = {event_id for offset, event_id in in_partition if first <= offset <= last}
    assert logged_events(settings.database_url) == expected


def test_a_replay_from_a_time_starts_at_the_first_event_appended_then(
    settings: Settings, tmp_path: Path
) -> None:
    earlier, later = many_stories(4, seed=1), many_stories(4, seed=2)
    prepare_topics(settings)
    asyncio.run(produce(settings, earlier))
    time.sleep(1.5)
    boundary = datetime.now(UTC)
    time.sleep(0.5)
    asyncio.run(produce(settings, later))

    done = run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                       "--from-time", boundary.isoformat())

    assert done.returncode == 0, done.stderr
    assert logged_events(settings.database_url) == {e.id for e in later}


def test_a_replay_rewrites_rows_from_their_newest_event_and_never_makes_one_older(
    settings: Settings, tmp_path: Path
) -> None:
    events, customer = customer_events(4)
    envelopes = [envelope_of(event) for event in events]
    prepare_topics(settings)
    asyncio.run(produce(settings, envelopes))
    assert run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                       "--from-offset", "0").returncode == 0
    projected = mirror_snapshot(settings.database_url)["customers"]
    # What a handler with a bug would have written, before its fix was deployed.
    query(settings.database_url,
          "UPDATE stripe.customers SET email = 'wrong@example.com', name = 'wrong' "
          "RETURNING id")
    [(partition, newest_offset, newest_id)] = [
        p for p in log_positions(settings) if p[2] == envelopes[-1].id
    ]

    older = run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                        "--partition", str(partition), "--from-offset", "0",
                        "--to-offset", str(newest_offset - 1))
    assert older.returncode == 0, older.stderr
    assert query(settings.database_url, "SELECT name, last_event_id FROM stripe.customers") \
        == [("wrong", newest_id)]

    newest = run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                         "--partition", str(partition), "--from-offset", str(newest_offset))
    assert newest.returncode == 0, newest.stderr
    assert mirror_snapshot(settings.database_url)["customers"] == projected
    assert customer["name"] == projected[0][projected_columns(settings).index("name")]
    assert query(settings.database_url, "SELECT DISTINCT deliveries FROM ops.event_log") \
        == [(1,)]


def projected_columns(settings: Settings) -> list[str]:
    return [str(name) for (name,) in query(
        settings.database_url,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'stripe' "
        "AND table_name = 'customers' AND column_name NOT IN ('updated_at', "
        "'last_event_offset') ORDER BY column_name",
    )]


def test_a_replay_beside_a_live_worker_counts_no_delivery_and_changes_no_outcome(
    settings: Settings, tmp_path: Path
) -> None:
    story = many_stories(30)
    asyncio.run(apply_in_batches(settings.database_url, deliver(story)))
    expected = mirror_snapshot(settings.database_url)
    empty_tables(settings.database_url)
    prepare_topics(settings)
    half = len(story) // 2
    asyncio.run(produce(settings, story[:half]))

    with WorkerProcess(settings, tmp_path) as worker:
        replaying = start_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                                  "--from-offset", "0",
                                  STRIPE_STREAMS_JOB_BATCH_SIZE="20")
        asyncio.run(produce(settings, story[half:]))
        assert replaying.wait(timeout=120) == 0, replaying.communicate()[1]
        wait_until(lambda: logged_events(settings.database_url) >= {e.id for e in story}, 120,
                   "every event applied", [worker])

    assert mirror_snapshot(settings.database_url) == expected
    assert query(settings.database_url,
                 "SELECT DISTINCT status, deliveries FROM ops.event_log") == [("processed", 1)]


def test_an_interrupted_replay_stops_at_a_batch_and_resumes_where_it_stopped(
    settings: Settings, tmp_path: Path
) -> None:
    story = many_stories(60)
    prepare_topics(settings)
    asyncio.run(produce(settings, story))
    small = {"STRIPE_STREAMS_JOB_BATCH_SIZE": "5"}

    replaying = start_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                              "--from-offset", "0", **small)
    deadline = time.monotonic() + 60
    while not query(settings.database_url,
                    "SELECT id FROM ops.batch_jobs WHERE processed > 0"):
        assert time.monotonic() < deadline and replaying.poll() is None
        time.sleep(0.05)
    replaying.send_signal(signal.SIGTERM)
    assert replaying.wait(timeout=60) == 130, replaying.communicate()[1]

    [(job_id, status, processed)] = query(
        settings.database_url, "SELECT id, status, processed FROM ops.batch_jobs"
    )
    assert status == "cancelled"
    assert 0 < int(str(processed)) < len(story)
    assert len(logged_events(settings.database_url)) < len(story)

    resumed = run_command(settings, tmp_path, "replay", "--resume", str(job_id), **small)

    assert resumed.returncode == 0, resumed.stderr
    assert logged_events(settings.database_url) == {e.id for e in story}
    assert query(settings.database_url, "SELECT status, processed FROM ops.batch_jobs") == [
        ("succeeded", len(story))
    ]


def test_events_no_table_can_hold_are_dead_lettered_and_the_replay_goes_on(
    settings: Settings, tmp_path: Path
) -> None:
    events, _ = customer_events(5)
    envelopes = [envelope_of(event) for event in events]
    out_of_range = replace(envelopes[1], created=10**12)
    surrogate = replace(envelopes[2], payload=envelopes[2].payload.replace(
        '"object": "customer"', '"object": "customer", "name": "\\ud800"', 1
    ))
    no_object = replace(envelopes[3], payload=json.dumps(
        {**json.loads(envelopes[3].payload), "data": {}}
    ))
    prepare_topics(settings)
    asyncio.run(produce(settings, [envelopes[0], out_of_range, surrogate, no_object,
                                   envelopes[4]]))

    done = run_command(settings, tmp_path, "replay", "--topic", settings.topic(),
                       "--from-offset", "0")

    assert done.returncode == 1, done.stderr
    assert sorted(query(settings.database_url,
                        "SELECT event_id, handler FROM ops.dead_letters")) == sorted([
        (out_of_range.id, "validate"),
        (surrogate.id, "customers.customer_changed"),
        (no_object.id, "customers.customer_changed"),
    ])
    assert query(settings.database_url, "SELECT last_event_id FROM stripe.customers") == [
        (envelopes[4].id,)
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topic", "nope", "--from-offset", "0"], "nope is not a topic of this project"),
        (["--topic", "{dlq}", "--from-offset", "0"], "use 'stripe-streams dlq retry'"),
        (["--from-offset", "0"], "give --topic"),
        (["--topic", "{log}", "--from-time", "yesterday"], "must be an ISO 8601 time"),
        (["--resume", "999"], "there is no batch job 999"),
    ],
)
def test_a_mistaken_replay_is_refused_in_one_line(
    settings: Settings, tmp_path: Path, args: list[str], message: str
) -> None:
    prepare_topics(settings)
    given = [a.format(log=settings.topic(), dlq=settings.topic("dlq")) for a in args]

    done = run_command(settings, tmp_path, "replay", *given)

    assert done.returncode in (1, 2)
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
