"""Argument types shared by the commands: each refuses a bad value in one line."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

USAGE = 2
"""Exit code of a usage mistake."""


def usage_error(command: str, message: str) -> int:
    """Print a usage mistake argparse cannot see in one line; return the exit code for it."""
    print(
        f"stripe-streams {command}: {message} (see 'stripe-streams {command} --help')",
        file=sys.stderr,
    )
    return USAGE


def offset(raw: str) -> int:
    """A Kafka offset: an integer, zero or more."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an offset (0 or more), got {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an offset (0 or more), got {value}")
    return value


def job_id(raw: str) -> int:
    """The id of a row of ops.batch_jobs or ops.dead_letters."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a numeric id, got {raw!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive id, got {value}")
    return value


def moment(raw: str) -> datetime:
    """An ISO 8601 time; one without a time zone is read as UTC."""
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time such as 2026-12-01T09:30:00Z, got {raw!r}"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
