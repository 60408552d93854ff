"""``stripe-streams services up|down|status``: local Kafka and PostgreSQL for development.

``up`` also installs Prometheus (Debian's package) when missing: the tests prove the alert rules
and dashboards of ``deploy/`` against it.
"""

from __future__ import annotations

import argparse

from rich.console import Console

from streams.settings import Settings

console = Console(highlight=False, soft_wrap=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The action to take."""
    parser.add_argument("action", choices=("up", "down", "status"))


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Start, stop or show the local Kafka broker and PostgreSQL cluster."""
    from streams.devtools.services import LocalServices
    from streams.devtools.services.prometheus import find_prometheus, installed_prometheus

    local = LocalServices.from_settings(settings)
    if args.action == "up":
        with console.status(
            f"starting Kafka {settings.kafka_version} and PostgreSQL, finding Prometheus"
        ):
            postgres_pid = local.postgres.up()
            kafka_pid = local.kafka.up()
            prometheus = find_prometheus()
        console.print(f"postgres  {local.postgres.address}  pid {postgres_pid}  up")
        console.print(f"kafka     {local.kafka.address}  pid {kafka_pid}  up")
        console.print(f"prometheus {prometheus.version()}  {prometheus.promtool}  installed")
    elif args.action == "down":
        for name, stopped in (("kafka", local.kafka.down()), ("postgres", local.postgres.down())):
            console.print(f"{name:<9} {'stopped' if stopped else 'was not running'}")
    else:
        for name, service in (("kafka", local.kafka), ("postgres", local.postgres)):
            pid = service.pid()
            state = f"pid {pid}  running" if pid else "stopped"
            console.print(f"{name:<9} {service.address}  {state}  log {service.log_file}")
        tools = installed_prometheus()
        console.print(
            f"prometheus {tools.version()}  {tools.promtool}  installed" if tools
            else "prometheus not installed ('services up' installs it)"
        )
    return 0
