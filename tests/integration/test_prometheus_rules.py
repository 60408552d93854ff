"""The alert rules and Prometheus configuration of deploy/, as Prometheus' promtool reads them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from streams.devtools.services.prometheus import find_prometheus
from streams.errors import ServiceError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "alerts.yml"
RULE_TESTS = DEPLOY / "alerts.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
JOBS = ("stripe-streams-gateway", "stripe-streams-worker", "stripe-streams-monitor")

_ALERT = re.compile(r"^\s*- alert: (\w+)\s*$", re.MULTILINE)


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return find_prometheus().promtool
    except ServiceError as exc:
        pytest.skip(f"Prometheus (promtool) is not installed: {exc}")


def check(promtool: Path, *args: str | Path) -> str:
    """Run ``promtool ARGS``; fail with its output unless it succeeds."""
    result = subprocess.run(
        [str(promtool), *map(str, args)], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def alert_names() -> list[str]:
    return _ALERT.findall(RULES.read_text())


def test_the_alert_rules_load(promtool: Path) -> None:
    assert f"SUCCESS: {len(alert_names())} rules found" in check(promtool, "check", "rules", RULES)


def test_every_alert_fires_on_a_bad_series_and_stays_silent_on_a_good_one(promtool: Path) -> None:
    assert "SUCCESS" in check(promtool, "test", "rules", RULE_TESTS)


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = re.findall(r"alertname: (\w+)\s*\n\s*exp_alerts:(\s*\[\])?", RULE_TESTS.read_text())
    firing = {name for name, silent in cases if not silent}
    quiet = {name for name, silent in cases if silent}

    assert alert_names()
    assert firing == set(alert_names())
    assert quiet == set(alert_names())


def test_every_alert_links_to_its_runbook_section() -> None:
    sections = set(re.findall(r"^## (\w+)$", RUNBOOKS.read_text(), re.MULTILINE))
    for rule in RULES.read_text().split("- alert: ")[1:]:
        name = rule.split()[0]
        assert f"runbook_url: docs/runbooks.md#{name.lower()}\n" in rule, name
        assert "summary:" in rule, name
        assert name in sections, f"docs/runbooks.md has no section {name}"


def test_the_rules_watch_the_jobs_prometheus_scrapes() -> None:
    watched = set(re.findall(r'job="([\w-]+)"', RULES.read_text()))
    scraped = set(
        re.findall(r"job_name:\s*[\"']?([\w-]+)", (DEPLOY / "prometheus.yml").read_text())
    )

    assert watched == set(JOBS)
    assert watched <= scraped


def test_the_deployed_configuration_is_valid(promtool: Path) -> None:
    # Its rule files are where the containers mount them, so only the syntax is checked here.
    check(promtool, "check", "config", "--syntax-only", DEPLOY / "prometheus.yml")


def test_a_configuration_scraping_every_job_loads_the_rules(
    promtool: Path, tmp_path: Path
) -> None:
    config = tmp_path / "prometheus.yml"
    # JSON is YAML, and needs no YAML library.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in zip(JOBS, (8080, 6066, 8081), strict=True)
        ],
    }))

    output = check(promtool, "check", "config", config)

    assert f"SUCCESS: {len(alert_names())} rules found" in output
