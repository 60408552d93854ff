"""``stripe-streams gateway``: the ingest gateway Stripe posts to."""

from __future__ import annotations

import argparse

from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the gateway listens."""
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the ingest gateway: verified Stripe webhooks appended to the Kafka log."""
    from ingest.supervisor import run_gateway

    run_gateway(settings, args.host, args.port)
    return 0
