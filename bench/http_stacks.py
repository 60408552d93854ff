"""Which HTTP server should carry the gateway? Same work, same load, one stack after another.

    .venv/bin/python bench/http_stacks.py [--duration 10] [--repeats 3] [--stacks ...]

Every stack runs in its own process with one worker and does a webhook's whole CPU work (read
the body, verify the signature, parse the event, build and encode the envelope) but appends to
an in-memory log, so the figures isolate the HTTP layer from Kafka. The load is bench/gateway.py's
client: 64 keep-alive connections posting signed 3-4 KB events. Stacks are measured in turn,
``--repeats`` times, and the medians reported. granian is measured when installed
(``pip install granian``).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from collections.abc import MutableMapping
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway import (
    FIXTURES,
    SECRET,
    Memory,
    closed_loop,
    free_port,
    http_requests,
    stripe_events,
)

from ingest.gateway import Gateway
from streams.settings import Settings

STACKS = ("uvicorn-httptools-uvloop", "uvicorn-h11-asyncio", "granian-asgi", "aiohttp")


class MemoryLog:
    """Appends nowhere: the HTTP layer is what is measured."""

    async def append(self, key: bytes, message: bytes) -> None:
        return None

    async def reachable(self) -> bool:
        return True


def application() -> Gateway:
    """The gateway application with an in-memory log (granian imports this by name)."""
    return Gateway(Settings.from_env({"STRIPE_WEBHOOK_SECRETS": SECRET.reveal()}), MemoryLog())


def serve(stack: str, port: int) -> None:
    if stack.startswith("uvicorn"):
        import uvicorn

        fast = stack == "uvicorn-httptools-uvloop"
        uvicorn.run(
            application(), host="127.0.0.1", port=port, log_level="warning", access_log=False,
            http="httptools" if fast else "h11", loop="uvloop" if fast else "asyncio",
        )
    elif stack == "granian-asgi":
        # Imported by name: granian is optional and not among the project's dependencies.
        granian = importlib.import_module("granian")
        constants = importlib.import_module("granian.constants")
        granian.Granian(
            "http_stacks:application", address="127.0.0.1", port=port,
            interface=constants.Interfaces.ASGI, workers=1, loop=constants.Loops.uvloop,
            factory=True, log_level="warning",
        ).serve()
    else:
        serve_aiohttp(port)


def serve_aiohttp(port: int) -> None:
    """The same ASGI application driven by aiohttp's server through a minimal adapter."""
    from aiohttp import web

    app = application()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response: MutableMapping[str, Any] = {}
        chunks: list[bytes] = []
        scope = {
            "type": "http", "method": request.method, "path": request.path,
            "headers": [(k.lower(), v) for k, v in request.raw_headers],
            "client": (request.remote, 0),
        }

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                response.update(message)
            else:
                chunks.append(message["body"])

        await app(scope, receive, send)
        return web.Response(
            status=response["status"], body=b"".join(chunks), content_type="application/json"
        )

    server = web.Application(client_max_size=2 * 1024 * 1024)
    server.router.add_post("/webhooks/stripe", handle)
    web.run_app(server, host="127.0.0.1", port=port, print=None, access_log=None,
                loop=uvloop.new_event_loop())


def measure(stacks: list[str], duration: float, repeats: int) -> None:
    requests = http_requests(stripe_events(2000, FIXTURES))
    rates: dict[str, list[float]] = {s: [] for s in stacks}
    p99: dict[str, list[float]] = {s: [] for s in stacks}
    rss: dict[str, float] = {}
    for _ in range(repeats):
        for stack in stacks:
            port = free_port()
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", stack, "--port", str(port)],
                stdout=subprocess.DEVNULL, cwd=Path(__file__).parent,
            )
            try:
                time.sleep(2.5)
                run = uvloop.run(closed_loop(port, requests, 64, 2.0))
                run = uvloop.run(closed_loop(port, requests, 64, duration))
                if run.failed:
                    print(f"{stack}: unexpected statuses {run.failed}")
                rates[stack].append(run.rate)
                p99[stack].append(run.percentile(0.99))
                rss[stack] = max(rss.get(stack, 0.0), Memory.of_tree(server.pid).rss)
            finally:
                server.terminate()
                server.wait(timeout=30)
    print(f"\n{'stack':<28}{'req/s (median)':>16}{'runs':>24}{'p99 ms':>9}{'RSS MiB':>9}")
    for stack in stacks:
        runs = " ".join(f"{r:.0f}" for r in rates[stack])
        print(f"{stack:<28}{statistics.median(rates[stack]):>16.0f}{runs:>24}"
              f"{statistics.median(p99[stack]):>9.2f}{rss[stack]:>9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    installed = [s for s in STACKS if s != "granian-asgi" or find_spec("granian") is not None]
    parser.add_argument("--stacks", nargs="+", default=installed, choices=STACKS)
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
    else:
        measure(args.stacks, args.duration, args.repeats)


if __name__ == "__main__":
    main()
