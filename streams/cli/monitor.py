"""``stripe-streams monitor``: the read-only monitoring API."""

from __future__ import annotations

import argparse
import ipaddress

from streams.errors import Misconfiguration
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the API listens, and whether it may go without a token."""
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)",
    )
    parser.add_argument("--port", type=int, default=8081, help="port to listen on")
    parser.add_argument(
        "--insecure-no-auth", action="store_true",
        help="serve /api/ without a bearer token; only on a loopback address",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run the monitoring API: JSON over the ops tables, behind a bearer token."""
    import uvicorn

    from projections.database import create_pool
    from projections.monitor.api import create_app

    token = settings.monitor_token
    if token is None and not args.insecure_no_auth:
        raise Misconfiguration(
            "set STRIPE_STREAMS_MONITOR_TOKEN: the monitoring API shows customer data "
            "(or pass --insecure-no-auth on a loopback address)"
        )
    if args.insecure_no_auth and not _loopback(args.host):
        raise Misconfiguration(
            f"--insecure-no-auth serves customer data to anyone who reaches {args.host}: "
            "use it only with --host 127.0.0.1 or ::1, or set STRIPE_STREAMS_MONITOR_TOKEN"
        )
    pool = create_pool(settings, max_size=4, read_only=True)
    app = create_app(settings, pool, None if args.insecure_no_auth else token)
    uvicorn.run(
        app, host=args.host, port=args.port, log_config=None, access_log=False,
        server_header=False, lifespan="on",
    )
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
