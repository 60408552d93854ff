"""One gateway server process: uvicorn with httptools and uvloop, graceful on SIGTERM.

On SIGTERM or SIGINT uvicorn stops accepting connections, lets every in-flight request finish
(each is bounded by the produce timeout), and only then runs the lifespan shutdown, which flushes
the producer; so every event answered 200 is in Kafka before the process exits. On SIGHUP the
gateway re-reads its signing secrets and carries on serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path

import uvicorn
import uvloop

from ingest.gateway import Gateway
from ingest.producer import EventLog
from ingest.protocol import GuardedHttpTools
from streams.errors import StreamsError
from streams.settings import Settings

# Time left after the produce timeout for in-flight requests to write their answers.
_SHUTDOWN_MARGIN = 5.0


def build_gateway(settings: Settings, metrics_dir: Path | None = None) -> Gateway:
    """Build the gateway application writing to Kafka."""
    event_log = EventLog(settings)
    return Gateway(
        settings, event_log, start=event_log.start, stop=event_log.stop, metrics_dir=metrics_dir
    )


def serve(
    gateway: Gateway, settings: Settings, host: str, port: int,
    sockets: list[socket.socket] | None = None,
) -> None:
    """Serve ``gateway`` (on ``sockets`` if given) until SIGTERM or SIGINT, then drain and flush.

    SIGHUP meanwhile reloads the signing secrets. Raise StreamsError when it cannot start.
    """
    server = uvicorn.Server(_config(gateway, settings, host, port))
    with (
        contextlib.suppress(SystemExit),  # uvicorn exits on a failed start-up; see below.
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        runner.run(_serve_reloading(server, gateway, sockets))
    if gateway.startup_failure is not None:
        raise StreamsError(gateway.startup_failure)
    if not server.started:
        raise StreamsError(f"could not listen on {host}:{port}")


async def _serve_reloading(
    server: uvicorn.Server, gateway: Gateway, sockets: list[socket.socket] | None
) -> None:
    # uvicorn leaves SIGHUP alone, and Python's default for it ends the process.
    asyncio.get_running_loop().add_signal_handler(
        signal.SIGHUP, gateway.reload_secrets, os.environ
    )
    # The gateway command holds SIGHUP back from its start, so one sent meanwhile applies now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    await server.serve(sockets=sockets)


def _config(gateway: Gateway, settings: Settings, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        gateway,
        host=host,
        port=port,
        http=GuardedHttpTools,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # X-Forwarded-For from a trusted proxy matters only to the source-network allow-list.
        proxy_headers=settings.allowed_networks is not None,
        backlog=2048,
        timeout_graceful_shutdown=int(settings.produce_timeout + _SHUTDOWN_MARGIN),
    )
