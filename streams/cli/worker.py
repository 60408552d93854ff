"""``stripe-streams worker``: the Faust worker with the router and every family agent."""

from __future__ import annotations

import argparse

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The port of the worker's web server."""
    parser.add_argument(
        "--web-port", type=int, default=None,
        help="port serving /metrics and /readyz (default: STRIPE_STREAMS_WORKER_PORT, 6066)",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the Faust worker with every agent; metrics at /metrics on the web port."""
    # Each command imports what it runs, so one command's process holds no other's.
    from streams.worker.process import run_worker

    return run_worker(settings, args.web_port)
