"""The committed Grafana dashboard: generated from code, on the metrics the processes expose."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ingest.metrics import GatewayMetrics
from projections.metrics import WorkerMetrics
from streams.devtools import dashboard

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
STAGES = ["Ingest", "Log", "Processing", "Dead letters", "Database / processes"]
# The series names Prometheus scrapes for each metric type of prometheus_client.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
    "summary": ("", "_sum", "_count"),
}
SCRAPED_BY_PROMETHEUS = {"up"}


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    return json.loads(dashboard.DASHBOARD_FILE.read_text())


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data, including those inside collapsed rows."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel["panels"]
        else:
            yield panel


def _expressions(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in _panels(board) for target in panel["targets"]]


def _metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression selects: identifiers that are not functions or labels."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", expr)
    return set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare))


def _exposed() -> dict[str, set[str]]:
    """The series names of each metric the worker's and the gateway's /metrics expose."""
    worker = WorkerMetrics()
    worker.track_consumer_lag(dict)
    gateway = GatewayMetrics(["default"])
    return {
        family.name: {family.name + suffix for suffix in SERIES_SUFFIXES[family.type]}
        for registry in (worker.registry, gateway.registry)
        for family in registry.collect()
    }


def _queried(board: dict[str, Any]) -> set[str]:
    return set().union(*map(_metric_names, _expressions(board)))


def test_committed_dashboard_is_what_the_code_generates() -> None:
    assert dashboard.DASHBOARD_FILE.read_text() == dashboard.render(), (
        "deploy/grafana/dashboards/stripe-streams.json is out of date: run `make dashboard`"
    )


def test_panels_query_only_metrics_the_processes_expose(committed: dict[str, Any]) -> None:
    queried = _queried(committed)
    unknown = queried - set().union(*_exposed().values()) - SCRAPED_BY_PROMETHEUS
    assert queried
    assert not unknown, f"panels query metrics no process exposes: {sorted(unknown)}"


def test_every_metric_of_the_project_has_a_panel(committed: dict[str, Any]) -> None:
    queried = _queried(committed)
    unshown = [
        name for name, series in _exposed().items()
        if name.startswith("stripe_streams_") and not series & queried
    ]
    assert not unshown, f"metrics without a panel: {sorted(unshown)}"


def test_one_row_per_stage_each_with_panels(committed: dict[str, Any]) -> None:
    shown: dict[str, int] = {}
    for panel in committed["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            shown[row] = len(panel["panels"])
        else:
            shown[row] += 1
    assert list(shown) == STAGES
    assert all(shown.values()), shown


def test_every_panel_says_what_it_shows_and_in_which_unit(committed: dict[str, Any]) -> None:
    panels = list(_panels(committed))
    assert panels
    for panel in panels:
        assert panel["title"], panel
        assert panel["description"].strip(), panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert panel["targets"], panel["title"]
    assert len({panel["id"] for panel in committed["panels"]}) == len(committed["panels"])


def test_rates_follow_the_scrape_interval(committed: dict[str, Any]) -> None:
    windows = {w for expr in _expressions(committed) for w in re.findall(r"\[([^\]]+)\]", expr)}
    assert windows == {"$__rate_interval"}


def test_instance_and_family_pickers_filter_the_panels(committed: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in committed["templating"]["list"]}
    for name in ("instance", "family"):
        picker = variables[name]
        assert picker["type"] == "query"
        assert picker["query"].startswith("label_values(")
        assert picker["multi"] and picker["includeAll"]
    for expr in _expressions(committed):
        # Open dead letters is one database count, the same whichever worker reports it.
        if expr != "max(stripe_streams_dead_letters_open)":
            assert 'instance=~"$instance"' in expr, expr
        if "family" in expr:
            assert 'family=~"$family"' in expr, expr


def test_datasource_defaults_to_the_provisioned_prometheus(committed: dict[str, Any]) -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (prometheus,) = [ds for ds in provisioned["datasources"] if ds["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090"

    variable = next(v for v in committed["templating"]["list"] if v["type"] == "datasource")
    assert variable["query"] == "prometheus"
    assert variable["current"]["value"] == prometheus["uid"]
    chosen = {"type": "prometheus", "uid": "${" + variable["name"] + "}"}
    for panel in _panels(committed):
        assert panel["datasource"] == chosen, panel["title"]
        assert all(target["datasource"] == chosen for target in panel["targets"])


def test_grafana_loads_the_dashboards_directory_compose_mounts() -> None:
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/stripe-streams.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    volumes = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]["volumes"]
    mounts = {}
    for volume in volumes:
        # Compose accepts both the short "source:target[:mode]" and the long mapping syntax.
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        mounts[source.rstrip("/")] = target.rstrip("/")
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
