"""The one typed, frozen settings object of stripe-streams.

Every setting is declared once below with its environment variable, default and meaning, so the
documentation (``stripe-streams settings``) is generated from this declaration. Secrets are held in
:class:`Secret`, whose ``repr`` and ``str`` never reveal the value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import ConfigurationError
from streams.log.routing import FAMILIES
from streams.log.topics import topic_name

ENDPOINT_SECRETS_PREFIX = "STRIPE_WEBHOOK_SECRETS_"
# <VARIABLE>_FILE names a file holding a secret's value, as container platforms mount secrets.
SECRET_FILE_SUFFIX = "_FILE"
DEFAULT_ENDPOINT = "default"
_ENDPOINT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_NODE_COUNTS = (1, 3)
"""Sizes of the local Kafka cluster 'services up' starts; three nodes keep a controller quorum."""


class Secret:
    """A secret value that is masked wherever it could be printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret itself; call only where it is used, never to print it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be a positive integer, got {value}")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"must be positive, got {value}")
    return value


def _optional_secret(raw: str) -> Secret | None:
    return Secret(raw.strip()) if raw.strip() else None


def _optional_text(raw: str) -> str | None:
    return raw.strip() or None


def _database_url(raw: str) -> str:
    if not raw.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")
    return raw


def _bootstrap(raw: str) -> str:
    for server in raw.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"must be host:port[,host:port...], got {server.strip()!r}")
    return raw.strip()


def _topic_prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", raw):
        raise ValueError("may contain only letters, digits, '.', '_' and '-'")
    return raw


def _kafka_version(raw: str) -> str:
    if not re.fullmatch(r"\d+\.\d+\.\d+", raw):
        raise ValueError(f"must be a Kafka release such as 3.9.1, got {raw!r}")
    return raw


def _kafka_node_count(raw: str) -> int:
    value = _positive_int(raw)
    if value not in KAFKA_NODE_COUNTS:
        raise ValueError(f"must be 1 or 3, got {value}")
    return value


def _secret_list(raw: str) -> tuple[Secret, ...]:
    # A secret file may hold one secret per line instead of a comma-separated list.
    items = raw.replace("\n", ",").split(",")
    secrets = tuple(Secret(s.strip()) for s in items if s.strip())
    if not secrets:
        raise ValueError("must hold at least one signing secret")
    return secrets


def _non_negative_int(raw: str) -> int:
    return 0 if raw.strip() == "0" else _positive_int(raw)


def _share(raw: str) -> float:
    value = _positive_float(raw)
    if value > 1:
        raise ValueError(f"must be a share between 0 and 1, got {value}")
    return value


def _retention(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"must be milliseconds or -1 (forever), got {raw!r}") from None
    if value == 0 or value < -1:
        raise ValueError(f"must be positive milliseconds or -1 (forever), got {value}")
    return value


def _networks(raw: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
    try:
        networks = tuple(
            ipaddress.ip_network(item.strip(), strict=False)
            for item in raw.split(",")
            if item.strip()
        )
    except ValueError as exc:
        raise ValueError(f"must be comma-separated networks such as 3.18.12.63/32: {exc}") from None
    return networks or None


def _compression(raw: str) -> str | None:
    choice = raw.strip().lower()
    if choice not in ("none", "gzip", "snappy", "lz4", "zstd"):
        raise ValueError(f"must be none, gzip, snappy, lz4 or zstd, got {raw!r}")
    return None if choice == "none" else choice


def setting(
    env: str, default: Any, doc: str, parse: Callable[[str], Any] = _text, *, secret: bool = False
) -> Any:
    """Declare one setting: its environment variable, default, parser and meaning.

    A ``secret`` may instead be read from the file its ``<env>_FILE`` variable names.
    """
    return field(
        default=default, metadata={"env": env, "doc": doc, "parse": parse, "secret": secret}
    )


def family_setting(base_env: str, example: str, parse: Callable[[str], Any]) -> Any:
    """Declare per-family overrides ``<base_env>_<FAMILY>`` of the setting ``base_env``."""
    return field(
        default_factory=dict,
        metadata={
            "env": f"{base_env}_<FAMILY>",
            "per_family": True,
            "doc": f"{base_env} for one family ({', '.join(FAMILIES)}), {example}.",
            "parse": parse,
        },
    )


@dataclass(frozen=True)
class Settings:
    """Configuration of every stripe-streams command, read from the environment or flags."""

    kafka_bootstrap_servers: str = setting(
        "KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "Kafka brokers, host:port[,host:port...].",
        _bootstrap,
    )
    database_url: str = setting(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/stripe_streams",
        "PostgreSQL URL; libpq PG* variables fill whatever the URL leaves out.",
        _database_url,
    )
    webhook_secrets: Mapping[str, tuple[Secret, ...]] = field(
        default_factory=dict,
        metadata={
            "env": "STRIPE_WEBHOOK_SECRETS",
            "doc": "Comma-separated signing secrets of the default endpoint (several during "
            "rotation); STRIPE_WEBHOOK_SECRETS_<NAME> declares the endpoint "
            "/webhooks/stripe/<name> with its own secrets. STRIPE_WEBHOOK_SECRETS_<NAME>_FILE "
            "names a file holding them (commas or one per line); the gateway re-reads its "
            "secret files on SIGHUP.",
            "secret": True,
        },
    )
    webhook_tolerance: int = setting(
        "STRIPE_WEBHOOK_TOLERANCE", 300, "Max age of a signature timestamp, seconds.",
        _positive_int,
    )
    stripe_api_key: Secret | None = setting(
        "STRIPE_API_KEY", None, "Secret key for backfill from Stripe's Events API.",
        _optional_secret, secret=True,
    )
    monitor_token: Secret | None = setting(
        "STRIPE_STREAMS_MONITOR_TOKEN", None,
        "Bearer token of the monitoring API; 'monitor' refuses to start without one (unless "
        "--insecure-no-auth on a loopback address). Read once, at start.",
        _optional_secret, secret=True,
    )
    stripe_api_base: str | None = setting(
        "STRIPE_API_BASE", None, "Base URL of Stripe's API (a local double in tests).",
        _optional_text,
    )
    topic_prefix: str = setting(
        "STRIPE_STREAMS_TOPIC_PREFIX", "stripe", "Prefix of every Kafka topic.", _topic_prefix,
    )
    topic_partitions: int = setting(
        "STRIPE_STREAMS_PARTITIONS", 6, "Partitions of topics the project creates.",
        _positive_int,
    )
    kafka_version: str = setting(
        "STRIPE_STREAMS_KAFKA_VERSION", "3.9.1",
        "Apache Kafka release run by 'services up'.", _kafka_version,
    )
    kafka_brokers: int = setting(
        "STRIPE_STREAMS_KAFKA_BROKERS", 1,
        "Kafka nodes 'services up' starts: 1, or 3 (a controller quorum of three; internal "
        "topics with 3 replicas and min.insync.replicas=2).",
        _kafka_node_count,
    )
    replication_factor: int | None = setting(
        "STRIPE_STREAMS_REPLICATION_FACTOR", None,
        "Replicas of each topic the project creates; unset: as many as the cluster reports "
        "brokers, at most 3. Existing topics keep theirs (a warning names the fix).",
        _positive_int,
    )
    min_insync_replicas: int | None = setting(
        "STRIPE_STREAMS_MIN_INSYNC_REPLICAS", None,
        "min.insync.replicas of the project's topics: the replicas an acks=all write waits "
        "for. Unset: one fewer than a topic's replicas from 3 up, else 1 (on a single broker, "
        "the broker's default). Applied to the topics on every start.",
        _positive_int,
    )
    state_dir: Path = setting(
        "STRIPE_STREAMS_STATE_DIR", REPO_ROOT / ".services",
        "Where 'services up' keeps data, logs and pid files of the local Kafka and PostgreSQL.",
        lambda raw: Path(raw).expanduser().resolve(),
    )
    produce_timeout: float = setting(
        "STRIPE_STREAMS_PRODUCE_TIMEOUT", 5.0,
        "Seconds the gateway waits for Kafka's acknowledgement before answering 503.",
        _positive_float,
    )
    retry_after: int = setting(
        "STRIPE_STREAMS_RETRY_AFTER", 10,
        "Seconds the gateway asks the sender to wait (Retry-After) with a 503 or 429.",
        _positive_int,
    )
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None = setting(
        "STRIPE_STREAMS_ALLOWED_NETWORKS", None,
        "Comma-separated networks the gateway accepts webhooks from (Stripe publishes its "
        "webhook addresses); others get 403. Unset: any source.",
        _networks,
    )
    gateway_workers: int = setting(
        "STRIPE_STREAMS_GATEWAY_WORKERS", 1,
        "Processes the gateway serves with, each with its own Kafka producer; one per core.",
        _positive_int,
    )
    gateway_queue_bytes: int = setting(
        "STRIPE_STREAMS_GATEWAY_QUEUE_BYTES", 32 * 1024 * 1024,
        "Most bytes of deliveries each gateway process holds while they wait on Kafka; beyond "
        "it the gateway sheds load, answering 503 with Retry-After (Stripe retries), so an "
        "overload cannot grow its memory without bound.",
        _positive_int,
    )
    endpoint_concurrency: int = setting(
        "STRIPE_STREAMS_ENDPOINT_CONCURRENCY", 0,
        "Most webhook requests one endpoint handles at once in each gateway worker; beyond it "
        "the gateway answers 429 with Retry-After. 0: no bound.",
        _non_negative_int,
    )
    producer_linger_ms: int = setting(
        "STRIPE_STREAMS_PRODUCER_LINGER_MS", 1,
        "Milliseconds the gateway's producer waits to fill a batch before sending it.",
        _non_negative_int,
    )
    producer_batch_bytes: int = setting(
        "STRIPE_STREAMS_PRODUCER_BATCH_BYTES", 131072,
        "Largest batch of events the gateway's producer sends to one partition, bytes.",
        _positive_int,
    )
    producer_compression: str | None = setting(
        "STRIPE_STREAMS_PRODUCER_COMPRESSION", None,
        "Compression of the gateway's batches: none, gzip, snappy, lz4 or zstd.",
        _compression,
    )
    batch_size: int = setting(
        "STRIPE_STREAMS_BATCH_SIZE", 500,
        "Most events a family agent applies in one PostgreSQL transaction.", _positive_int,
    )
    family_batch_sizes: Mapping[str, int] = family_setting(
        "STRIPE_STREAMS_BATCH_SIZE", "e.g. ..._INVOICES", _positive_int
    )
    batch_bytes: int = setting(
        "STRIPE_STREAMS_BATCH_BYTES", 4 * 1024 * 1024,
        "Most bytes of messages one batch of the router or a family agent holds: large "
        "events make smaller batches, so a worker's memory does not grow with event size.",
        _positive_int,
    )
    buffer_bytes: int = setting(
        "STRIPE_STREAMS_BUFFER_BYTES", 32 * 1024 * 1024,
        "Most bytes of messages a worker holds between fetching them and settling them, "
        "across all its partitions (one larger message is always let through).",
        _positive_int,
    )
    batch_timeout_ms: int = setting(
        "STRIPE_STREAMS_BATCH_TIMEOUT_MS", 50,
        "Longest a family agent waits to fill a batch before applying it, milliseconds.",
        _positive_int,
    )
    family_batch_timeouts_ms: Mapping[str, int] = family_setting(
        "STRIPE_STREAMS_BATCH_TIMEOUT_MS", "e.g. ..._CUSTOMERS", _positive_int
    )
    router_batch_timeout_ms: int = setting(
        "STRIPE_STREAMS_ROUTER_BATCH_TIMEOUT_MS", 20,
        "Longest the router waits to fill a batch before forwarding it, milliseconds; every "
        "event waits for it on top of its family agent's window.",
        _positive_int,
    )
    max_attempts: int = setting(
        "STRIPE_STREAMS_MAX_ATTEMPTS", 3,
        "Tries of a failing event before it is dead-lettered (outages are not counted).",
        _positive_int,
    )
    retry_backoff: float = setting(
        "STRIPE_STREAMS_RETRY_BACKOFF", 0.5,
        "Seconds before the first retry of a failing event; doubles with every retry.",
        _positive_float,
    )
    retry_backoff_max: float = setting(
        "STRIPE_STREAMS_RETRY_BACKOFF_MAX", 30.0,
        "Longest wait between two retries, seconds (also while PostgreSQL is down).",
        _positive_float,
    )
    pause_share: float = setting(
        "STRIPE_STREAMS_PAUSE_SHARE", 0.5,
        "Share of a family's settled events within the pause window that, once dead-lettered, "
        "pauses the family instead of dead-lettering more: a bug is not a poison event.",
        _share,
    )
    pause_min_events: int = setting(
        "STRIPE_STREAMS_PAUSE_MIN_EVENTS", 20,
        "Fewest dead letters of a family within the pause window before it can pause.",
        _positive_int,
    )
    pause_window: float = setting(
        "STRIPE_STREAMS_PAUSE_WINDOW", 60.0,
        "Seconds over which a family's dead-letter share is measured.", _positive_float,
    )
    pause_backoff: float = setting(
        "STRIPE_STREAMS_PAUSE_BACKOFF", 300.0,
        "Seconds a paused family waits before it tries again on its own "
        "('stripe-streams dlq resume FAMILY' resumes it at once).",
        _positive_float,
    )
    log_retention_ms: int = setting(
        "STRIPE_STREAMS_LOG_RETENTION_MS", -1,
        "Retention of <prefix>.events, the source of truth, milliseconds; -1 keeps every "
        "event forever. Applied to the topic on every start.",
        _retention,
    )
    family_retention_ms: int = setting(
        "STRIPE_STREAMS_FAMILY_RETENTION_MS", 7 * 24 * 3600 * 1000,
        "Retention of the family topics, which are derived from the log, milliseconds; -1: "
        "forever.",
        _retention,
    )
    event_log_retention_months: int = setting(
        "STRIPE_STREAMS_EVENT_LOG_RETENTION_MONTHS", 0,
        "Whole months before the current one that ops.event_log and ops.event_trail keep; "
        "older monthly partitions are dropped. 0 keeps every month.",
        _non_negative_int,
    )
    stripe_rate: float = setting(
        "STRIPE_STREAMS_STRIPE_RATE", 20.0,
        "Most requests per second backfill and reconcile send to Stripe's API (its read limit "
        "is 100/s in live mode and 25/s in test mode).",
        _positive_float,
    )
    job_yield_backlog: int = setting(
        "STRIPE_STREAMS_JOB_YIELD_BACKLOG", 2000,
        "Replay and rebuild wait between batches while the workers have more events than "
        "this left in the family topics and are catching up, so live webhooks keep their "
        "latency; 0: never wait.",
        _non_negative_int,
    )
    job_batch_size: int = setting(
        "STRIPE_STREAMS_JOB_BATCH_SIZE", 5000,
        "Most events replay and rebuild apply in one PostgreSQL transaction.", _positive_int,
    )
    worker_web_port: int = setting(
        "STRIPE_STREAMS_WORKER_PORT", 6066,
        "Port of the worker's web server, which serves /metrics.", _positive_int,
    )
    consumer_group: str | None = setting(
        "STRIPE_STREAMS_CONSUMER_GROUP", None,
        "Kafka consumer group (and Faust app id) of the workers; unset: <prefix>-streams.",
        _optional_text,
    )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Build settings from the environment, then apply explicit overrides (command flags).

        A wrong value raises :class:`ConfigurationError` naming the variable. A secret may
        come from the file its ``<NAME>_FILE`` variable names, read now.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if f.name == "webhook_secrets":
                values[f.name] = endpoint_secrets(env)
            elif f.metadata.get("per_family"):
                values[f.name] = _per_family(env, name.removesuffix("<FAMILY>"), f.metadata)
            elif f.metadata.get("secret"):
                if name in env or name + SECRET_FILE_SUFFIX in env:
                    values[f.name] = f.metadata["parse"](_secret_value(env, name))
            elif name in env:
                try:
                    values[f.name] = f.metadata["parse"](env[name])
                except ValueError as exc:
                    raise ConfigurationError(f"{name} {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def topic(self, suffix: str = "") -> str:
        """Return the full name of a topic: ``<prefix>.events`` plus an optional suffix."""
        return topic_name(self.topic_prefix, suffix)

    def batch_size_for(self, family: str) -> int:
        """Return the most events one batch of a family holds."""
        return self.family_batch_sizes.get(family, self.batch_size)

    def batch_timeout_for(self, family: str) -> float:
        """Return how long a family agent waits to fill a batch, seconds."""
        return self.family_batch_timeouts_ms.get(family, self.batch_timeout_ms) / 1000

    @property
    def group_id(self) -> str:
        """Kafka consumer group of the workers: ``stripe-streams`` with the default prefix."""
        return self.consumer_group or f"{self.topic_prefix}-streams"

    def secrets_for(self, endpoint: str) -> tuple[Secret, ...] | None:
        """Return the signing secrets of an endpoint, or None when it is not declared."""
        return self.webhook_secrets.get(endpoint)

    @classmethod
    def documented(cls) -> Iterator[tuple[str, str, str]]:
        """Yield (environment variable, default, meaning) of every setting."""
        for f in dataclasses.fields(cls):
            default = "none" if f.default in (None, dataclasses.MISSING) else str(f.default)
            yield f.metadata["env"], default, f.metadata["doc"]
            if f.metadata.get("secret"):
                yield (
                    f.metadata["env"] + SECRET_FILE_SUFFIX, "none",
                    f"File holding {f.metadata['env']} in its place (container secrets); "
                    "surrounding whitespace is ignored and setting both is an error.",
                )


def _per_family(env: Mapping[str, str], prefix: str, declared: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, raw in env.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            family = name.removeprefix(prefix).lower()
            if family not in FAMILIES:
                raise ConfigurationError(
                    f"{name}: no family {family!r}; families are {', '.join(FAMILIES)}"
                )
            try:
                values[family] = declared["parse"](raw)
            except ValueError as exc:
                raise ConfigurationError(f"{name} {exc}") from None
    return values


def endpoint_secrets(env: Mapping[str, str]) -> dict[str, tuple[Secret, ...]]:
    """Return the signing secrets of every endpoint ``env`` declares, reading secret files now.

    The gateway calls it again on SIGHUP, so a rotated secret file needs no restart.
    """
    endpoints: dict[str, tuple[Secret, ...]] = {}
    for name in env:
        variable = name.removesuffix(SECRET_FILE_SUFFIX)
        if variable == "STRIPE_WEBHOOK_SECRETS":
            endpoint = DEFAULT_ENDPOINT
        elif variable.startswith(ENDPOINT_SECRETS_PREFIX):
            endpoint = variable.removeprefix(ENDPOINT_SECRETS_PREFIX).lower()
            if not _ENDPOINT_NAME.fullmatch(endpoint):
                raise ConfigurationError(
                    f"{name}: endpoint name must be lowercase letters, digits, '_' or '-'"
                )
        else:
            continue
        try:
            endpoints[endpoint] = _secret_list(_secret_value(env, variable))
        except ValueError as exc:
            raise ConfigurationError(f"{name} {exc}") from None
    return endpoints


def _secret_value(env: Mapping[str, str], variable: str) -> str:
    """Return the secret ``variable`` holds, or the text of the file ``<variable>_FILE`` names.

    One of the two is set; both is an error, since which one wins would be a guess.
    """
    file_variable = variable + SECRET_FILE_SUFFIX
    if file_variable not in env:
        return env[variable]
    if variable in env:
        raise ConfigurationError(f"{variable} and {file_variable} are both set: set only one")
    path = env[file_variable]
    if not path.strip():
        raise ConfigurationError(f"{file_variable} is empty: it must name a file")
    # Errors name the variable and the path, never what the file holds.
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{file_variable}: cannot read {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{file_variable}: {path} is not UTF-8 text") from None
    if not text.strip():
        raise ConfigurationError(f"{file_variable}: {path} is empty")
    return text.strip()
