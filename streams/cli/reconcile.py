"""``stripe-streams reconcile``: compare mirrors with Stripe's API and repair drift."""

from __future__ import annotations

import argparse
import asyncio

from streams.cli.arguments import moment, usage_error
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The resource to compare, from when, or the recorded ties."""
    parser.add_argument("--resource", metavar="R",
                        help="the mirror table to compare, e.g. customers or invoices")
    parser.add_argument("--since", type=moment, metavar="ISO8601",
                        help="only objects created at or after this time")
    parser.add_argument("--ties", action="store_true",
                        help="fetch again the objects two same-second events wrote (all "
                             "resources, or --resource's)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Compare mirror rows with Stripe's objects and repair drift through the log."""
    from streams.handlers.registry import load_handlers
    from streams.jobs.reconcile import ReconcileRequest, listable, reconcile

    resources = sorted(n for n, t in load_handlers().tables.items() if listable(t))
    if args.resource is not None and args.resource not in resources:
        return usage_error("reconcile", f"--resource must be one of {', '.join(resources)}")
    if args.resource is None and not args.ties:
        return usage_error("reconcile", "give --resource R, or --ties")
    if args.ties and args.since is not None:
        return usage_error("reconcile", "--ties fetches the tied objects whatever their age; "
                                        "drop --since")
    return asyncio.run(reconcile(settings, ReconcileRequest(args.resource, args.since,
                                                            args.ties)))
