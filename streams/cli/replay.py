"""``stripe-streams replay``: re-apply a range of a topic to the projections."""

from __future__ import annotations

import argparse
import asyncio

from streams.cli.arguments import job_id, moment, offset, usage_error
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The topic and the range to replay, or the job to resume."""
    parser.add_argument("--topic", help="<prefix>.events or a family's <prefix>.events.<family>")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-offset", type=offset, metavar="N", help="first offset to apply")
    start.add_argument(
        "--from-time", type=moment, metavar="ISO8601",
        help="first event appended at or after this time (UTC unless it says otherwise)",
    )
    end = parser.add_mutually_exclusive_group()
    end.add_argument("--to-offset", type=offset, metavar="N", help="last offset to apply")
    end.add_argument(
        "--to-time", type=moment, metavar="ISO8601",
        help="stop before the first event appended at or after this time",
    )
    parser.add_argument("--partition", type=offset, metavar="P", help="only this partition")
    parser.add_argument(
        "--resume", type=job_id, metavar="JOB_ID", help="continue an interrupted replay"
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Re-apply events of a topic to the projections, from an offset or a time."""
    from streams.jobs.replay import ReplayRequest, replay
    from streams.worker.memory import collect_garbage_less_often

    collect_garbage_less_often()
    if args.resume is not None:
        given = [flag for flag, value in [
            ("--topic", args.topic), ("--from-offset", args.from_offset),
            ("--from-time", args.from_time), ("--to-offset", args.to_offset),
            ("--to-time", args.to_time), ("--partition", args.partition),
        ] if value is not None]
        if given:
            return usage_error(
                "replay", f"--resume continues the job's own range; drop {', '.join(given)}"
            )
    elif args.topic is None or (args.from_offset is None and args.from_time is None):
        return usage_error(
            "replay", "give --topic and one of --from-offset or --from-time, or --resume JOB_ID"
        )
    request = ReplayRequest(
        args.topic, args.partition, args.from_offset, args.from_time, args.to_offset,
        args.to_time, args.resume,
    )
    return asyncio.run(replay(settings, request))
