"""The ``stripe-streams`` command line.

Every setting is also a flag (``--kafka-bootstrap-servers``, ``--database-url``, ...); flags win
over the environment. Each command is a function taking the settings and its parsed arguments and
returning an exit code; errors end the command with one line naming what went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from rich.console import Console

from streams.errors import StreamsError
from streams.settings import Settings

Command = Callable[[Settings, argparse.Namespace], int]
console = Console(highlight=False, soft_wrap=True)


def services(settings: Settings, args: argparse.Namespace) -> int:
    """Start, stop or show the local Kafka broker and PostgreSQL cluster."""
    from streams.services import LocalServices

    local = LocalServices.from_settings(settings)
    if args.action == "up":
        with console.status(f"starting Kafka {settings.kafka_version} and PostgreSQL"):
            postgres_pid = local.postgres.up()
            kafka_pid = local.kafka.up()
        console.print(f"postgres  {local.postgres.address}  pid {postgres_pid}  up")
        console.print(f"kafka     {local.kafka.address}  pid {kafka_pid}  up")
    elif args.action == "down":
        for name, stopped in (("kafka", local.kafka.down()), ("postgres", local.postgres.down())):
            console.print(f"{name:<9} {'stopped' if stopped else 'was not running'}")
    else:
        for name, service in (("kafka", local.kafka), ("postgres", local.postgres)):
            pid = service.pid()
            state = f"pid {pid}  running" if pid else "stopped"
            console.print(f"{name:<9} {service.address}  {state}  log {service.log_file}")
    return 0


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Apply pending SQL migrations."""
    from projections.migrations import migrate as apply_migrations
    from streams.dead_letters import RetryPolicy, patiently
    from streams.outages import POSTGRES

    # PostgreSQL starting up (or restarting) is waited out; a refusal ends the command at once.
    applied = asyncio.run(
        patiently(
            partial(asyncio.to_thread, apply_migrations, settings.database_url),
            RetryPolicy.from_settings(settings), POSTGRES,
        )
    )
    for migration in applied:
        console.print(f"applied {migration.name}")
    console.print(f"{len(applied)} migration(s) applied; schema is up to date")
    return 0


def gateway(settings: Settings, args: argparse.Namespace) -> int:
    """Run the ingest gateway: verified Stripe webhooks appended to the Kafka log."""
    from ingest.workers import run_gateway

    run_gateway(settings, args.host, args.port)
    return 0


def worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run the Faust worker with every agent; metrics at /metrics on the web port."""
    from streams.worker import run_worker

    return run_worker(settings, args.web_port)


def show_settings(settings: Settings, args: argparse.Namespace) -> int:
    """Print every setting: environment variable, default and meaning."""
    for env, default, doc in Settings.documented():
        console.print(f"[bold]{env}[/bold]  (default: {default})\n    {doc}")
    return 0


def _services_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("up", "down", "status"))


def _gateway_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on")


def _worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--web-port", type=int, default=None,
        help="port serving /metrics (default: STRIPE_STREAMS_WORKER_PORT, 6066)",
    )


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None]]] = {
    "services": (services, _services_arguments),
    "migrate": (migrate, _no_arguments),
    "gateway": (gateway, _gateway_arguments),
    "worker": (worker, _worker_arguments),
    "settings": (show_settings, _no_arguments),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the parser: setting flags shared by every command, then one sub-parser per command."""
    common = argparse.ArgumentParser(add_help=False)
    for field in dataclasses.fields(Settings):
        if field.name == "webhook_secrets" or field.name == "stripe_api_key":
            continue  # Secrets stay out of flags so they never show in a process list.
        if field.metadata.get("per_family"):
            continue  # One variable per family (..._<FAMILY>): environment only.
        common.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=f"setting_{field.name}",
            metavar=field.metadata["env"],
            help=field.metadata["doc"],
            default=argparse.SUPPRESS,
        )
    parser = argparse.ArgumentParser(prog="stripe-streams", parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (function, add_arguments) in COMMANDS.items():
        command_parser = sub.add_parser(
            name, parents=[common], help=(function.__doc__ or "").strip().splitlines()[0]
        )
        add_arguments(command_parser)
        command_parser.set_defaults(run=function)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the flags given on the command line applied."""
    overrides: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        raw = getattr(args, f"setting_{field.name}", None)
        if raw is not None:
            try:
                overrides[field.name] = field.metadata["parse"](raw)
            except ValueError as exc:
                flag = "--" + field.name.replace("_", "-")
                raise StreamsError(f"{flag} {exc}") from None
    return Settings.from_env(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(settings_from(args), args)
    except StreamsError as exc:
        print(f"stripe-streams {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
