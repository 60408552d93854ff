"""``stripe-streams migrate``: apply the pending SQL migrations."""

from __future__ import annotations

import argparse
import asyncio
from functools import partial

from rich.console import Console

from streams.settings import Settings

console = Console(highlight=False, soft_wrap=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Apply pending SQL migrations, then create the monthly partitions ahead."""
    from projections.migrations import migrate
    from projections.partitions import maintain
    from streams.outages import POSTGRES
    from streams.worker.settling import RetryPolicy, patiently

    # PostgreSQL starting up (or restarting) is waited out; a refusal ends the command at once.
    applied = asyncio.run(
        patiently(
            partial(asyncio.to_thread, migrate, settings.database_url),
            RetryPolicy.from_settings(settings), POSTGRES,
        )
    )
    for migration in applied:
        console.print(f"applied {migration.name}")
    console.print(f"{len(applied)} migration(s) applied; schema is up to date")
    done = maintain(settings.database_url, retention_months=settings.event_log_retention_months)
    if done is not None:
        for name in done.created:
            console.print(f"created partition ops.{name}")
        for name in done.dropped:
            console.print(f"dropped partition ops.{name} (older than the retention)")
    return 0
