"""The Faust monitor of the worker: what Faust itself reads, without per-message statistics.

Faust's default monitor counts every message and event by topic, stream and task and times
each one; the worker serves its own metrics and never reads those, and they cost about 5 us
of CPU per message per agent (measured with an agent that only takes and acknowledges). Faust
reads one thing back: when a stream last took an event of each partition, which its consumer
uses to warn of a stream that stopped processing. That is kept.
"""

from __future__ import annotations

from typing import Any

from faust.sensors import Monitor
from faust.types import TP, EventT, Message, StreamT


class LivenessMonitor(Monitor):
    """Faust's monitor keeping only the per-partition time of the last event a stream took."""

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        """Count nothing when a message arrives."""

    def on_stream_event_in(
        self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any]
    ) -> dict[str, Any] | None:
        """Remember when a stream last took an event of ``tp``, for Faust's stall warnings."""
        self.stream_inbound_time[tp] = self.time()
        return None

    def on_stream_event_out(
        self,
        tp: TP,
        offset: int,
        stream: StreamT[Any],
        event: EventT[Any],
        state: dict[str, Any] | None = None,
    ) -> None:
        """Time nothing when a stream is done with an event."""

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        """Time nothing when a message is acknowledged."""
