"""docker-compose.yml and the files it mounts keep the design's contract.

The services, commands, ports, volumes, health checks, start order and environment variables a
deployment relies on are read from the files themselves; a compose CLI, when one is installed,
also validates the file with the values of .env.example.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.cli import COMMANDS
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
IMAGE = "stripe-streams:local"

PROJECT_SERVICES = {"migrate", "gateway", "worker", "monitor"}
LONG_RUNNING = {
    "kafka", "postgres", "gateway", "worker", "monitor", "prometheus", "alertmanager", "grafana",
}
COMMANDS_RUN = {
    "migrate": ["migrate"],
    "gateway": ["gateway", "--host", "0.0.0.0", "--port", "8080"],
    "worker": ["worker", "--web-port", "6066"],
    "monitor": ["monitor", "--host", "0.0.0.0", "--port", "8081"],
}
# Service -> (published port, container port); every other service publishes nothing.
PUBLISHED = {
    "gateway": (8080, 8080),
    "monitor": (8081, 8081),
    "prometheus": (9090, 9090),
    "alertmanager": (9093, 9093),
    "grafana": (3000, 3000),
}
# Service -> what its health check must ask.
HEALTH_PROBES = {
    "gateway": "http://127.0.0.1:8080/readyz",
    "worker": "http://127.0.0.1:6066/healthz",
    "monitor": "http://127.0.0.1:8081/healthz",
    "kafka": "/opt/kafka/bin/",
    "postgres": "pg_isready",
    "prometheus": "http://127.0.0.1:9090/-/",
    "alertmanager": "http://127.0.0.1:9093/-/",
    "grafana": "http://127.0.0.1:3000/api/health",
}
# Service -> {dependency: condition}, exactly.
START_ORDER = {
    "migrate": {"postgres": "service_healthy"},
    "gateway": {"kafka": "service_healthy", "worker": "service_healthy"},
    "worker": {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    },
    "monitor": {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    },
    "prometheus": {"alertmanager": "service_healthy"},
    "grafana": {"prometheus": "service_healthy"},
}
# Named volume -> (service, mount point).
DATA_VOLUMES = {
    "kafka-data": ("kafka", "/var/lib/kafka/data"),
    "postgres-data": ("postgres", "/var/lib/postgresql/data"),
    "prometheus-data": ("prometheus", "/prometheus"),
    "alertmanager-data": ("alertmanager", "/alertmanager"),
    "grafana-data": ("grafana", "/var/lib/grafana"),
}
# Variables the third-party images read, as documented by each image.
IMAGE_VARIABLES = {
    "kafka": {
        "CLUSTER_ID", "KAFKA_NODE_ID", "KAFKA_PROCESS_ROLES", "KAFKA_LISTENERS",
        "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_LISTENER_NAMES",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_CONTROLLER_QUORUM_VOTERS",
        "KAFKA_LOG_DIRS", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS",
    },
    "postgres": {"POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_USER"},
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD", "GF_USERS_ALLOW_SIGN_UP"},
}
# Read by libraries under the project's commands: libpq (PGPASSWORD) and uvicorn.
LIBRARY_VARIABLES = {"PGPASSWORD", "FORWARDED_ALLOW_IPS"}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = _load(COMPOSE_FILE)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    loaded: dict[str, Any] = _load(ROOT / "deploy" / "prometheus.yml")
    return loaded


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {name: str(value) for name, value in environment.items()}


def _ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, published, container port) of each `[ip:]published:target` entry."""
    published = []
    for entry in service.get("ports", []):
        *host, outside, inside = str(entry).split(":")
        published.append((host[0] if host else "0.0.0.0", int(outside), int(inside)))
    return published


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount point -> source of each `source:target[:mode]` volume entry."""
    return {
        entry.split(":")[1]: entry.split(":")[0] for entry in service.get("volumes", [])
    }


def _setting_variables() -> set[str]:
    return {name for name, _, _ in Settings.documented()}


def _required_variables(text: str) -> set[str]:
    return {name for name, kind, _ in INTERPOLATION.findall(text) if kind == "?"}


def _example_values() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_the_whole_pipeline_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == LONG_RUNNING | {"migrate"}


def test_kafka_postgres_and_the_monitoring_stack_use_their_official_images(
    services: dict[str, dict[str, Any]],
) -> None:
    assert re.fullmatch(r"apache/kafka:3\.9\.\d+", services["kafka"]["image"])
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert re.fullmatch(r"postgres:\d+(\.\d+)?", services["postgres"]["image"])
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_the_project_image_is_built_once_and_shared(
    services: dict[str, dict[str, Any]],
) -> None:
    builders = [name for name, service in services.items() if "build" in service]

    assert builders == ["migrate"]
    for name in PROJECT_SERVICES:
        assert services[name]["image"] == IMAGE
    for name in PROJECT_SERVICES - {"migrate"}:
        # Compose must not try to pull a tag that only exists once built here.
        assert services[name]["pull_policy"] == "never"


def test_each_project_service_runs_its_command(services: dict[str, dict[str, Any]]) -> None:
    for name, command in COMMANDS_RUN.items():
        assert services[name]["command"] == command
        assert command[0] in COMMANDS, f"stripe-streams has no command {command[0]!r}"


def test_only_the_user_facing_ports_are_published_and_only_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        expected = [("127.0.0.1", *PUBLISHED[name])] if name in PUBLISHED else []
        assert _ports(service) == expected, name


def test_workers_can_be_scaled(
    services: dict[str, dict[str, Any]], prometheus: dict[str, Any]
) -> None:
    worker = services["worker"]

    # A fixed name or host port would make `--scale worker=3` fail on the second replica.
    assert "container_name" not in worker
    assert "ports" not in worker
    # One consumer group: no replica is given a group of its own.
    assert "STRIPE_STREAMS_CONSUMER_GROUP" not in _environment(worker)
    [job] = [
        job for job in prometheus["scrape_configs"]
        if job["job_name"] == "stripe-streams-worker"
    ]
    assert "static_configs" not in job
    assert job["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": 6066, "refresh_interval": "10s"}
    ]


def test_every_service_has_a_health_check_asking_the_right_thing(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name == "migrate":
            continue  # Runs once; its exit status is what the others wait for.
        test = service["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
        assert HEALTH_PROBES[name] in " ".join(test), name


def test_project_health_checks_need_only_python(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()

    # The slim Python image has no curl or wget, so the checks use the interpreter itself.
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.MULTILINE)
    for name in PROJECT_SERVICES - {"migrate"}:
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        assert "urllib.request.urlopen" in test[3], name


def test_services_start_in_order_and_wait_for_the_migration(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on without conditions"
        conditions = {dependency: spec["condition"] for dependency, spec in depends_on.items()}
        assert conditions == START_ORDER.get(name, {}), name
        for dependency, condition in conditions.items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], dependency


def test_long_running_services_come_back_and_the_migration_runs_once(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "no"


def test_state_lives_in_named_volumes(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert set(compose["volumes"]) == set(DATA_VOLUMES)
    for volume, (service, mount_point) in DATA_VOLUMES.items():
        assert _mounts(services[service])[mount_point] == volume
    kafka = services["kafka"]["environment"]
    assert kafka["KAFKA_LOG_DIRS"] == DATA_VOLUMES["kafka-data"][1]


def test_mounted_configuration_exists_where_each_tool_reads_it(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {
        "prometheus": {
            "/etc/prometheus/prometheus.yml": "./deploy/prometheus.yml",
            "/etc/prometheus/alerts.yml": "./deploy/alerts.yml",
        },
        "alertmanager": {"/etc/alertmanager/alertmanager.yml": "./deploy/alertmanager.yml"},
        "grafana": {
            "/etc/grafana/provisioning": "./deploy/grafana/provisioning",
            "/var/lib/grafana/dashboards": "./deploy/grafana/dashboards",
        },
    }
    for service, mounts in expected.items():
        for mount_point, source in mounts.items():
            assert _mounts(services[service])[mount_point] == source
            assert (ROOT / source).exists(), source


def test_environment_variables_are_real_settings_or_read_by_the_images(
    services: dict[str, dict[str, Any]],
) -> None:
    known = _setting_variables() | LIBRARY_VARIABLES
    for name in PROJECT_SERVICES:
        unknown = set(_environment(services[name])) - known
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"
    for name, variables in IMAGE_VARIABLES.items():
        assert set(_environment(services[name])) <= variables, name
    for name in ("prometheus", "alertmanager"):
        assert "environment" not in services[name]


def test_each_secret_goes_only_to_the_service_that_needs_it(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        environment = _environment(service)
        webhook_secrets = {v for v in environment if v.startswith("STRIPE_WEBHOOK_SECRETS")}
        assert bool(webhook_secrets) == (name == "gateway"), name
        assert ("STRIPE_STREAMS_MONITOR_TOKEN" in environment) == (name == "monitor"), name
        assert ("PGPASSWORD" in environment) == (name in {"migrate", "worker", "monitor"}), name
    gateway = _environment(services["gateway"])
    monitor = _environment(services["monitor"])
    assert _required_variables(gateway["STRIPE_WEBHOOK_SECRETS"]) == {"STRIPE_WEBHOOK_SECRETS"}
    assert _required_variables(monitor["STRIPE_STREAMS_MONITOR_TOKEN"]) == {
        "STRIPE_STREAMS_MONITOR_TOKEN"
    }
    assert "DATABASE_URL" not in gateway


def test_the_worker_and_monitor_reach_the_log_and_the_database(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("worker", "monitor"):
        environment = _environment(services[name])
        assert environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert environment["DATABASE_URL"] == "postgresql://postgres@postgres:5432/stripe_streams"
    assert _environment(services["gateway"])["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


def test_grafana_and_postgres_passwords_come_from_the_environment(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = _environment(services["grafana"])
    postgres = _environment(services["postgres"])

    assert _required_variables(grafana["GF_SECURITY_ADMIN_PASSWORD"]) == {
        "GF_SECURITY_ADMIN_PASSWORD"
    }
    assert _required_variables(postgres["POSTGRES_PASSWORD"]) == {"POSTGRES_PASSWORD"}
    assert _example_values()["GF_SECURITY_ADMIN_PASSWORD"] not in ("", "admin")


def test_env_example_names_every_variable_the_compose_file_reads() -> None:
    read = {name for name, _, _ in INTERPOLATION.findall(COMPOSE_FILE.read_text())}
    example = _example_values()

    assert set(example) == read
    for name in _required_variables(COMPOSE_FILE.read_text()):
        assert example[name], f"{name} is required but empty in .env.example"


def test_prometheus_scrapes_every_process_and_alerts_to_alertmanager(
    prometheus: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}

    assert set(jobs) == {
        "prometheus", "stripe-streams-gateway", "stripe-streams-worker", "stripe-streams-monitor",
    }
    assert jobs["stripe-streams-gateway"]["static_configs"] == [{"targets": ["gateway:8080"]}]
    assert jobs["stripe-streams-monitor"]["static_configs"] == [{"targets": ["monitor:8081"]}]
    # Relative to the configuration file, where compose mounts alerts.yml beside it.
    assert prometheus["rule_files"] == ["alerts.yml"]
    [alertmanagers] = prometheus["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["alertmanager:9093"]}]
    assert ("127.0.0.1", 9093, 9093) in _ports(services["alertmanager"])


def test_alertmanager_routes_to_a_declared_receiver() -> None:
    config = _load(ROOT / "deploy" / "alertmanager.yml")

    assert config["route"]["receiver"] in {receiver["name"] for receiver in config["receivers"]}


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    assert {".venv", ".services", ".git", ".env", "build", "*.egg-info"} <= ignored
    # Everything the Dockerfile copies stays in the context.
    copied = {"pyproject.toml", "README.md", "LICENSE", "streams", "ingest", "projections"}
    assert not copied & ignored


def _compose_cli() -> list[str] | None:
    """The compose CLI installed here: the docker plugin, else the standalone command."""
    if shutil.which("docker"):
        answer = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if answer.returncode == 0:
            return ["docker", "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def _compose_config(
    cli: list[str], env_file: Path, home: Path
) -> subprocess.CompletedProcess[str]:
    # A clean environment, so variables of whoever runs the tests do not stand in for the file's.
    environment = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(home)}
    return subprocess.run(
        [
            *cli, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
            "--env-file", str(env_file), "config",
        ],
        capture_output=True, text=True, check=False, env=environment, timeout=60,
    )


def test_the_compose_cli_accepts_the_file_with_the_example_values(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: neither the docker compose plugin nor docker-compose")

    result = _compose_config(cli, ENV_EXAMPLE, tmp_path)

    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    gateway = resolved["services"]["gateway"]["environment"]
    assert gateway["STRIPE_WEBHOOK_SECRETS"] == _example_values()["STRIPE_WEBHOOK_SECRETS"]


def test_the_compose_cli_refuses_a_missing_secret_with_a_clear_message(tmp_path: Path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI: neither the docker compose plugin nor docker-compose")
    without_secret = tmp_path / "env"
    without_secret.write_text(
        "\n".join(
            f"{name}={value}" for name, value in _example_values().items()
            if name != "STRIPE_WEBHOOK_SECRETS"
        )
    )

    result = _compose_config(cli, without_secret, tmp_path)

    assert result.returncode != 0
    assert "STRIPE_WEBHOOK_SECRETS" in result.stderr
    assert "whsec_" in result.stderr
