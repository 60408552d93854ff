"""The settings object: defaults of DESIGN.md, clear errors naming the variable, masked secrets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streams.errors import ConfigurationError
from streams.settings import Secret, Settings


def test_defaults_are_those_of_the_design() -> None:
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5432/stripe_streams"
    assert settings.webhook_tolerance == 300
    assert settings.topic_prefix == "stripe"
    assert settings.topic() == "stripe.events"
    assert settings.topic("dlq") == "stripe.events.dlq"
    assert settings.webhook_secrets == {}
    assert settings.stripe_api_key is None


def test_environment_values_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9093",
            "STRIPE_WEBHOOK_TOLERANCE": "60",
            "STRIPE_STREAMS_TOPIC_PREFIX": "acme",
            "STRIPE_STREAMS_STATE_DIR": "/tmp/state",
        }
    )
    assert settings.kafka_bootstrap_servers == "k1:9092,k2:9093"
    assert settings.webhook_tolerance == 60
    assert settings.topic("customers") == "acme.events.customers"
    assert settings.state_dir == Path("/tmp/state")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STRIPE_WEBHOOK_TOLERANCE", "soon"),
        ("STRIPE_WEBHOOK_TOLERANCE", "-5"),
        ("DATABASE_URL", "mysql://db/x"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost"),
        ("STRIPE_STREAMS_TOPIC_PREFIX", "bad prefix!"),
        ("STRIPE_STREAMS_KAFKA_VERSION", "latest"),
        ("STRIPE_WEBHOOK_SECRETS", " , "),
        ("STRIPE_WEBHOOK_SECRETS_NOT VALID", "whsec_x"),
    ],
)
def test_a_wrong_value_fails_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=variable.split()[0]):
        Settings.from_env({variable: value})


def test_endpoint_secrets_support_rotation_and_extra_endpoints() -> None:
    settings = Settings.from_env(
        {
            "STRIPE_WEBHOOK_SECRETS": "whsec_old, whsec_new",
            "STRIPE_WEBHOOK_SECRETS_CONNECT": "whsec_connect",
        }
    )
    assert settings.secrets_for("default") == (Secret("whsec_old"), Secret("whsec_new"))
    assert settings.secrets_for("connect") == (Secret("whsec_connect"),)
    assert settings.secrets_for("unknown") is None


def test_secrets_never_show_in_repr_or_str() -> None:
    settings = Settings.from_env(
        {"STRIPE_WEBHOOK_SECRETS": "whsec_supersecret", "STRIPE_API_KEY": "sk_test_hidden"}
    )
    shown = repr(settings) + str(settings) + f"{settings.secrets_for('default')}"
    assert "whsec_supersecret" not in shown
    assert "sk_test_hidden" not in shown
    assert settings.stripe_api_key is not None
    assert settings.stripe_api_key.reveal() == "sk_test_hidden"


def test_settings_are_frozen() -> None:
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.topic_prefix = "other"  # type: ignore[misc]


def test_every_setting_is_documented_with_its_variable() -> None:
    documented = {env: doc for env, _, doc in Settings.documented()}
    for variable in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "DATABASE_URL",
        "STRIPE_WEBHOOK_SECRETS",
        "STRIPE_WEBHOOK_TOLERANCE",
        "STRIPE_API_KEY",
        "STRIPE_API_BASE",
        "STRIPE_STREAMS_TOPIC_PREFIX",
    ):
        assert documented.get(variable), variable


def test_a_family_override_applies_to_that_family_only() -> None:
    settings = Settings.from_env(
        {
            "STRIPE_STREAMS_BATCH_SIZE": "200",
            "STRIPE_STREAMS_BATCH_SIZE_INVOICES": "50",
            "STRIPE_STREAMS_BATCH_TIMEOUT_MS_CUSTOMERS": "10",
        }
    )
    assert settings.batch_size_for("invoices") == 50
    assert settings.batch_size_for("customers") == 200
    assert settings.batch_timeout_for("customers") == 0.01
    assert settings.batch_timeout_for("invoices") == settings.batch_timeout_ms / 1000


def test_the_router_has_its_own_batch_window_shorter_than_the_families() -> None:
    """Every event waits for the router's window and then its family's: the router's is short."""
    defaults = Settings.from_env({})
    tuned = Settings.from_env(
        {"STRIPE_STREAMS_ROUTER_BATCH_TIMEOUT_MS": "5", "STRIPE_STREAMS_BATCH_TIMEOUT_MS": "80"}
    )
    assert defaults.router_batch_timeout_ms < defaults.batch_timeout_ms
    assert tuned.router_batch_timeout_ms == 5
    assert tuned.batch_timeout_for("customers") == 0.08


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("STRIPE_STREAMS_BATCH_SIZE_INVOICE", "50", "no family 'invoice'"),
        ("STRIPE_STREAMS_BATCH_SIZE_INVOICES", "many", "must be an integer"),
    ],
)
def test_a_wrong_family_override_fails_naming_the_variable(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"{variable}.*{reason}"):
        Settings.from_env({variable: value})
