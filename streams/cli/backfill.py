"""``stripe-streams backfill``: pull events from Stripe's Events API into the log."""

from __future__ import annotations

import argparse
import asyncio
import re

from streams.cli.arguments import job_id, moment, usage_error
from streams.settings import Settings

_TYPE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]+$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The time range, the types and the account to backfill, or the job to resume."""
    parser.add_argument("--since", type=moment, metavar="ISO8601",
                        help="first creation time to backfill (within the last 30 days)")
    parser.add_argument("--until", type=moment, metavar="ISO8601",
                        help="last creation time to backfill (default: now)")
    parser.add_argument("--types", type=_types, default=(), metavar="T,...",
                        help="only these event types, comma-separated")
    parser.add_argument("--account", type=_account, metavar="acct_...",
                        help="a connected account's events (sends Stripe-Account)")
    parser.add_argument("--undelivered", action="store_true",
                        help="only events Stripe has not delivered to a webhook endpoint")
    parser.add_argument("--resume", type=job_id, metavar="JOB_ID",
                        help="continue an interrupted backfill")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Append the events Stripe's Events API holds and the pipeline does not to the log."""
    from streams.jobs.backfill import BackfillRequest, backfill

    if args.resume is not None:
        given = [flag for flag, value in [
            ("--since", args.since), ("--until", args.until), ("--types", args.types or None),
            ("--account", args.account), ("--undelivered", args.undelivered or None),
        ] if value is not None]
        if given:
            return usage_error(
                "backfill", f"--resume continues the job's own range; drop {', '.join(given)}"
            )
    elif args.since is None:
        return usage_error("backfill", "give --since ISO8601, or --resume JOB_ID")
    return asyncio.run(backfill(settings, BackfillRequest(
        args.since, args.until, args.types, args.account, args.undelivered, args.resume
    )))


def _types(raw: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in raw.split(",") if t.strip())
    wrong = [t for t in types if not _TYPE.match(t)]
    if not types or wrong:
        raise argparse.ArgumentTypeError(
            f"must be event types such as invoice.paid,customer.updated, got {raw!r}"
        )
    return types


def _account(raw: str) -> str:
    if not _ACCOUNT.match(raw):
        raise argparse.ArgumentTypeError(f"must be a connected account id acct_..., got {raw!r}")
    return raw
