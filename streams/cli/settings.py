"""``stripe-streams settings``: every setting with its variable, default and meaning."""

from __future__ import annotations

import argparse

from rich.console import Console

from streams.settings import Settings

console = Console(highlight=False, soft_wrap=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Print every setting: environment variable, default and meaning."""
    for env, default, doc in Settings.documented():
        console.print(f"[bold]{env}[/bold]  (default: {default})\n    {doc}")
    return 0
