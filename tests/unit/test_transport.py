"""The worker's Kafka consumer, as Faust builds it through the project's transport."""

from __future__ import annotations

from streams.app import create_app
from streams.settings import Settings
from streams.transport import FETCH_MAX_WAIT_MS

SETTINGS = Settings.from_env({"STRIPE_STREAMS_TOPIC_PREFIX": "unit"})
FAUST_FETCH_MAX_WAIT_MS = 1500


async def test_the_worker_consumer_holds_an_empty_fetch_briefly() -> None:
    """A fetch of caught-up family topics must not hold back records waiting in the log.

    Faust's own 1.5 s long-poll halved the throughput of a backlog and delayed quiet events.
    """
    app = create_app(SETTINGS)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)

    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    assert FETCH_MAX_WAIT_MS <= FAUST_FETCH_MAX_WAIT_MS / 10
