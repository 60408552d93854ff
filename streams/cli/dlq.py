"""``stripe-streams dlq``: review dead letters, retry or resolve them, resume a paused family."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.cli.arguments import job_id, moment, usage_error
from streams.log.routing import FAMILIES
from streams.settings import Settings

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
STATUSES = ("open", "retried", "resolved", "all")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One sub-command per operation on dead letters."""
    sub = parser.add_subparsers(dest="operation", required=True, metavar="OPERATION",
                                parser_class=type(parser))
    listing = sub.add_parser("list", help="list dead letters, one per failing event",
                             allow_abbrev=False)
    listing.add_argument("--status", choices=STATUSES, default="open",
                         help="open (default), retried, resolved, or all")
    listing.add_argument("--type", help="only events of this type, e.g. invoice.paid")
    listing.add_argument("--family", choices=FAMILIES, metavar="FAMILY",
                         help=f"only this family ({', '.join(FAMILIES)})")
    listing.add_argument("--since", type=moment, metavar="ISO8601",
                         help="only those that last failed at or after this time")
    listing.add_argument("--older-than", type=_duration, metavar="AGE",
                         help="only those that last failed longer ago than this, e.g. 30m, 2h, 7d")
    listing.add_argument("--limit", type=job_id, default=50, help="rows per page (50)")
    listing.add_argument("--after", type=job_id, default=0, metavar="ID",
                         help="the page after this dead letter id")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show = sub.add_parser("show", help="show one dead letter with its payload",
                          allow_abbrev=False)
    show.add_argument("id", type=job_id)
    show.add_argument("--json", action="store_true", help="print JSON")
    retry = sub.add_parser("retry", help="republish dead letters' events to the log",
                           allow_abbrev=False)
    retry.add_argument("ids", type=job_id, nargs="*", metavar="ID")
    retry.add_argument("--type", help="every open dead letter of this event type")
    retry.add_argument("--all", action="store_true", dest="everything",
                       help="every open dead letter")
    retry.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                       help="how long to wait for the workers to settle them (60; 0: no wait)")
    resolve = sub.add_parser("resolve", help="close a dead letter without reprocessing",
                             allow_abbrev=False)
    resolve.add_argument("id", type=job_id)
    resolve.add_argument("--note", required=True, help="why it needs no reprocessing")
    resume = sub.add_parser("resume", help="resume a family paused by too many dead letters",
                            allow_abbrev=False)
    resume.add_argument("family", choices=FAMILIES, metavar="FAMILY")


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Review dead letters, retry or resolve them, or resume a paused family."""
    if args.operation == "retry":
        chosen = [bool(args.ids), args.type is not None, args.everything]
        if sum(chosen) != 1:
            return usage_error("dlq", "retry takes dead letter IDs, --type T or --all: one of them")
        if args.wait < 0:
            return usage_error("dlq", "--wait must be 0 or more seconds")
        from streams.jobs.dlq import RetryRequest, retry

        return asyncio.run(retry(settings, RetryRequest(
            tuple(args.ids), args.type, args.everything, args.wait
        )))
    if args.operation == "resolve" and not args.note.strip():
        return usage_error("dlq", "--note must say why the dead letter needs no reprocessing")
    return asyncio.run(_review(settings, args))


async def _review(settings: Settings, args: argparse.Namespace) -> int:
    from projections.database import connection, create_pool, database_errors
    from projections.dead_letter_review import (
        DeadLetterFilter,
        list_dead_letters,
        resolve_dead_letter,
        show_dead_letter,
    )
    from projections.pauses import resume_family
    from streams.errors import StreamsError

    console = Console(highlight=False, soft_wrap=True)
    pool = create_pool(settings, min_size=1, max_size=1)
    with database_errors(settings.database_url):
        await pool.open(wait=False)
    try:
        async with connection(pool) as conn:
            if args.operation == "list":
                where = DeadLetterFilter(
                    None if args.status == "all" else args.status, args.type, args.family,
                    args.since,
                    datetime.now(UTC) - args.older_than if args.older_than else None,
                )
                rows = await list_dead_letters(conn, where, after=args.after,
                                               limit=args.limit)
                _print_list(console, rows, args.limit, args.json)
            elif args.operation == "show":
                row = await show_dead_letter(conn, args.id)
                if row is None:
                    raise StreamsError(f"there is no dead letter {args.id}")
                _print_one(console, row, args.json)
            elif args.operation == "resolve":
                if not await resolve_dead_letter(conn, args.id, args.note.strip()):
                    raise StreamsError(f"no dead letter {args.id} is left to resolve")
                console.print(f"dead letter {args.id} resolved")
            elif await resume_family(conn, args.family):
                console.print(f"family {args.family} resumes within seconds")
            else:
                console.print(f"family {args.family} was not paused")
        return 0
    finally:
        await pool.close()


def _duration(raw: str) -> timedelta:
    found = _DURATION.match(raw)
    if not found:
        raise argparse.ArgumentTypeError(
            f"must be an age such as 30m, 2h or 7d, got {raw!r}"
        )
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


def _print_list(console: Console, rows: list[dict[str, Any]], limit: int, as_json: bool) -> None:
    after = rows[-1]["id"] if len(rows) == limit else None
    if as_json:
        console.print_json(json.dumps({"dead_letters": rows, "next_after": after},
                                      default=_plain))
        return
    table = Table(title=f"{len(rows)} dead letter(s)")
    for column in ("id", "status", "type", "family", "attempts", "last failed", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["id"]), row["status"], row["type"], row["family"], str(row["attempts"]),
            row["last_failed_at"].isoformat(timespec="seconds"),
            f"{row['error_type']}: {row['error_message']}"[:160],
        )
    console.print(table)
    if after is not None:
        console.print(f"more: --after {after}")


def _print_one(console: Console, row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        console.print_json(json.dumps(row, default=_plain))
        return
    table = Table(title=f"dead letter {row['id']}", show_header=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in row.items():
        if name != "payload":
            table.add_row(name, "" if value is None else _plain(value))
    console.print(table)
    console.print_json(json.dumps(row["payload"]))


def _plain(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
