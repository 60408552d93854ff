"""Whether the dead-letter topic already holds a given failure.

Only a dead letter whose produce was under way when its worker died needs this.
"""

from __future__ import annotations

from streams.errors import CodecError
from streams.log.codec import decode_dead_letter
from streams.log.envelope import DeadLetter
from streams.log.scanning import scan_since


async def holds_dead_letter(bootstrap_servers: str, topic: str, letter: DeadLetter) -> bool:
    """Whether ``topic`` holds a dead letter of this failure: same source message, same time."""
    found: list[bool] = []

    def same_failure(message: bytes) -> bool:
        try:
            other = decode_dead_letter(message)
        except CodecError:
            return False
        if (other.source_topic, other.source_partition, other.source_offset,
                other.last_failed_at) == (letter.source_topic, letter.source_partition,
                                          letter.source_offset, letter.last_failed_at):
            found.append(True)
        return bool(found)

    await scan_since(bootstrap_servers, topic, letter.last_failed_at, same_failure)
    return bool(found)
