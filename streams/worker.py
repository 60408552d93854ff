"""The ``stripe-streams worker`` command: the Faust worker with every agent and ``/metrics``."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys

import faust
import uvloop

from streams.app import create_app, worker_topics
from streams.settings import Settings
from streams.topics import ensure_topics


def run_worker(settings: Settings, web_port: int | None = None) -> int:
    """Create the worker's topics if missing, then run the worker until it is stopped.

    Returns the worker's exit code: 0 after SIGTERM or SIGINT, non-zero when an agent stopped
    it because a batch could not be settled.
    """
    # Faust's worker and its consumer thread create their loops from this policy.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap_servers, worker_topics(settings), settings.topic_partitions
        )
    )
    app = create_app(settings, web_port=web_port)
    _collect_garbage_less_often()
    worker = faust.Worker(app, loglevel=logging.INFO, quiet=not sys.stdout.isatty())
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1
    return 0


def _collect_garbage_less_often() -> None:
    """Keep the collector from rescanning what the worker allocates per batch and at startup.

    Every batch allocates tens of thousands of short-lived objects (decoded events, rows) and
    the default thresholds made the collector walk the long-lived ones over and over: measured,
    about a fifth of the worker's CPU. Reference cycles are still collected, just in larger
    generations.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
