"""The Grafana dashboard of ``deploy/grafana/dashboards``, built from code: ``make dashboard``.

``python -m streams.devtools.dashboard`` prints the dashboard JSON; ``--write`` replaces the
committed file. One row per stage of the pipeline (ingest, log, processing, dead letters,
processes), every query on the metric names of DESIGN.md and filtered by the ``instance`` and
``family`` template variables where the metric carries them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import units
from grafana_foundation_sdk.models.dashboard import (
    Dashboard,
    DashboardCursorSync,
    DataSourceRef,
    DataTransformerConfig,
    Panel,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableModel,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

REPOSITORY = Path(__file__).resolve().parents[2]
DASHBOARD_FILE = REPOSITORY / "deploy" / "grafana" / "dashboards" / "stripe-streams.json"
DATASOURCE_UID = "prometheus"
"""Uid of the Prometheus datasource in deploy/grafana/provisioning/datasources."""

PROMETHEUS = DataSourceRef(type_val="prometheus", uid="${datasource}")
JOBS = 'job=~"stripe-streams-.*"'
INSTANCE = 'instance=~"$instance"'
FAMILY = 'family=~"$family"'
Panels = list[Builder[Panel]]


def _query(expr: str, legend: str, ref_id: str) -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(PROMETHEUS)


def _timeseries(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[tuple[str, str]],
    width: int = 8,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(PROMETHEUS)
        .height(8)
        .span(width)
    )
    for index, (expr, legend) in enumerate(queries):
        panel.with_target(_query(expr, legend, chr(ord("A") + index)))
    return panel


def _quantiles(
    histogram: str, matchers: str, quantiles: Sequence[float], by: str | None = None
) -> list[tuple[str, str]]:
    """One histogram_quantile query per quantile, optionally one series per value of ``by``."""
    group, legend = (f"le, {by}", f" {{{{{by}}}}}") if by else ("le", "")
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({histogram}_bucket{{{matchers}}}[$__rate_interval])))",
            f"p{round(q * 100)}{legend}",
        )
        for q in quantiles
    ]


def _webhooks(outcome: str) -> str:
    return (
        "sum by (endpoint) (rate(stripe_streams_webhooks_total"
        f'{{{INSTANCE}, outcome="{outcome}"}}[$__rate_interval]))'
    )


def ingest_row() -> Panels:
    """The gateway: what Stripe's deliveries became and how fast the log acknowledged them."""
    return [
        _timeseries(
            "Webhooks by outcome",
            "Deliveries per second for each endpoint and outcome: `accepted` is the traffic that "
            "reached the log; any other outcome is a delivery Stripe will see rejected.",
            units.RequestsPerSecond,
            [(
                "sum by (endpoint, outcome) "
                f"(rate(stripe_streams_webhooks_total{{{INSTANCE}}}[$__rate_interval]))",
                "{{endpoint}} {{outcome}}",
            )],
            width=12,
        ),
        _timeseries(
            "Ingest latency (request to Kafka ack)",
            "Median and p99 time from a webhook arriving to Kafka acknowledging its event, "
            "which is the time Stripe waits for our 200.",
            units.Seconds,
            _quantiles("stripe_streams_ingest_seconds", INSTANCE, (0.5, 0.99)),
            width=12,
        ),
        _timeseries(
            "503: log unavailable",
            "Deliveries per second answered 503 because Kafka did not acknowledge in time; "
            "Stripe retries them, but anything above zero means the log is down or slow.",
            units.RequestsPerSecond,
            [(_webhooks("unavailable"), "{{endpoint}}")],
            width=12,
        ),
        _timeseries(
            "Invalid signatures",
            "Deliveries per second whose signature matched no secret of the endpoint: a secret "
            "rotated in Stripe but not here, or someone posting forged events.",
            units.RequestsPerSecond,
            [(_webhooks("invalid_signature"), "{{endpoint}}")],
            width=12,
        ),
    ]


def log_row() -> Panels:
    """The Kafka log: how far the workers are behind it."""
    # max, not sum: during a rebalance two workers may briefly both report one partition.
    lag = f"stripe_streams_consumer_lag{{{INSTANCE}}}"
    return [
        _timeseries(
            "Consumer lag",
            "Messages per topic and partition that the workers have not processed yet; a "
            "partition that stays high is one its worker cannot keep up with.",
            units.Short,
            [(f"max by (topic, partition) ({lag})", "{{topic}} [{{partition}}]")],
            width=12,
        ),
        _timeseries(
            "Consumer lag growth",
            "Change of the lag per second: above zero the workers fall behind, below zero they "
            "catch up.",
            units.MessagesPerSecond,
            [(
                f"max by (topic, partition) (deriv({lag}[$__rate_interval]))",
                "{{topic}} [{{partition}}]",
            )],
            width=12,
        ),
    ]


def processing_row() -> Panels:
    """The family agents: throughput by outcome, latency to the tables and batch sizes."""
    matchers = f"{INSTANCE}, {FAMILY}"
    return [
        _timeseries(
            "Events processed by family and outcome",
            "Events per second the family agents finished: `processed` reached the mirror, "
            "`stale` was older than the row, `duplicate` was seen before, `dead_lettered` failed.",
            units.EventsPerSecond,
            [(
                "sum by (family, outcome) (rate(stripe_streams_events_processed_total"
                f"{{{matchers}}}[$__rate_interval]))",
                "{{family}} {{outcome}}",
            )],
        ),
        _timeseries(
            "Received to projected latency",
            "p50, p95 and p99 per family of the time from the gateway receiving an event to its "
            "row being committed: how stale the mirror tables are.",
            units.Seconds,
            _quantiles(
                "stripe_streams_event_lag_seconds", matchers, (0.5, 0.95, 0.99), by="family"
            ),
        ),
        _timeseries(
            "Batch size",
            "Mean and p95 events per transaction a family agent applied; batches near one "
            "under load mean the agents spend their time on commits.",
            units.Short,
            [
                (
                    f"sum by (family) (rate(stripe_streams_batch_size_sum{{{matchers}}}"
                    "[$__rate_interval])) / sum by (family) (rate(stripe_streams_batch_size_count"
                    f"{{{matchers}}}[$__rate_interval]))",
                    "mean {{family}}",
                ),
                *_quantiles("stripe_streams_batch_size", matchers, (0.95,), by="family"),
            ],
        ),
    ]


def dead_letters_row() -> Panels:
    """Events that failed for good, what waits for review, and paused families."""
    return [
        _timeseries(
            "Dead letters by family and type",
            "Events per minute sent to the dead-letter topic after their retries, by family and "
            "event type: a new type here usually means a handler bug.",
            # Dead letters are rare, so a count per minute reads better than fractions per second.
            units.EventsPerMinute,
            [(
                "60 * sum by (family, type) (rate(stripe_streams_dead_letters_total"
                f"{{{INSTANCE}, {FAMILY}}}[$__rate_interval]))",
                "{{family}} {{type}}",
            )],
        ),
        stat.Panel()
        .title("Open dead letters")
        .description(
            "Dead letters waiting for review in ops.dead_letters; list them with "
            "`stripe-streams dlq list`, then retry or resolve them."
        )
        .unit(units.Short)
        .datasource(PROMETHEUS)
        .height(8)
        .span(8)
        .thresholds(
            ThresholdsConfig()
            .mode(ThresholdsMode.ABSOLUTE)
            .steps([Threshold(value=None, color="green"), Threshold(value=1, color="orange")])
        )
        # One database count that every worker reports, so max and no instance filter.
        .with_target(_query("max(stripe_streams_dead_letters_open)", "open", "A")),
        statetimeline.Panel()
        .title("Paused families")
        .description(
            "Families the dead-letter circuit breaker paused because too many of their events "
            "failed at once; `stripe-streams dlq resume FAMILY` resumes one early."
        )
        .unit(units.NoUnit)
        .datasource(PROMETHEUS)
        .height(8)
        .span(8)
        .mappings([
            ValueMap(options={
                "0": ValueMappingResult(text="running", color="green", index=0),
                "1": ValueMappingResult(text="paused", color="red", index=1),
            })
        ])
        .with_target(_query(
            f"max by (family) (stripe_streams_family_paused{{{INSTANCE}, {FAMILY}}})",
            "{{family}}",
            "A",
        )),
    ]


def processes_row() -> Panels:
    """The gateway, worker and monitor processes: resources, liveness and versions."""
    matchers = f"{JOBS}, {INSTANCE}"
    return [
        _timeseries(
            "Resident memory",
            "Memory each process holds; steady growth under constant traffic is a leak.",
            units.BytesIEC,
            [(f"process_resident_memory_bytes{{{matchers}}}", "{{job}} {{instance}}")],
        ),
        _timeseries(
            "CPU",
            "CPU time each process uses per second; 100% is one core busy.",
            units.PercentUnit,
            [(
                f"rate(process_cpu_seconds_total{{{matchers}}}[$__rate_interval])",
                "{{job}} {{instance}}",
            )],
        ),
        _timeseries(
            "Processes up",
            "Processes of each job that answer Prometheus' scrapes; fewer than you run means one "
            "is down or unreachable.",
            units.Short,
            [(f"sum by (job) (up{{{matchers}}})", "{{job}}")],
        ),
        table.Panel()
        .title("Versions")
        .description(
            "The stripe-streams version each process runs, to see a rollout through or spot a "
            "process left on an old build."
        )
        .unit(units.NoUnit)
        .datasource(PROMETHEUS)
        .height(8)
        .span(24)
        .with_transformation(DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": {"Time": True, "Value": True}},
        ))
        .with_target(
            _query(
                f"max by (job, instance, version) (stripe_streams_build_info{{{INSTANCE}}})",
                "",
                "A",
            )
            .instant()
            .format(PromQueryFormat.TABLE)
        ),
    ]


ROWS = {
    "Ingest": ingest_row,
    "Log": log_row,
    "Processing": processing_row,
    "Dead letters": dead_letters_row,
    "Database / processes": processes_row,
}


def _variables() -> list[Builder[VariableModel]]:
    datasource = (
        DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(VariableOption(text="Prometheus", value=DATASOURCE_UID))
    )
    variables: list[Builder[VariableModel]] = [datasource]
    for name, query in (
        # `up` lists every scraped process, even one that is down, which is when you look for it.
        ("instance", f"label_values(up{{{JOBS}}}, instance)"),
        # Workers export family_paused for every family from their start, before any event.
        ("family", "label_values(stripe_streams_family_paused, family)"),
    ):
        variables.append(
            QueryVariable(name)
            .label(name.capitalize())
            .datasource(PROMETHEUS)
            .query(query)
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            # A regex matching everything, so processes or families that appear later are shown.
            .all_value(".*")
            .current(VariableOption(text=["All"], value=["$__all"]))
        )
    return variables


def build() -> Dashboard:
    """The whole dashboard, its panels numbered in reading order so links to them stay valid."""
    builder = (
        DashboardBuilder("stripe-streams")
        .uid("stripe-streams")
        .description("Stripe webhooks from the gateway through the Kafka log to PostgreSQL.")
        .tags(["stripe", "stripe-streams"])
        .refresh("10s")
        .time("now-1h", "now")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .annotation(
            # Grafana's own annotations and alerts, which it adds to every dashboard it saves.
            AnnotationQuery()
            .name("Annotations & Alerts")
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
            .enable(True)
            .hide(True)
            .icon_color("rgba(0, 211, 255, 1)")
            .type("dashboard")
            .built_in(1)
        )
        .variables(_variables())
    )
    for title, panels in ROWS.items():
        builder.with_row(Row(title))
        for panel in panels():
            builder.with_panel(panel)
    dashboard = builder.build()
    for panel_id, built in enumerate(dashboard.panels or [], start=1):
        built.id_val = panel_id
    return dashboard


def render() -> str:
    """The dashboard as JSON: keys sorted, 2-space indent, trailing newline."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.devtools.dashboard",
        description="Print the Grafana dashboard of stripe-streams as JSON.",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"write it to {DASHBOARD_FILE.relative_to(REPOSITORY)} instead",
    )
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DASHBOARD_FILE.write_text(text)
        print(f"wrote {DASHBOARD_FILE.relative_to(REPOSITORY)}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
