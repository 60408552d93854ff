"""``stripe-streams rebuild``: rebuild the mirror tables from the log, with no downtime."""

from __future__ import annotations

import argparse
import asyncio

from streams.log.routing import FAMILIES
from streams.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The family to rebuild; all of them by default."""
    parser.add_argument(
        "--family", choices=[f for f in FAMILIES], metavar="FAMILY",
        help=f"rebuild only this family's tables ({', '.join(FAMILIES)})",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild the mirror tables from the log while the pipeline keeps running."""
    from streams.jobs.rebuild import rebuild
    from streams.worker.memory import collect_garbage_less_often

    collect_garbage_less_often()
    return asyncio.run(rebuild(settings, args.family))
