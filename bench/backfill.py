"""``stripe-streams backfill`` and ``reconcile`` against the local Stripe double.

    .venv/bin/python bench/backfill.py [--events 30000] [--repeats 3] [--seed 7] [--cap 25]
                                       [--capped-rate 25] [--open-rate 1000]
                                       [--resources customers,invoices] [--pacing-rates 25,24,23]
                                       [--pacing-seconds 10] [--profile DIR]

Uses the Kafka broker of KAFKA_BOOTSTRAP_SERVERS and the PostgreSQL server of DATABASE_URL; every
backfill gets a fresh topic prefix and a fresh, migrated database (dropped afterwards).

Two Stripe doubles (``python -m streams.devtools.stripe_double``) run in processes of their own,
serving the same generated account: ``--events`` events within the Events API's 30 days (the
account spans 35 days, so ``--events`` x 35 / 30 are generated), customer lifecycles with
subscriptions, invoices, charges, payment intents and refunds. One answers 429 beyond ``--cap``
requests per second (Stripe's sandbox limit, 25), the other has no cap.

* capped: ``stripe-streams backfill --since <29 days ago>`` against the capped double, with the
  backfill's own cap (``STRIPE_STREAMS_STRIPE_RATE``) at ``--capped-rate``: events appended per
  second, against the ceiling of ``--cap`` pages of 100 events a second;
* open: the same backfill against the double without a cap, ``STRIPE_STREAMS_STRIPE_RATE`` at
  ``--open-rate``: the rate the backfill itself sustains;
* pacing: the jobs' Stripe client alone (``StripeApi``, in this process) requests pages of one
  event back to back from the capped double for ``--pacing-seconds`` at each of
  ``--pacing-rates``: the pages per second it gets and the 429s it meets, which tells whether
  its own cap keeps it under the double's once the job is not the bottleneck;
* pacing, capped and open alternate ``--repeats`` times. Each backfill is a process: its
  seconds from start to exit, and the job's own rate as its summary prints it (from the job's
  start, Kafka and PostgreSQL connected, to its end: the interpreter's start-up, about a second
  of imports, is left out); events appended, pages, requests and retries from the summary; the
  events the log's partitions hold afterwards; the CPU the backfill process (start-up
  included), the double and the broker spent per event appended; how busy the whole machine
  was;
* reconcile: on the database of the last open run, one ``stripe-streams worker`` applies the
  backfilled events and stops; then ``stripe-streams reconcile --resource R --since <the same
  29 days ago>`` for each of ``--resources`` against the open double, ``--repeats`` rounds:
  objects compared per second (the job's summary: ``found in Stripe`` over its seconds), and
  found / missing / drifted / repaired. ``--since`` keeps to the objects created within the
  backfilled window, whose every event the mirrors hold, so a clean account reports 0
  repaired. When a run reports missing or drifted rows, the double's objects are compared with
  the mirror rows field by field and the fields that differ are printed.

``--profile DIR`` adds, not counted: one open and one capped backfill run by this script in a
process of their own with a wall-clock timer around each step of the page loop (the request,
the thread hop, each PostgreSQL statement, the Kafka append), and one open backfill and one
reconcile of each resource under py-spy (``--py-spy``, or on PATH; else cProfile): where the
loop's wall time and the processes' CPU go. ``busy cores`` says how loaded the whole machine
was (2.00 = both cores of this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from pipeline import (
    LOG_DIR,
    busy_cores_since,
    busy_ticks,
    cpu_ticks,
    environment,
    free_port,
    fresh_database,
    logged,
    rss_mib,
    start,
    stop,
)
from psycopg import sql
from rich.console import Console
from rich.table import Table

from streams.devtools.stripe_double import DEFAULT_API_KEY
from streams.handlers.registry import load_handlers
from streams.jobs.reading import LogReader
from streams.jobs.stripe_api import StripeApi
from streams.log.topics import delete_topics, ensure_topics, worker_topics
from streams.settings import Secret, Settings

PARTITIONS = 6
PAGE = 100
"""Events a page of the Events API holds, as the backfill asks for them."""
ACCOUNT_DAYS = 35
"""The span of a generated account: a seventh of it lies beyond the Events API's 30 days."""
LISTED_DAYS = 30
BACKFILLED_DAYS = 29
console = Console(width=170)
SUMMARY_ROW = re.compile(r"^\s*[│|]\s*(?P<name>[^│|]+?)\s*[│|]\s*(?P<value>[^│|]*?)\s*[│|]\s*$")


@dataclass
class Double:
    """A Stripe double serving the generated account in a process of its own."""

    label: str
    process: subprocess.Popen[bytes]
    port: int
    log_name: str
    listed: int = 0
    """Events within the Events API's 30 days, as the double counted them at its start."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Run:
    """One job's process, measured from outside and by its summary and job row."""

    kind: str
    label: str
    seconds: float
    exit_code: int
    cpu_seconds: dict[str, float]
    busy_cores: float
    job: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, str] = field(default_factory=dict)
    in_log: int | None = None
    """Events the log's partitions hold after a backfill (its topic was fresh)."""

    @property
    def rate(self) -> float:
        """Items per second of the job's own run, as its summary prints it.

        The summary times the job from its start (the producer and database connected, the job
        row written) to its end; the figure has four or five significant digits where its
        ``seconds`` has one decimal.
        """
        return float(self.summary.get("events/s", "0").replace(",", "") or 0)

    @property
    def job_seconds(self) -> float:
        return self.count("processed") / self.rate if self.rate else 0.0

    def count(self, name: str) -> int:
        """A count of the job's summary (``found in Stripe``, ``pages``, ...), 0 if absent."""
        digits = self.summary.get(name, "").replace(",", "")
        return int(digits) if digits.isdigit() else 0

    @property
    def items(self) -> int:
        """Events appended by a backfill, objects compared by a reconcile."""
        if self.kind == "reconcile":
            return self.count("found in Stripe")
        return self.count("appended (holes filled)")

    @property
    def process_rate(self) -> float:
        """Items per second from the process's start to its exit."""
        return self.items / self.seconds if self.seconds else 0.0

    def cpu_us(self, role: str) -> float:
        return self.cpu_seconds.get(role, 0.0) * 1e6 / max(1, self.items)


def start_double(label: str, events: int, seed: int, cap: float | None) -> Double:
    port = free_port()
    arguments = ["--events", str(events), "--seed", str(seed), "--port", str(port)]
    if cap is not None:
        arguments += ["--rate-cap", f"{cap:g}"]
    log_name = f"double-{label}.log"
    process = start(arguments, dict(os.environ), log_name,
                    launcher=["-m", "streams.devtools.stripe_double"])
    return Double(label, process, port, log_name)


def wait_for_double(double: Double, timeout: float = 600) -> None:
    """Wait until the double has generated its account and serves it."""
    deadline = time.monotonic() + timeout
    path = LOG_DIR / double.log_name
    while time.monotonic() < deadline:
        if double.process.poll() is not None:
            raise SystemExit(f"the {double.label} double exited: {last_line(path)}")
        found = re.search(r"Stripe double at \S+: \d+ events \((\d+) within", path.read_text())
        if found:
            double.listed = int(found.group(1))
            return
        time.sleep(0.5)
    raise SystemExit(f"the {double.label} double was not ready within {timeout:.0f} s")


def job_environment(settings: Settings, double: Double, rate: float) -> dict[str, str]:
    return {
        **environment(settings),
        "STRIPE_API_BASE": double.url,
        "STRIPE_API_KEY": DEFAULT_API_KEY,
        "STRIPE_STREAMS_STRIPE_RATE": f"{rate:g}",
    }


def run_job(
    kind: str, label: str, arguments: Sequence[str], env: dict[str, str], database_url: str,
    double: Double, log_name: str, timeout: float = 1800,
    launcher: Sequence[str] = ("-m", "streams.cli"), wrapper: Sequence[str] = (),
) -> Run:
    """Run ``stripe-streams <arguments>`` to its exit; its seconds, CPU and summary.

    ``wrapper`` (a profiler's command line) starts the job's ``python <launcher>`` itself; the
    CPU counted is then the wrapper's and the job's together.
    """
    hertz = os.sysconf("SC_CLK_TCK")
    roles = {"double": [double.process.pid]}
    machine = busy_ticks()
    ticks = cpu_ticks(roles)
    began = time.perf_counter()
    if wrapper:
        with (LOG_DIR / log_name).open("wb") as output:
            process = subprocess.Popen([*wrapper, sys.executable, *launcher, *arguments],
                                       env=env, stdout=output, stderr=subprocess.STDOUT)
    else:
        process = start(arguments, env, log_name, launcher=launcher)
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - began > timeout:
            process.terminate()
            timeout = float("inf")
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    process.returncode = os.waitstatus_to_exitcode(status)
    after = cpu_ticks(roles)
    spent = {role: (after[role] - ticks[role]) / hertz for role in ("double", "broker")}
    if spent["broker"] < 0:
        # A broker process (a second broker on the same machine) ended during the run and took
        # its ticks with it: the broker's figure is unknown.
        spent["broker"] = math.nan
    run = Run(
        kind, label, seconds, process.returncode,
        {kind: usage.ru_utime + usage.ru_stime, **spent},
        busy_cores_since(machine),
        job=last_job(database_url, kind),
        summary=summary(LOG_DIR / log_name),
    )
    if run.exit_code != 0 or run.job.get("status") != "succeeded":
        raise SystemExit(f"{label} exited {run.exit_code}, job {run.job}: "
                         f"{last_line(LOG_DIR / log_name)}")
    return run


def summary(path: Path) -> dict[str, str]:
    """The rows of the job's summary table in its output."""
    rows = {}
    for line in path.read_text(errors="replace").splitlines():
        found = SUMMARY_ROW.match(line)
        if found:
            rows[found["name"]] = found["value"]
    return rows


def last_job(url: str, kind: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT id, status, processed, failed, "
            "extract(epoch FROM finished_at - started_at)::float "
            "FROM ops.batch_jobs WHERE kind = %s ORDER BY id DESC LIMIT 1", (kind,),
        ).fetchone()
    names = ("id", "status", "processed", "failed", "seconds")
    return dict(zip(names, row, strict=True)) if row else {}


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


async def log_size(settings: Settings) -> int:
    """The messages the log's partitions hold: the sum of their end offsets."""
    async with LogReader(settings.kafka_bootstrap_servers, settings.topic()) as reader:
        return sum((await reader.ends(await reader.partitions())).values())


@contextlib.contextmanager
def fresh_run(settings: Settings, prefix: str) -> Iterator[Settings]:
    """A fresh topic prefix and a fresh migrated database, for one run.

    The backfill creates its log topic as it starts; :func:`apply_backfilled` the worker's.
    """
    run = replace(settings, topic_prefix=prefix)
    try:
        with fresh_database(run) as url:
            yield replace(run, database_url=url)
    finally:
        asyncio.run(delete_topics(run.kafka_bootstrap_servers, prefix))


def measure_backfill(
    settings: Settings, double: Double, rate: float, since: str, label: str, log_name: str,
) -> Run:
    run = run_job("backfill", label, ["backfill", "--since", since],
                  job_environment(settings, double, rate), settings.database_url, double,
                  log_name)
    run.in_log = asyncio.run(log_size(settings))
    return run


def apply_backfilled(settings: Settings, events: int, timeout: float = 900) -> float:
    """Run one worker until ``ops.event_log`` holds ``events`` events; its seconds."""
    asyncio.run(ensure_topics(settings.kafka_bootstrap_servers,
                              worker_topics(settings.topic_prefix), PARTITIONS))
    began = time.perf_counter()
    worker = start(["worker", "--web-port", str(free_port())], environment(settings),
                   "worker-reconcile.log")
    try:
        deadline = time.monotonic() + timeout
        while (count := logged(settings.database_url)) < events:
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited after {count} of {events} events; see "
                                 f"{LOG_DIR / 'worker-reconcile.log'}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker applied {count} of {events} events in "
                                 f"{timeout:.0f} s")
            time.sleep(0.2)
    finally:
        stop(worker)
    return time.perf_counter() - began


@dataclass
class Pacing:
    """The client's pacing alone: pages of one event requested back to back at ``rate``."""

    rate: float
    seconds: float
    pages: int
    requests: int
    retries: dict[str, int]

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds else 0.0


async def measure_pacing(settings: Settings, double: Double, rate: float, seconds: float
                         ) -> Pacing:
    """Request pages of one event through the jobs' client, capped at ``rate``, for
    ``seconds``: whether its own cap keeps it under the double's when the job is not the
    bottleneck (a 429 makes it wait the ``Retry-After`` second).
    """
    api = StripeApi(replace(settings, stripe_api_key=Secret(DEFAULT_API_KEY),
                            stripe_api_base=double.url, stripe_rate=rate))
    pages = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        await api.page("/v1/events", {"limit": 1})
        pages += 1
    return Pacing(rate, time.perf_counter() - began, pages, api.requests, dict(api.retries))


def measure_reconcile(
    settings: Settings, double: Double, rate: float, resource: str, since: str, label: str,
    log_name: str,
) -> Run:
    return run_job("reconcile", label, ["reconcile", "--resource", resource, "--since", since],
                   job_environment(settings, double, rate), settings.database_url, double,
                   log_name)


def reconcile_rounds(
    settings: Settings, double: Double, rate: float, resources: Sequence[str], since: str,
    repeats: int, profile: Path | None, py_spy: str | None,
) -> tuple[list[Run], dict[str, tuple[int, Counter[str], list[str]]], str]:
    """``repeats`` rounds of a reconcile of each resource; where a run found missing or
    drifted rows, what differs; with ``profile``, one more of each under a profiler.
    """
    runs: list[Run] = []
    for round_ in range(1, repeats + 1):
        for resource in resources:
            print(f"reconcile {resource} {round_} ...", flush=True)
            run = measure_reconcile(settings, double, rate, resource, since,
                                    f"reconcile {resource} {round_}",
                                    f"reconcile-{resource}-{round_}.log")
            runs.append(run)
            print(f"  {run.items:,} objects in {run.job_seconds:.2f} s, "
                  f"{run.count('repaired (events appended)'):,} repaired", flush=True)
    diagnoses = {
        resource: differences(settings.database_url, double, resource, since)
        for resource in resources
        if any(run.count("missing from the mirror") or run.count("drifted")
               for run in runs if run.label.split()[1] == resource)
    }
    profiled = ""
    for resource in resources if profile else ():
        assert profile is not None
        print(f"reconcile {resource} under a profiler ...", flush=True)
        profiled += cpu_profile(
            "reconcile", ["reconcile", "--resource", resource, "--since", since], settings,
            double, rate, profile / f"reconcile-{resource}.profile", py_spy) + "\n"
    return runs, diagnoses, profiled


def mirror_counts(url: str) -> dict[str, int]:
    """Rows of each mirror table that holds any."""
    counted = {}
    with psycopg.connect(url) as conn:
        for table in sorted(load_handlers().tables):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier("stripe", table))).fetchone()
            if row and row[0]:
                counted[table] = int(row[0])
    return counted


# Where drift comes from: the double's objects against the mirror rows, field by field.

def differences(
    database_url: str, double: Double, table: str, since: str, examples: int = 3,
) -> tuple[int, Counter[str], list[str]]:
    """Compare every object the double lists since ``since`` with its row.

    Returns how many objects were compared, how often each top-level field differed (``<row
    missing>``, ``<deleted>`` for rows absent or marked deleted), and a few examples.
    """
    api_path = load_handlers().tables[table].api_path
    assert api_path is not None
    params: dict[str, Any] = {"limit": PAGE,
                              "created[gte]": int(datetime.fromisoformat(since).timestamp())}
    if table == "subscriptions":
        params["status"] = "all"
    compared, fields, shown = 0, Counter[str](), list[str]()
    with httpx.Client(base_url=double.url, timeout=30,
                      headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"}) as client, \
            psycopg.connect(database_url) as conn:
        after = None
        while True:
            page = client.get(api_path, params={**params, **({"starting_after": after}
                                                              if after else {})}).json()
            objects = page["data"]
            rows = {row_id: (data, deleted) for row_id, data, deleted in conn.execute(
                sql.SQL("SELECT id, data, deleted FROM {} WHERE id = ANY(%s)").format(
                    sql.Identifier("stripe", table)), ([o["id"] for o in objects],))}
            for obj in objects:
                compared += 1
                data, deleted = rows.get(obj["id"], (None, False))
                if data is None:
                    fields["<row missing>"] += 1
                    continue
                differing = sorted(
                    name for name in obj.keys() | data.keys() if obj.get(name) != data.get(name)
                )
                if deleted:
                    differing.insert(0, "<deleted>")
                fields.update(differing)
                if differing and len(shown) < examples:
                    shown.append(f"{obj['id']}: " + "; ".join(
                        f"{name}: Stripe {_short(obj.get(name))}, row {_short(data.get(name))}"
                        for name in differing[:4] if not name.startswith("<")
                    ))
            if not page["has_more"] or not objects:
                return compared, fields, shown
            after = objects[-1]["id"]


def _short(value: Any, width: int = 60) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 3] + "..."


# Profile.

TIMED = "TIMED "
"""The line a step-timed backfill prints last: its steps' wall seconds as JSON."""
STEPS = (
    ("page", "StripeApi.page: one page of events"),
    ("pace", "  waiting for the client's own rate cap"),
    ("raw_request", "  HTTP request and the library's parsing (in a thread)"),
    ("get", "  (StripeApi._get: the above, the thread hop and orjson.loads)"),
    ("append", "_append: the page into the log"),
    ("known_events", "  known_events (PostgreSQL)"),
    ("sending_backfilled", "  sending_backfilled (PostgreSQL)"),
    ("encode_event", "  encode_event"),
    ("append_all", "  EventLog.append_all (Kafka, until acknowledged)"),
    ("appended_backfilled", "  appended_backfilled (PostgreSQL)"),
    ("record_backfilled", "  record_backfilled (PostgreSQL)"),
    ("advance_counts", "  Job.advance: counts, and the job's row once a second"),
    ("advance_position", "Job.advance: the cursor, and the job's row once a second"),
)


def timed_job(arguments: Sequence[str]) -> int:
    """Run ``stripe-streams <arguments>`` (a backfill) in this process, timing each step of its
    page loop by wrapping the functions it calls; print the wall seconds of each step last.
    """
    import json

    import stripe

    from ingest.producer import EventLog
    from streams import cli
    from streams.jobs import backfill, running, stripe_api
    from streams.log import codec

    seconds: dict[str, float] = defaultdict(float)
    calls: Counter[str] = Counter()

    def timed(name: str, function: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            # The page loop's call of Job.advance stores the cursor; _append's counts.
            step = name if name != "advance" else (
                "advance_position" if "position" in kwargs else "advance_counts")
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return await function(*args, **kwargs)
            finally:
                seconds[step] += time.perf_counter() - began
                seconds[f"{step} cpu"] += time.process_time() - cpu
                calls[step] += 1
        return wrapper

    def timed_sync(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - began
                calls[name] += 1
        return wrapper

    stripe.StripeClient.raw_request = timed_sync(  # type: ignore[method-assign]
        "raw_request", stripe.StripeClient.raw_request)
    for name, owner in (("page", stripe_api.StripeApi), ("_pace", stripe_api.StripeApi),
                        ("_get", stripe_api.StripeApi), ("append_all", EventLog),
                        ("advance", running.Job)):
        setattr(owner, name, timed(name.lstrip("_"), getattr(owner, name)))
    # The job's steps as the module names them; a step the module does not have is left out.
    wrapped = {name: timed(name.lstrip("_"), getattr(backfill, name))
               for name in ("known_events", "sending_backfilled", "appended_backfilled",
                            "record_backfilled", "_append", "_run") if hasattr(backfill, name)}
    wrapped["encode_event"] = timed_sync("encode_event", codec.encode_event)
    for name, function in wrapped.items():
        setattr(backfill, name, function)
    code = cli.main(list(arguments))
    print(TIMED + json.dumps({"seconds": seconds, "calls": calls}), flush=True)
    return code


def timed_backfill(
    settings: Settings, double: Double, rate: float, since: str, label: str,
) -> tuple[Run, dict[str, dict[str, float]]]:
    """One backfill with its steps timed (see :func:`timed_job`)."""
    log_name = f"backfill-timed-{label}.log"
    run = run_job("backfill", f"timed {label}", ["--timed", "backfill", "--since", since],
                  job_environment(settings, double, rate), settings.database_url, double,
                  log_name, launcher=[__file__])
    line = next(line for line in reversed((LOG_DIR / log_name).read_text().splitlines())
                if line.startswith(TIMED))
    steps: dict[str, dict[str, float]] = orjson.loads(line.removeprefix(TIMED))
    return run, steps


def cpu_profile(
    kind: str, arguments: Sequence[str], settings: Settings, double: Double, rate: float,
    output: Path, py_spy: str | None,
) -> str:
    """One job under py-spy (every thread, CPU samples only) or else cProfile."""
    output.parent.mkdir(parents=True, exist_ok=True)
    env = job_environment(settings, double, rate)
    log_name = f"{output.name}.log"
    if py_spy:
        run = run_job(kind, "profiled", arguments, env, settings.database_url, double, log_name,
                      wrapper=[py_spy, "record", "--threads", "--rate", "250",
                               "--format", "raw", "--output", str(output), "--"])
        return (f"{' '.join(arguments[:3])} under py-spy: {run.seconds:.1f} s, "
                f"{run.items:,} items, job "
                f"{run.rate:,.0f}/s (sampling slows it), {run.cpu_seconds[kind]:.1f} s CPU of "
                f"py-spy and the job\n" + py_spy_report(output, LOOPS[kind]))
    run = run_job(kind, "profiled", arguments, env, settings.database_url, double, log_name,
                  launcher=["-m", "cProfile", "-o", str(output), "-m", "streams.cli"])
    text = io.StringIO()
    text.write(f"{' '.join(arguments[:3])} under cProfile: {run.seconds:.1f} s, "
               f"{run.items:,} items, job "
               f"{run.rate:,.0f}/s (profiling slows it); the main thread only\n")
    stats = pstats.Stats(str(output), stream=text)
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(40)
    return text.getvalue()


LOOPS = {"backfill": "_run (streams/jobs/backfill.py:",
         "reconcile": "_listing (streams/jobs/reconcile.py:"}
"""The frame of each job's page loop."""


def py_spy_report(path: Path, loop: str, top: int = 30) -> str:
    """Where the process's CPU went, by function, every thread together: the samples under the
    page loop (the main thread's), those of the other threads (the HTTP requests run in a
    thread pool) and the rest (start-up: imports, connections).
    """
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]
        if not count.isdigit() or not frames:
            continue
        n = int(count)
        if any(frame.startswith(loop) for frame in frames):
            parts["the page loop (main thread)"] += n
        elif frames[0].startswith("Thread._bootstrap"):
            parts["other threads"] += n
        else:
            parts["start-up and the rest of the main thread"] += n
        inclusive.update(dict.fromkeys(set(frames), n))
        leaves[frames[-1]] += n
    total = sum(parts.values())
    text = io.StringIO()
    text.write(f"{total} CPU samples ({total / 250:.1f} s at 250 a second): "
               + ", ".join(f"{name} {100 * n / total:.0f} %" for name, n in parts.items())
               + "\n  inclusive:\n")
    for frame, n in inclusive.most_common(top):
        text.write(f"  {100 * n / total:5.1f} %  {frame}\n")
    text.write("  leaf (self):\n")
    for frame, n in leaves.most_common(top // 2):
        text.write(f"  {100 * n / total:5.1f} %  {frame}\n")
    return text.getvalue()


# Report.

def median(runs: Sequence[Run], value: Any) -> float:
    """The median of ``value`` over the runs that know it (nan if none does)."""
    known = [value(run) for run in runs if not math.isnan(value(run))]
    return float(statistics.median(known)) if known else math.nan


def micro(value: float) -> str:
    return "?" if math.isnan(value) else f"{value:.0f}"


def report(
    command: str, machine: dict[str, str], runs: list[Run], reconciles: list[Run], cap: float,
    diagnoses: dict[str, tuple[int, Counter[str], list[str]]],
) -> None:
    console.print(f"\n[bold]{command}[/bold]")
    table = Table(title="account and machine", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in machine.items():
        table.add_row(name, value)
    console.print(table)
    ceiling = cap * PAGE
    if runs:
        table = Table(title="backfill runs, interleaved")
        for name in ("run", "events appended", "in the log", "pages / requests", "retries",
                     "process s", "job s", "events/s job (process)", "CPU us/event backfill /"
                     " double / broker", "busy cores"):
            table.add_column(name, justify="right")
        for run in runs:
            table.add_row(
                run.label, f"{run.items:,}", f"{run.in_log:,}" if run.in_log is not None else "",
                f"{run.count('pages'):,} / {run.count('requests to Stripe'):,}",
                run.summary.get("retries", ""), f"{run.seconds:.1f}", f"{run.job_seconds:.1f}",
                f"{run.rate:,.0f} ({run.process_rate:,.0f})",
                f"{run.cpu_us('backfill'):.0f} / {run.cpu_us('double'):.0f} / "
                f"{micro(run.cpu_us('broker'))}",
                f"{run.busy_cores:.2f}",
            )
        console.print(table)
    if reconciles:
        table = Table(title="reconcile runs, interleaved")
        for name in ("run", "found", "missing", "drifted", "repaired", "changing", "requests",
                     "process s", "job s", "objects/s job (process)",
                     "CPU us/object reconcile (start-up incl.) / double", "busy cores"):
            table.add_column(name, justify="right")
        for run in reconciles:
            table.add_row(
                run.label, *(f"{run.count(name):,}" for name in (
                    "found in Stripe", "missing from the mirror", "drifted",
                    "repaired (events appended)", "changing now (left alone)",
                    "requests to Stripe")),
                f"{run.seconds:.1f}", f"{run.job_seconds:.2f}",
                f"{run.rate:,.0f} ({run.process_rate:,.0f})",
                f"{run.cpu_us('reconcile'):.0f} / {run.cpu_us('double'):.0f}",
                f"{run.busy_cores:.2f}",
            )
        console.print(table)
    table = Table(title="medians")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    table.add_column("runs")
    table.add_column("target")
    capped = [run for run in runs if run.label.startswith("capped")]
    open_ = [run for run in runs if run.label.startswith("open")]
    for group in (capped, open_):
        if not group:
            continue
        rates = " / ".join(f"{run.rate:,.0f}" for run in group)
        rate = median(group, lambda run: run.rate)
        if group is capped:
            table.add_row(f"events appended/s, {cap:g} requests/s cap, job",
                          f"{rate:,.0f}", rates, f">= {0.9 * ceiling:,.0f}")
            table.add_row(f"  ratio to the ceiling of {ceiling:,.0f}/s",
                          f"{rate / ceiling:.2f}",
                          " / ".join(f"{run.rate / ceiling:.2f}" for run in group), ">= 0.9")
        else:
            table.add_row("events/s the backfill sustains, no cap, job", f"{rate:,.0f}", rates,
                          "")
        table.add_row("  same, process start to exit",
                      f"{median(group, lambda run: run.process_rate):,.0f}",
                      " / ".join(f"{run.process_rate:,.0f}" for run in group), "")
        table.add_row("  CPU us/event: backfill / double / broker",
                      f"{median(group, lambda run: run.cpu_us('backfill')):.0f} / "
                      f"{median(group, lambda run: run.cpu_us('double')):.0f} / "
                      f"{micro(median(group, lambda run: run.cpu_us('broker')))}", "", "")
        table.add_row("  busy cores", f"{median(group, lambda run: run.busy_cores):.2f}",
                      " / ".join(f"{run.busy_cores:.2f}" for run in group), "")
    for resource in dict.fromkeys(run.label.split()[1] for run in reconciles):
        group = [run for run in reconciles if run.label.split()[1] == resource]
        first = group[0]
        table.add_row(f"reconcile {resource}: objects compared/s, job",
                      f"{median(group, lambda run: run.rate):,.0f}",
                      " / ".join(f"{run.rate:,.0f}" for run in group), "")
        table.add_row("  found / missing / drifted / repaired",
                      " / ".join(f"{first.count(name):,}" for name in (
                          "found in Stripe", "missing from the mirror", "drifted",
                          "repaired (events appended)")), "", "0 repaired")
        table.add_row("  CPU us/object: reconcile (start-up included) / double",
                      f"{median(group, lambda run: run.cpu_us('reconcile')):.0f} / "
                      f"{median(group, lambda run: run.cpu_us('double')):.0f}", "", "")
        table.add_row("  busy cores", f"{median(group, lambda run: run.busy_cores):.2f}", "", "")
    console.print(table)
    for resource, (compared, fields, examples) in diagnoses.items():
        console.print(f"[bold]{resource}[/bold]: {compared:,} objects of the double against the "
                      "mirror rows; fields that differ: "
                      + (", ".join(f"{name} {n:,}" for name, n in fields.most_common(12))
                         or "none"))
        for example in examples:
            console.print(f"  {example}", highlight=False)


def report_pacing(pacings: list[Pacing], cap: float) -> None:
    table = Table(title=f"the client's pacing alone against the double's {cap:g} requests/s "
                        "cap: pages of one event, back to back")
    for name in ("STRIPE_STREAMS_STRIPE_RATE", "pages/s, median", "runs", "429s per run"):
        table.add_column(name, justify="right")
    for rate in dict.fromkeys(pacing.rate for pacing in pacings):
        group = [pacing for pacing in pacings if pacing.rate == rate]
        table.add_row(
            f"{rate:g}", f"{statistics.median(p.pages_per_second for p in group):.1f}",
            " / ".join(f"{p.pages_per_second:.1f}" for p in group),
            " / ".join(str(p.retries.get("429", 0)) for p in group),
        )
    console.print(table)


def report_steps(timings: list[tuple[Run, dict[str, dict[str, float]]]]) -> None:
    """Where the page loop's wall time goes, per page, in each timed run."""
    table = Table(title="backfill page loop, wall ms per page (steps timed in the process)")
    table.add_column("step")
    for run, _ in timings:
        table.add_column(f"{run.label}: {run.rate:,.0f} events/s, {run.busy_cores:.2f} busy "
                         "cores", justify="right")
    pages = [max(1, run.count("pages")) for run, _ in timings]
    loops = [steps["seconds"]["run"] for _, steps in timings]
    for step, name in STEPS:
        if not any(step in steps["calls"] for _, steps in timings):
            continue
        table.add_row(name, *(
            f"{1000 * steps['seconds'].get(step, 0.0) / n:.1f}"
            + (f" ({steps['calls'].get(step, 0):.0f} calls)" if step == "page" else "")
            for (_, steps), n in zip(timings, pages, strict=True)))
    loop_steps = ("page", "append", "advance_position")
    table.add_row("rest of the loop", *(
        f"{1000 * (loop - sum(steps['seconds'].get(s, 0.0) for s in loop_steps)) / n:.1f}"
        for (_, steps), loop, n in zip(timings, loops, pages, strict=True)))
    table.add_row("the job's loop (_run)",
                  *(f"{1000 * loop / n:.1f}" for loop, n in zip(loops, pages, strict=True)))
    table.add_row("CPU of the backfill process (every thread) during the loop", *(
        f"{1000 * steps['seconds']['run cpu'] / n:.1f}"
        for (_, steps), n in zip(timings, pages, strict=True)))
    table.add_row("  of it in StripeApi.page", *(
        f"{1000 * steps['seconds']['page cpu'] / n:.1f}"
        for (_, steps), n in zip(timings, pages, strict=True)))
    table.add_row("  of it in _append", *(
        f"{1000 * steps['seconds']['append cpu'] / n:.1f}"
        for (_, steps), n in zip(timings, pages, strict=True)))
    table.add_row("CPU of the whole process, start-up included", *(
        f"{1000 * run.cpu_seconds['backfill'] / n:.1f}"
        for (run, _), n in zip(timings, pages, strict=True)))
    console.print(table)


def listed(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def main() -> None:
    if sys.argv[1:2] == ["--timed"]:
        sys.exit(timed_job(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000,
                        help="events of the account within the Events API's 30 days")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated account")
    parser.add_argument("--repeats", type=int, default=3,
                        help="capped and open backfills each, alternating, and reconcile rounds")
    parser.add_argument("--cap", type=float, default=25.0,
                        help="requests/s beyond which the capped double answers 429")
    parser.add_argument("--capped-rate", type=float, default=25.0,
                        help="STRIPE_STREAMS_STRIPE_RATE of the backfills against the capped "
                             "double")
    parser.add_argument("--open-rate", type=float, default=1000.0,
                        help="STRIPE_STREAMS_STRIPE_RATE of the jobs against the open double")
    parser.add_argument("--resources", default="customers,invoices",
                        help="mirror tables to reconcile ('' skips reconcile)")
    parser.add_argument("--pacing-rates", default="25,24,23",
                        help="client caps (requests/s) whose pacing alone is measured against "
                             "the capped double, each repeat ('' skips it)")
    parser.add_argument("--pacing-seconds", type=float, default=10.0,
                        help="seconds of each pacing measurement")
    parser.add_argument("--profile", type=Path,
                        help="add timed and profiled runs (not counted); their files go into "
                             "this directory")
    parser.add_argument("--py-spy", default=shutil.which("py-spy"),
                        help="py-spy executable for --profile (default: on PATH; else cProfile)")
    args = parser.parse_args()
    resources = listed(args.resources)
    tables = load_handlers().tables
    if unknown := [r for r in resources if r not in tables or tables[r].api_path is None]:
        parser.error(f"--resources: not a listable mirror table: {', '.join(unknown)}")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    command = "bench/backfill.py " + " ".join(sys.argv[1:])
    base = Settings.from_env()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = replace(base, topic_prefix=prefix, topic_partitions=PARTITIONS)
    generated = round(args.events * ACCOUNT_DAYS / LISTED_DAYS)
    since = (datetime.now(UTC) - timedelta(days=BACKFILLED_DAYS)).isoformat(timespec="seconds")
    before = busy_ticks()
    time.sleep(3)
    machine = {
        "machine before the run": f"{busy_cores_since(before):.2f} busy cores over 3 s, load "
                                  f"average {' / '.join(f'{n:.1f}' for n in os.getloadavg())}",
    }
    print(f"starting two Stripe doubles of {generated:,} events (seed {args.seed}) ...",
          flush=True)
    began = time.perf_counter()
    doubles = {"capped": start_double("capped", generated, args.seed, args.cap),
               "open": start_double("open", generated, args.seed, None)}
    runs: list[Run] = []
    reconciles: list[Run] = []
    diagnoses: dict[str, tuple[int, Counter[str], list[str]]] = {}
    profiled = ""
    timings: list[tuple[Run, dict[str, dict[str, float]]]] = []
    pacings: list[Pacing] = []
    try:
        for double in doubles.values():
            wait_for_double(double)
        machine.update({
            "account": f"{generated:,} events over {ACCOUNT_DAYS} days, "
                       f"{doubles['open'].listed:,} within the Events API's {LISTED_DAYS}",
            "doubles ready in": f"{time.perf_counter() - began:.0f} s, RSS "
                                f"{rss_mib(doubles['open'].process.pid):.0f} MiB each",
            "backfilled": f"--since {since} ({BACKFILLED_DAYS} days ago)",
            "capped double": f"429 beyond {args.cap:g} requests/s; backfill "
                             f"STRIPE_STREAMS_STRIPE_RATE={args.capped_rate:g}",
            "open double": f"no cap; STRIPE_STREAMS_STRIPE_RATE={args.open_rate:g}",
        })
        for n in range(1, args.repeats + 1):
            for pace in [float(r) for r in listed(args.pacing_rates)]:
                print(f"pacing at {pace:g} requests/s {n} ...", flush=True)
                pacings.append(asyncio.run(measure_pacing(settings, doubles["capped"], pace,
                                                          args.pacing_seconds)))
                print(f"  {pacings[-1].pages_per_second:.1f} pages/s, "
                      f"{pacings[-1].retries.get('429', 0)} 429s", flush=True)
            for label, rate in (("capped", args.capped_rate), ("open", args.open_rate)):
                with fresh_run(settings, f"{prefix}{label[0]}{n}") as run_settings:
                    print(f"backfill {label} {n} ...", flush=True)
                    run = measure_backfill(run_settings, doubles[label], rate, since,
                                           f"{label} {n}", f"backfill-{label}-{n}.log")
                    runs.append(run)
                    print(f"  {run.items:,} events in {run.job_seconds:.1f} s: "
                          f"{run.rate:,.0f} events/s", flush=True)
                    if label == "open" and n == args.repeats and resources:
                        print(f"worker: applying the {run.items:,} backfilled events ...",
                              flush=True)
                        applied_in = apply_backfilled(run_settings, run.items)
                        rows = mirror_counts(run_settings.database_url)
                        tables_rows = ", ".join(f"{t} {c:,}" for t, c in rows.items())
                        machine["mirror rows after the last open backfill"] = (
                            f"{sum(rows.values()):,} ({tables_rows}), applied by one worker "
                            f"in {applied_in:.0f} s"
                        )
                        reconciles, diagnoses, profiled = reconcile_rounds(
                            run_settings, doubles["open"], args.open_rate, resources, since,
                            args.repeats, args.profile, args.py_spy)
        if args.profile:
            for label, rate in (("open", args.open_rate), ("capped", args.capped_rate)):
                with fresh_run(settings, f"{prefix}t{label[0]}") as run_settings:
                    print(f"backfill {label}, its steps timed ...", flush=True)
                    timings.append(timed_backfill(run_settings, doubles[label], rate, since,
                                                  label))
            with fresh_run(settings, f"{prefix}p") as run_settings:
                print("backfill under a profiler ...", flush=True)
                profiled += cpu_profile(
                    "backfill", ["backfill", "--since", since], run_settings, doubles["open"],
                    args.open_rate, args.profile / "backfill.profile", args.py_spy)
    finally:
        for double in doubles.values():
            stop(double.process)
        asyncio.run(delete_topics(settings.kafka_bootstrap_servers, prefix))
    if profiled:
        print(profiled)
    report(command, machine, runs, reconciles, args.cap, diagnoses)
    if pacings:
        report_pacing(pacings, args.cap)
    if timings:
        report_steps(timings)


if __name__ == "__main__":
    main()
