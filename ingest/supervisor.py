"""The ``gateway`` command: one server process, or a supervisor of several worker processes.

With ``STRIPE_STREAMS_GATEWAY_WORKERS`` above one, this process binds the socket and forks that
many workers sharing it, each a whole gateway (:mod:`ingest.server`) with its own producer; their
metrics meet in a shared directory, so any worker's ``/metrics`` shows the gateway's totals. It
forwards SIGTERM and SIGINT to the workers once and waits for their graceful shutdown, and
forwards every SIGHUP, on which each worker re-reads its signing secrets. When a worker ends on
its own (Kafka unreachable at start, a crash) it stops the others and exits with an error, so
whatever supervises the gateway restarts it as a whole.

This module imports neither Kafka nor HTTP code: the supervisor stays small and the workers,
forked before importing them, load their own.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Sequence
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from streams.errors import ConfigurationError, StreamsError
from streams.outages import RepeatFilter
from streams.settings import DEFAULT_ENDPOINT, Settings

log = logging.getLogger(__name__)


def run_gateway(settings: Settings, host: str, port: int) -> None:
    """Serve the gateway until SIGTERM or SIGINT; raise StreamsError if it cannot start.

    SIGHUP makes every server process re-read its signing secrets.
    """
    if settings.secrets_for(DEFAULT_ENDPOINT) is None:
        raise ConfigurationError(
            "STRIPE_WEBHOOK_SECRETS is not set (nor STRIPE_WEBHOOK_SECRETS_FILE): the gateway "
            "refuses to start without a secret"
        )
    # Held back, in this process and the workers it forks, until a handler is in place, so a
    # SIGHUP during start-up reloads the secrets instead of ending the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    if settings.gateway_workers == 1:
        from ingest.server import build_gateway, serve

        configure_logging()
        serve(build_gateway(settings), settings, host, port)
        return
    configure_logging()
    listener = _listen(host, port)
    metrics_dir = Path(tempfile.mkdtemp(prefix="stripe-streams-gateway-metrics-"))
    # prometheus_client reads this when a worker first imports it, after the fork.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    # Forking is safe here: this process has started no thread and no event loop.
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(
            target=_serve_worker, args=(settings, host, port, listener, metrics_dir),
            name=f"gateway-worker-{n}",
        )
        for n in range(settings.gateway_workers)
    ]
    try:
        for worker in workers:
            worker.start()
        log.info("serving on %s:%d with %d workers", host, port, len(workers))
        _supervise(workers)
    finally:
        listener.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _listen(host: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise StreamsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener.listen(2048)
    return listener


def _serve_worker(
    settings: Settings, host: str, port: int, listener: socket.socket, metrics_dir: Path
) -> None:
    from ingest.server import build_gateway, serve

    # A terminal's Ctrl+C reaches the parent alone, which then stops each worker exactly once.
    os.setpgrp()
    try:
        serve(build_gateway(settings, metrics_dir), settings, host, port, sockets=[listener])
    except StreamsError as exc:
        log.error("worker cannot serve: %s", exc)
        raise SystemExit(1) from None


def _supervise(workers: Sequence[BaseProcess]) -> None:
    """Wait for every worker; on a signal stop them all, and likewise when one dies on its own."""
    stopping = False
    failed: BaseProcess | None = None

    def stop_all(signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        nonlocal stopping
        if stopping:
            return  # A second SIGTERM would make uvicorn drop in-flight requests.
        stopping = True
        _signal(workers, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGHUP, lambda signum, frame: _signal(workers, signal.SIGHUP))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    running = list(workers)
    while running:
        ended = wait([worker.sentinel for worker in running])
        for worker in [w for w in running if w.sentinel in ended]:
            worker.join()
            running.remove(worker)
            if not stopping:
                failed = worker
                stop_all()
    if failed is not None:
        raise StreamsError(
            f"{failed.name} stopped on its own (exit code {failed.exitcode}); its log says why"
        )


def _signal(workers: Sequence[BaseProcess], signum: signal.Signals) -> None:
    for worker in workers:
        if worker.is_alive() and worker.pid is not None:
            os.kill(worker.pid, signum)


def configure_logging() -> None:
    """Log to stderr with the process name, which tells the workers apart.

    Kafka's client logs each failed connection; while Kafka is down only the first of a kind
    and a count a minute are shown.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(processName)s %(name)s %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    RepeatFilter().install(logging.root.handlers)
