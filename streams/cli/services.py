"""``stripe-streams services up|down|status``: local Kafka and PostgreSQL for development.

``up`` also installs Prometheus (Debian's package) when missing: the tests prove the alert rules
and dashboards of ``deploy/`` against it.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from rich.console import Console

from streams.settings import KAFKA_NODE_COUNTS, Settings

if TYPE_CHECKING:
    from streams.devtools.services import LocalServices

console = Console(highlight=False, soft_wrap=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The action to take, and the size of the Kafka cluster."""
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument(
        "--brokers", type=int, choices=KAFKA_NODE_COUNTS,
        help="Kafka nodes to start (default: STRIPE_STREAMS_KAFKA_BROKERS); 'down' and "
        "'status' act on whichever cluster runs",
    )


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Start, stop or show the local Kafka cluster and PostgreSQL cluster."""
    from streams.devtools.services import LocalServices

    if args.brokers is not None:
        settings = dataclasses.replace(settings, kafka_brokers=args.brokers)
    local = LocalServices.from_settings(settings)
    {"up": _up, "down": _down, "status": _status}[args.action](local)
    return 0


def _up(local: LocalServices) -> None:
    from streams.devtools.services.prometheus import find_prometheus

    kafka = local.kafka
    nodes = f"{kafka.brokers} node{'' if kafka.brokers == 1 else 's'}"
    with console.status(
        f"starting Kafka {kafka.version} ({nodes}) and PostgreSQL, finding Prometheus"
    ):
        postgres_pid = local.postgres.up()
        kafka_pids = kafka.up()
        prometheus = find_prometheus()
    console.print(f"postgres  {local.postgres.address}  pid {postgres_pid}  up")
    for node, pid in zip(kafka.nodes, kafka_pids, strict=True):
        console.print(f"{node.name:<9} {node.address}  pid {pid}  up")
    console.print(f"prometheus {prometheus.version()}  {prometheus.promtool}  installed")


def _down(local: LocalServices) -> None:
    stopped = local.kafka.down()
    for node in stopped:
        console.print(f"{node.name:<9} stopped")
    if not stopped:
        console.print("kafka     was not running")
    console.print(f"postgres  {'stopped' if local.postgres.down() else 'was not running'}")


def _status(local: LocalServices) -> None:
    from streams.devtools.services.prometheus import installed_prometheus

    for node in (local.kafka.running() or local.kafka).nodes:
        console.print(f"{node.name:<9} {node.address}  {_state(node.pid())}  log {node.log_file}")
    postgres = local.postgres
    console.print(
        f"postgres  {postgres.address}  {_state(postgres.pid())}  log {postgres.log_file}"
    )
    tools = installed_prometheus()
    console.print(
        f"prometheus {tools.version()}  {tools.promtool}  installed" if tools
        else "prometheus not installed ('services up' installs it)"
    )


def _state(pid: int | None) -> str:
    return f"pid {pid}  running" if pid else "stopped"
