"""The writer's batch plan: duplicates, newest rows and stale events, decided without a database."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.plan import BatchPlan, Logged
from streams.handlers.registry import ChildSet, Event, HandlerRegistry, MirrorRow, Projection
from streams.log.consumed import ConsumedEvent, EventRejected, Outcome
from streams.log.envelope import EventEnvelope, EventSource

TOPIC = "stripe.events.widgets"
widgets = HandlerRegistry()
widgets.table("widgets", {"colour": "text"}, "other")
widgets.table("widget_parts", {"widget": "text"}, "other")


@widgets.handles("widget.updated")
def widget_updated(event: Event) -> Projection:
    widget = event["data"]["object"]
    if widget.get("colour") == "broken":
        raise ValueError("colour cannot be broken")
    parts = tuple(
        MirrorRow("widget_parts", part, {"id": part}, {"widget": widget["id"]})
        for part in widget.get("parts", ())
    )
    row = MirrorRow("widgets", widget["id"], widget, {"colour": widget.get("colour")})
    child_sets = (ChildSet("widget_parts", "widget", widget.get("parent", widget["id"]),
                           frozenset(p.id for p in parts)),)
    return Projection(rows=(row, *parts), child_sets=child_sets)


def widget_event(
    event_id: str, offset: int, created: int, *, object_id: str = "wid_1", colour: str = "red",
    event_type: str = "widget.updated", log: tuple[int, int] | None = None, **fields: object,
) -> ConsumedEvent:
    payload = {
        "id": event_id, "object": "event", "type": event_type, "created": created,
        "data": {"object": {"id": object_id, "object": "widget", "colour": colour, **fields}},
    }
    envelope = EventEnvelope.from_event_dict(
        payload, payload=json.dumps(payload), endpoint="default", source=EventSource.WEBHOOK,
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    log_partition, log_offset = log or (None, None)
    return ConsumedEvent(
        envelope, TOPIC, 0, offset, log_offset=log_offset, log_partition=log_partition
    )


def outcomes(plan: BatchPlan, events: list[ConsumedEvent]) -> list[Outcome]:
    return [plan.outcomes[e.coordinates] for e in events]


def newest(plan: BatchPlan, table: str) -> list[dict[str, Any]]:
    """The rows of ``table`` the plan sends to PostgreSQL: the newest of each object."""
    return [json.loads(row) for row in plan.staged_rows()[table]]


def test_events_of_one_object_in_log_order_are_all_processed_and_the_newest_is_written() -> None:
    events = [widget_event(f"evt_{n}", n, 100 + n, colour=c)
              for n, c in enumerate(["red", "green", "blue"])]
    plan = BatchPlan(events, {}, widgets)

    [row] = newest(plan, "widgets")
    plan.settle({})

    assert (row["colour"], row["last_event_id"]) == ("blue", "evt_2")
    assert outcomes(plan, events) == [Outcome.PROCESSED] * 3


def test_events_older_than_what_the_row_already_holds_are_stale() -> None:
    events = [widget_event("evt_a", 10, 100), widget_event("evt_b", 11, 300)]
    plan = BatchPlan(events, {}, widgets)

    plan.settle({("widgets", "wid_1"): ((200, 5), "evt_newer")})

    assert outcomes(plan, events) == [Outcome.STALE, Outcome.PROCESSED]


def test_an_event_arriving_after_a_newer_one_of_the_same_batch_is_stale() -> None:
    events = [widget_event("evt_new", 1, 300), widget_event("evt_old", 2, 100)]
    plan = BatchPlan(events, {}, widgets)

    [written] = newest(plan, "widgets")
    plan.settle({})

    assert written["last_event_id"] == "evt_new"
    assert outcomes(plan, events) == [Outcome.PROCESSED, Outcome.STALE]


def test_ties_on_created_are_broken_by_log_position() -> None:
    events = [widget_event("evt_a", 7, 100, colour="red"),
              widget_event("evt_b", 8, 100, colour="blue")]
    plan = BatchPlan(events, {}, widgets)

    [row] = newest(plan, "widgets")

    assert row["colour"] == "blue"


def test_two_events_of_one_object_in_one_second_are_kept_as_a_tie_for_reconcile() -> None:
    events = [widget_event("evt_a", 7, 100), widget_event("evt_b", 8, 100),
              widget_event("evt_c", 9, 101, object_id="wid_2")]
    plan = BatchPlan(events, {}, widgets)

    plan.settle({("widgets", "wid_2"): ((101, 3), "evt_earlier"),
                 ("widgets", "wid_3"): ((101, 3), "evt_other")})

    assert dict(plan.ties) == {
        ("widgets", "wid_1"): {"evt_a", "evt_b"},
        ("widgets", "wid_2"): {"evt_earlier", "evt_c"},
    }


def test_events_of_different_seconds_make_no_tie() -> None:
    events = [widget_event("evt_a", 7, 100), widget_event("evt_b", 8, 101)]
    plan = BatchPlan(events, {}, widgets)

    plan.settle({})

    assert not plan.ties


def test_a_redelivered_id_only_counts_a_delivery() -> None:
    first, again = widget_event("evt_1", 1, 100), widget_event("evt_1", 2, 100)
    known = widget_event("evt_0", 3, 90)
    plan = BatchPlan([first, again, known], {"evt_0": Logged("processed")}, widgets)

    records = plan.settle({})

    assert outcomes(plan, [first, again, known]) == [
        Outcome.PROCESSED, Outcome.DUPLICATE, Outcome.DUPLICATE,
    ]
    assert [(e.envelope.id, outcome, n) for e, outcome, n in records] == [
        ("evt_1", Outcome.PROCESSED, 2)
    ]
    assert [(e.envelope.id, outcome, n) for e, outcome, n in plan.duplicates] == [
        ("evt_0", Outcome.PROCESSED, 1)
    ]


def test_a_dead_lettered_id_seen_again_is_tried_again() -> None:
    retried = widget_event("evt_dead", 4, 100)
    plan = BatchPlan([retried], {"evt_dead": Logged("dead_lettered")}, widgets)

    plan.settle({})

    assert outcomes(plan, [retried]) == [Outcome.PROCESSED]
    assert plan.duplicates == []


def test_a_router_forwarding_a_log_position_again_counts_no_delivery() -> None:
    logged = {"evt_0": Logged("processed", 0, 50), "evt_dead": Logged("dead_lettered", 0, 40)}
    forwarded_again = widget_event("evt_0", 7, 90, log=(0, 50))
    redelivered = widget_event("evt_0", 8, 90, log=(0, 61))
    dead_again = widget_event("evt_dead", 9, 80, object_id="wid_2", log=(0, 40))
    fresh = widget_event("evt_1", 10, 100, log=(0, 70))
    fresh_again = widget_event("evt_1", 11, 100, log=(0, 70))
    batch = [forwarded_again, redelivered, dead_again, fresh, fresh_again]
    plan = BatchPlan(batch, logged, widgets)

    records = plan.settle({})

    assert outcomes(plan, batch) == [
        Outcome.SKIPPED, Outcome.DUPLICATE, Outcome.SKIPPED, Outcome.PROCESSED, Outcome.SKIPPED,
    ]
    assert [(e.envelope.id, n) for e, _, n in records] == [("evt_1", 1)]
    assert [(e.envelope.id, n) for e, _, n in plan.duplicates] == [("evt_0", 1)]
    assert plan.newest_log_offsets == {"evt_0": 61, "evt_1": 70}


def test_copies_of_an_id_at_two_log_positions_count_up_to_the_newer() -> None:
    first = widget_event("evt_1", 1, 100, log=(0, 5))
    again = widget_event("evt_1", 2, 100, log=(0, 9))
    plan = BatchPlan([first, again], {}, widgets)

    records = plan.settle({})

    assert [(e.envelope.id, n) for e, _, n in records] == [("evt_1", 2)]
    assert plan.newest_log_offsets == {"evt_1": 9}


def test_a_type_without_handler_is_unhandled_and_writes_nothing() -> None:
    unknown = widget_event("evt_x", 1, 100, event_type="gadget.invented")
    plan = BatchPlan([unknown], {}, widgets)

    plan.settle({})

    assert plan.staged_rows() == {}
    assert outcomes(plan, [unknown]) == [Outcome.UNHANDLED]


def test_a_failing_handler_names_its_event_and_handler() -> None:
    good, bad = widget_event("evt_ok", 1, 100), widget_event("evt_bad", 2, 101, colour="broken")

    with pytest.raises(EventRejected) as rejected:
        BatchPlan([good, bad], {}, widgets)

    assert rejected.value.event == bad
    assert rejected.value.handler == "other.widget_updated"
    assert "colour cannot be broken" in str(rejected.value)
    assert not rejected.value.retriable


def test_a_list_of_children_whose_parent_is_not_among_the_rows_is_refused() -> None:
    orphan = widget_event("evt_o", 1, 100, parts=["part_1"], parent="wid_elsewhere")

    with pytest.raises(EventRejected, match="wid_elsewhere"):
        BatchPlan([orphan], {}, widgets)


@given(st.permutations(range(8)))
def test_exactly_the_events_newer_than_all_before_them_are_processed(order: list[int]) -> None:
    events = [widget_event(f"evt_{created}", offset, created)
              for offset, created in enumerate(order)]
    plan = BatchPlan(events, {}, widgets)

    [written] = newest(plan, "widgets")
    plan.settle({})

    running_max = [created == max(order[: i + 1]) for i, created in enumerate(order)]
    assert written["last_event_created"].startswith("1970-01-01T00:00:07")
    assert outcomes(plan, events) == [
        Outcome.PROCESSED if newest else Outcome.STALE for newest in running_max
    ]


def test_an_older_event_whose_row_postgresql_cannot_store_is_refused_despite_a_newer_one() -> None:
    bad = widget_event("evt_nul", 1, 100, colour="re\u0000d")
    newer = widget_event("evt_new", 2, 200)

    with pytest.raises(EventRejected, match="NUL") as rejected:
        BatchPlan([bad, newer], {}, widgets)

    assert rejected.value.event == bad


def test_a_backslash_before_u0000_is_no_nul_character() -> None:
    event = widget_event("evt_text", 1, 100, colour="\\u0000")

    [row] = newest(BatchPlan([event], {}, widgets), "widgets")

    assert row["colour"] == "\\u0000"
