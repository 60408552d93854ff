"""Stripe-Signature verification: Stripe's parsing rules, rotation, tolerance, and nothing else."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from ingest.signature import (
    SignatureRejected,
    SigningSecrets,
    StaleTimestamp,
    parse_signature_header,
    signature_header,
)
from streams.settings import Secret

OLD = Secret("whsec_old_secret")
NEW = Secret("whsec_new_secret")
NOW = 1_750_000_000
BODY = b'{"id": "evt_1", "object": "event"}'


def v1(body: bytes, secret: Secret, timestamp: int = NOW) -> str:
    mac = hmac.new(secret.reveal().encode(), b"%d." % timestamp + body, hashlib.sha256)
    return mac.hexdigest()


def verify(header: str | bytes | None, *secrets: Secret, body: bytes = BODY) -> int:
    raw = header.encode() if isinstance(header, str) else header
    return SigningSecrets(secrets or (NEW,)).verify(body, raw, tolerance=300, now=NOW)


def test_a_signature_made_with_the_endpoint_secret_is_accepted() -> None:
    assert verify(signature_header(BODY, NEW, NOW)) == NOW


def test_during_rotation_both_the_old_and_the_new_secret_are_accepted() -> None:
    assert verify(signature_header(BODY, OLD, NOW), OLD, NEW) == NOW
    assert verify(signature_header(BODY, NEW, NOW), OLD, NEW) == NOW


def test_any_of_several_v1_signatures_may_match() -> None:
    header = f"t={NOW},v1={'0' * 64},v1={v1(BODY, NEW)},v1=deadbeef"
    assert verify(header) == NOW


def test_a_secret_of_another_endpoint_is_rejected() -> None:
    with pytest.raises(SignatureRejected, match="no v1 signature matches"):
        verify(signature_header(BODY, OLD, NOW), NEW)


def test_a_changed_body_is_rejected() -> None:
    with pytest.raises(SignatureRejected):
        verify(signature_header(BODY, NEW, NOW), body=BODY + b" ")


def test_v0_signatures_are_ignored_even_when_they_match() -> None:
    with pytest.raises(SignatureRejected, match="no v1 signature"):
        verify(f"t={NOW},v0={v1(BODY, NEW)}")


def test_an_old_timestamp_is_stale_and_says_so() -> None:
    old = NOW - 301
    with pytest.raises(StaleTimestamp, match="older than 300 s") as caught:
        verify(signature_header(BODY, NEW, old))
    assert caught.value.outcome == "stale_timestamp"


def test_a_timestamp_at_the_edge_of_the_tolerance_is_fresh() -> None:
    assert verify(signature_header(BODY, NEW, NOW - 300)) == NOW - 300


def test_an_old_timestamp_with_a_wrong_signature_is_invalid_not_stale() -> None:
    with pytest.raises(SignatureRejected) as caught:
        verify(signature_header(BODY, OLD, NOW - 3600), NEW)
    assert not isinstance(caught.value, StaleTimestamp)


def test_a_timestamp_ahead_of_our_clock_is_accepted_like_stripes_library_does() -> None:
    assert verify(signature_header(BODY, NEW, NOW + 3600)) == NOW + 3600


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing Stripe-Signature header"),
        ("", "missing Stripe-Signature header"),
        (f"v1={'a' * 64}", "has no timestamp"),
        ("t=12ab,v1=00", "not a unix time"),
        ("t=-5,v1=00", "not a unix time"),
        (f"t={'9' * 40},v1=00", "not a unix time"),
        (f"t={NOW}", "has no v1 signature"),
        (f"t={NOW},v1", "malformed"),
        (f"t,v1={'a' * 64}", "malformed"),
    ],
)
def test_unusable_headers_are_rejected_with_a_reason(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureRejected, match=reason):
        verify(header)


def test_the_first_timestamp_counts() -> None:
    header = f"t={NOW},t={NOW + 1},v1={v1(BODY, NEW, NOW)}"
    assert parse_signature_header(header.encode()).timestamp == NOW
    assert verify(header) == NOW


def test_the_secrets_never_show_in_a_repr() -> None:
    assert "whsec" not in repr(SigningSecrets((OLD, NEW)))


@given(st.binary(max_size=300))
def test_any_header_bytes_are_either_parsed_or_rejected_cleanly(raw: bytes) -> None:
    try:
        parsed = parse_signature_header(raw)
    except SignatureRejected:
        return
    assert parsed.signatures


_ITEM = st.one_of(
    st.just("t=TS"),
    st.just("v1=GOOD"),
    st.just("v0=GOOD"),
    st.just("v1=OTHER"),
    st.just("v1=GOOD=tail"),
    st.sampled_from(["t", "v1", "x", "", "t=", "v1=", "t=abc", "t=TS0", "t=OLD"]),
    st.text(alphabet="abcdefv01=", max_size=12),
)


@given(
    items=st.lists(_ITEM, max_size=6),
    body=st.text(max_size=60).map(str.encode),
    tolerance=st.sampled_from([0, 300]),
)
def test_decisions_agree_with_stripes_own_library(
    items: list[str], body: bytes, tolerance: int
) -> None:
    """Differential check against stripe's WebhookSignature on headers it parses the same way."""
    ts = int(time.time())
    substitutions = {
        "TS": str(ts),
        "OLD": str(ts - 1000),
        "GOOD": v1(body, NEW, ts),
        "OTHER": v1(body, OLD, ts),
    }
    header = ",".join(items)
    for placeholder, value in substitutions.items():
        header = header.replace(placeholder, value)
    try:
        stripe.WebhookSignature.verify_header(body, header, NEW.reveal(), tolerance)
        stripe_accepts = True
    except stripe.SignatureVerificationError:
        stripe_accepts = False
    try:
        SigningSecrets((NEW,)).verify(body, header.encode(), tolerance=tolerance)
        we_accept = True
    except SignatureRejected:
        we_accept = False
    assert we_accept == stripe_accepts, header
