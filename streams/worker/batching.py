"""Batches of deliveries bounded by count, bytes and time, acknowledged by the agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from faust import Stream
from faust.types import EventT

Delivery = EventT[bytes]
"""A message as Faust delivers it to an agent: raw key and value, with its coordinates."""


async def batches(
    stream: Stream[bytes], size: int, max_bytes: int, within: float
) -> AsyncIterator[Sequence[Delivery]]:
    """Batches of up to ``size`` deliveries, ``max_bytes`` of messages or ``within`` seconds.

    Like Faust's ``noack_take``, bounded by bytes as well (a batch ends with the message that
    reaches ``max_bytes``): the caller acknowledges each batch once it is settled. Nothing is
    collected while the caller settles a batch, so an agent holds one batch at a time.
    """
    pending: list[Delivery] = []
    held = 0
    full = asyncio.Event()
    room = asyncio.Event()
    room.set()

    async def collect(value: bytes) -> bytes:
        nonlocal held
        if not room.is_set():
            await stream.wait(cast(Any, room))
        # Faust sets the delivery being processed before it runs the stream's processors.
        delivery = cast(Delivery, stream.current_event)
        pending.append(delivery)
        held += len(delivery.message.value or b"")
        if len(pending) >= size or held >= max_bytes:
            full.set()
            room.clear()
            await stream.wait(cast(Any, room))
        return value

    stream.enable_acks = False
    stream.add_processor(collect)
    # Iterating the stream in the background runs ``collect`` on every delivery, as noack_take
    # does (through the same private hook).
    stream._enable_passive(cast(Any, aiter(stream.channel)))
    while not stream.should_stop:
        await stream.wait_for_stopped(cast(Any, full), timeout=within)
        if pending:
            batch = pending[:]
            pending.clear()
            held = 0
            full.clear()
            room.clear()
            try:
                yield batch
            finally:
                room.set()
