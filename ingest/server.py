"""Serving the gateway: uvicorn with httptools and uvloop, one process, graceful on SIGTERM.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets every in-flight request finish
(each is bounded by the produce timeout), and only then runs the lifespan shutdown, which flushes
the producer; so every event answered 200 is in Kafka before the process exits.
"""

from __future__ import annotations

import contextlib
import logging

import uvicorn

from ingest.gateway import Gateway
from ingest.producer import EventLog
from streams.errors import ConfigurationError, StreamsError
from streams.settings import DEFAULT_ENDPOINT, Settings

# Time left after the produce timeout for in-flight requests to write their answers.
_SHUTDOWN_MARGIN = 5.0


def build_gateway(settings: Settings) -> Gateway:
    """Build the gateway application writing to Kafka; refuse settings without a signing secret."""
    if settings.secrets_for(DEFAULT_ENDPOINT) is None:
        raise ConfigurationError(
            "STRIPE_WEBHOOK_SECRETS is not set: the gateway refuses to start without a secret"
        )
    event_log = EventLog(settings)
    return Gateway(settings, event_log, start=event_log.start, stop=event_log.stop)


def run_gateway(settings: Settings, host: str, port: int) -> None:
    """Serve the gateway until SIGTERM or SIGINT; raise StreamsError if it cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    gateway = build_gateway(settings)
    config = uvicorn.Config(
        gateway,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-For from a trusted proxy matters only to the source-network allow-list.
        proxy_headers=settings.allowed_networks is not None,
        backlog=2048,
        timeout_graceful_shutdown=int(settings.produce_timeout + _SHUTDOWN_MARGIN),
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(SystemExit):  # uvicorn exits on a failed start-up; see below.
        server.run()
    if gateway.startup_failure is not None:
        raise StreamsError(gateway.startup_failure)
    if not server.started:
        raise StreamsError(f"could not listen on {host}:{port}")
