"""The stages the monitoring API shows for one event, from its event-log row and its trail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from projections.monitor.reads import stages_of

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def logged(status: str, processed: timedelta, offset: int, **fields: Any) -> dict[str, Any]:
    return {
        "received_at": T0, "endpoint": "default", "log_partition": 2, "log_offset": 40,
        "topic": "stripe.events.customers", "partition": 2, "offset": offset, "status": status,
        "processed_at": T0 + processed, **fields,
    }


def trail(stage: str, at: timedelta, offset: int, detail: str | None = None) -> dict[str, Any]:
    return {"at": T0 + at, "stage": stage, "source": "webhook",
            "topic": "stripe.events.customers", "partition": 2, "offset": offset,
            "deliveries": 1, "detail": detail}


def stages(event: dict[str, Any], rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    shown = stages_of(event, rows, "stripe")
    return [(s["stage"], s.get("offset"), s.get("detail")) for s in shown]


def test_an_applied_event_delivered_again_shows_its_duplicate_after_its_outcome() -> None:
    event = logged("processed", timedelta(seconds=1), 7)
    assert stages(event, [trail("duplicate", timedelta(minutes=5), 9, "processed")]) == [
        ("received", None, None), ("logged", 40, None), ("routed", 7, None),
        ("applied", None, None), ("duplicate", 9, "processed"),
    ]


def test_a_retried_dead_letter_starts_with_the_failure_of_its_first_copy() -> None:
    # The retry rewrote the event log: processed, at the retry's time and offset.
    event = logged("processed", timedelta(hours=1), 31)
    rows = [trail("dead_lettered", timedelta(seconds=2), 7, "HandlerError: broken"),
            trail("retried", timedelta(hours=1), 31, "processed")]
    assert stages(event, rows) == [
        ("received", None, None), ("logged", 40, None), ("routed", 7, None),
        ("dead_lettered", 7, "HandlerError: broken"), ("retried", 31, "processed"),
    ]


def test_an_applied_event_a_later_replay_fails_shows_both() -> None:
    event = logged("processed", timedelta(seconds=1), 7)
    rows = [trail("dead_lettered", timedelta(days=1), 7, "HandlerError: new bug")]
    assert [s for s, _, _ in stages(event, rows)] == [
        "received", "logged", "routed", "applied", "dead_lettered",
    ]


def test_an_event_logged_before_its_log_position_was_recorded_has_no_logged_stage() -> None:
    event = logged("stale", timedelta(seconds=1), 7, log_offset=None, log_partition=None)
    assert [s for s, _, _ in stages(event, [])] == ["received", "routed", "stale"]
