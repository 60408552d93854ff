"""Secrets read from files (``<NAME>_FILE``), and the gateway swapping them on a reload."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import pytest

from ingest.gateway import Gateway
from ingest.signature import signature_header
from streams.errors import ConfigurationError
from streams.settings import Secret, Settings

OLD = Secret("whsec_unit_file_old")
NEW = Secret("whsec_unit_file_new")
CONNECT = Secret("whsec_unit_file_connect")


class MemoryLog:
    """Takes every event; the tests here watch only the answers."""

    async def append(self, key: bytes, message: bytes) -> None:
        pass

    async def reachable(self) -> bool:
        return True


def secret_file(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(text)
    return str(path)


def test_each_secret_can_come_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "STRIPE_WEBHOOK_SECRETS_FILE": secret_file(tmp_path, "default", "whsec_a\n"),
            "STRIPE_WEBHOOK_SECRETS_CONNECT_FILE": secret_file(tmp_path, "connect", " whsec_c\n"),
            "STRIPE_API_KEY_FILE": secret_file(tmp_path, "key", "sk_test_from_file\n"),
            "STRIPE_STREAMS_MONITOR_TOKEN_FILE": secret_file(tmp_path, "token", "token-1\r\n"),
        }
    )
    assert settings.secrets_for("default") == (Secret("whsec_a"),)
    assert settings.secrets_for("connect") == (Secret("whsec_c"),)
    assert settings.stripe_api_key == Secret("sk_test_from_file")
    assert settings.monitor_token == Secret("token-1")


def test_a_webhook_secret_file_may_list_secrets_by_commas_or_by_lines(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "secrets", "whsec_old\nwhsec_new, whsec_next\n\n")
    settings = Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": path})
    assert settings.secrets_for("default") == (
        Secret("whsec_old"), Secret("whsec_new"), Secret("whsec_next")
    )


@pytest.mark.parametrize(
    "variable",
    [
        "STRIPE_WEBHOOK_SECRETS",
        "STRIPE_WEBHOOK_SECRETS_CONNECT",
        "STRIPE_API_KEY",
        "STRIPE_STREAMS_MONITOR_TOKEN",
    ],
)
def test_setting_a_secret_and_its_file_is_an_error_naming_both(
    tmp_path: Path, variable: str
) -> None:
    path = secret_file(tmp_path, "secret", "from_the_file")
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: "from_the_variable", f"{variable}_FILE": path})
    message = str(raised.value)
    assert f"{variable} and {variable}_FILE are both set" in message
    assert "from_the_" not in message


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "cannot read {path}: No such file or directory"),
        ("", "{path} is empty"),
        (" \n\n", "{path} is empty"),
        (b"\xffwhsec_\xfe", "{path} is not UTF-8 text"),
    ],
)
@pytest.mark.parametrize("variable", ["STRIPE_WEBHOOK_SECRETS_FILE", "STRIPE_API_KEY_FILE"])
def test_an_unusable_file_is_a_one_line_error_naming_the_variable_and_the_path(
    tmp_path: Path, variable: str, content: str | bytes | None, why: str
) -> None:
    path = tmp_path / "secret"
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({variable: str(path)})
    assert str(raised.value) == f"{variable}: " + why.format(path=path)


def test_a_directory_or_no_path_at_all_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({"STRIPE_API_KEY_FILE": str(tmp_path)})
    assert str(raised.value) == f"STRIPE_API_KEY_FILE: cannot read {tmp_path}: Is a directory"
    with pytest.raises(ConfigurationError, match=r"^STRIPE_API_KEY_FILE is empty: it must name"):
        Settings.from_env({"STRIPE_API_KEY_FILE": " "})


def test_a_webhook_file_of_separators_only_names_the_file_variable(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "secrets", ",\n ,")
    with pytest.raises(
        ConfigurationError, match=r"^STRIPE_WEBHOOK_SECRETS_FILE must hold at least one"
    ):
        Settings.from_env({"STRIPE_WEBHOOK_SECRETS_FILE": path})


def test_the_file_variables_are_listed_with_the_settings() -> None:
    documented = {env for env, _, _ in Settings.documented()}
    assert {
        "STRIPE_WEBHOOK_SECRETS_FILE", "STRIPE_API_KEY_FILE", "STRIPE_STREAMS_MONITOR_TOKEN_FILE"
    } <= documented


@pytest.fixture
def secrets_path(tmp_path: Path) -> Path:
    path = tmp_path / "webhook_secrets"
    path.write_text(OLD.reveal() + "\n")
    return path


@pytest.fixture
def environ(secrets_path: Path) -> dict[str, str]:
    return {
        "STRIPE_WEBHOOK_SECRETS_FILE": str(secrets_path),
        "STRIPE_WEBHOOK_SECRETS_CONNECT": CONNECT.reveal(),
    }


@pytest.fixture
def gateway(environ: dict[str, str]) -> Gateway:
    return Gateway(Settings.from_env(environ), MemoryLog())


def deliver(gateway: Gateway, secret: Secret, path: str = "/webhooks/stripe") -> int:
    """Post a signed event to the gateway; return the status it answers."""
    body = json.dumps(
        {
            "id": "evt_1QdC7a2eZvKYlo2C", "object": "event", "type": "customer.created",
            "created": int(time.time()),
            "data": {"object": {"id": "cus_RqK4", "object": "customer"}},
        }
    ).encode()

    async def post() -> int:
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            response = await http.post(
                path, content=body, headers={"Stripe-Signature": signature_header(body, secret)}
            )
            return response.status_code

    return asyncio.run(post())


def test_a_reload_swaps_the_secrets_of_a_rotated_file(
    gateway: Gateway, environ: dict[str, str], secrets_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert deliver(gateway, OLD) == 200
    secrets_path.write_text(f"{NEW.reveal()}\n")
    with caplog.at_level(logging.INFO, logger="ingest.gateway"):
        gateway.reload_secrets(environ)

    assert deliver(gateway, NEW) == 200
    assert deliver(gateway, OLD) == 400
    assert deliver(gateway, CONNECT, "/webhooks/stripe/connect") == 200
    assert caplog.messages == ["reloaded the signing secrets: default has 1, connect has 1"]


@pytest.mark.parametrize("rotated", ["", "  \n", None])
def test_a_failed_reload_keeps_the_secrets_and_says_why_in_one_line(
    gateway: Gateway, environ: dict[str, str], secrets_path: Path,
    caplog: pytest.LogCaptureFixture, rotated: str | None,
) -> None:
    if rotated is None:
        secrets_path.unlink()
    else:
        secrets_path.write_text(rotated)
    with caplog.at_level(logging.INFO, logger="ingest.gateway"):
        gateway.reload_secrets(environ)

    assert deliver(gateway, OLD) == 200
    [line] = caplog.messages
    assert line.startswith("kept the current signing secrets: STRIPE_WEBHOOK_SECRETS_FILE: ")
    assert str(secrets_path) in line
    assert "\n" not in line


def test_a_reload_cannot_add_an_endpoint(
    gateway: Gateway, environ: dict[str, str],
    secrets_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    secrets_path.write_text(NEW.reveal())
    with caplog.at_level(logging.INFO, logger="ingest.gateway"):
        gateway.reload_secrets({**environ, "STRIPE_WEBHOOK_SECRETS_PLATFORM": "whsec_platform"})

    assert deliver(gateway, OLD) == 200
    assert deliver(gateway, Secret("whsec_platform"), "/webhooks/stripe/platform") == 404
    [line] = caplog.messages
    assert "adding or removing an endpoint needs a restart" in line
    assert "whsec_" not in line
