"""Verification of the ``Stripe-Signature`` header of a webhook delivery.

The header is ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` and is parsed by the rules of Stripe's
own library: items are split on ``,``, each item on ``=``, the first ``t`` is the timestamp, every
``v1`` is a candidate signature and any other scheme (``v0``) is ignored. A delivery is authentic
when some candidate equals HMAC-SHA256(secret, ``"<t>.<raw body>"``) for some secret of the
endpoint, compared in constant time; it is fresh when ``t`` is no older than the tolerance.
Stripe's library rejects only old timestamps, not ones ahead of our clock, and so does this module.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass

from streams.errors import StreamsError
from streams.settings import Secret

SCHEME = b"v1"
# Twenty digits hold any unix time a signature will ever carry; longer is not a timestamp.
_MAX_TIMESTAMP_DIGITS = 20


class SignatureRejected(StreamsError):
    """The delivery does not prove it was signed by Stripe with a secret of this endpoint."""

    outcome = "invalid_signature"


class StaleTimestamp(SignatureRejected):
    """The signature is authentic but older than the tolerance: a possible replay."""

    outcome = "stale_timestamp"


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    """The parts of a ``Stripe-Signature`` header that verification uses."""

    timestamp: int
    signatures: tuple[bytes, ...]


def parse_signature_header(header: bytes | None) -> SignatureHeader:
    """Parse a raw ``Stripe-Signature`` header; raise SignatureRejected when it is unusable."""
    if not header:
        raise SignatureRejected("missing Stripe-Signature header")
    # The HTTP parser keeps whitespace around a field value, which RFC 9110 says is not part of it.
    header = header.strip(b" \t")
    timestamp: bytes | None = None
    signatures: list[bytes] = []
    for item in header.split(b","):
        key, separator, rest = item.partition(b"=")
        if key not in (b"t", SCHEME):
            continue
        if not separator:
            raise SignatureRejected("malformed Stripe-Signature header")
        value = rest.partition(b"=")[0]
        if key == SCHEME:
            signatures.append(value)
        elif timestamp is None:
            timestamp = value
    if timestamp is None:
        raise SignatureRejected("Stripe-Signature header has no timestamp")
    if not (timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS):
        raise SignatureRejected("Stripe-Signature timestamp is not a unix time")
    if not signatures:
        raise SignatureRejected("Stripe-Signature header has no v1 signature")
    return SignatureHeader(int(timestamp), tuple(signatures))


class SigningSecrets:
    """The secrets one endpoint accepts (several while a secret is being rotated)."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Iterable[Secret]) -> None:
        # Keying the MAC once per secret leaves only a copy and an update per delivery.
        self._keys = tuple(
            hmac.new(secret.reveal().encode("utf-8"), digestmod=hashlib.sha256)
            for secret in secrets
        )
        if not self._keys:
            raise ValueError("an endpoint needs at least one signing secret")

    def __repr__(self) -> str:
        return f"SigningSecrets({len(self._keys)} secrets)"

    def verify(
        self, body: bytes, header: bytes | None, *, tolerance: int, now: float | None = None
    ) -> int:
        """Check that ``header`` signs ``body``; return its timestamp or raise SignatureRejected.

        Authenticity is checked before freshness, so only an authentic delivery is told that
        its timestamp is stale.
        """
        parsed = parse_signature_header(header)
        signed = b"%d." % parsed.timestamp
        if not any(self._matches(key, signed, body, parsed.signatures) for key in self._keys):
            raise SignatureRejected("no v1 signature matches this endpoint's secrets")
        current = time.time() if now is None else now
        if tolerance and parsed.timestamp < current - tolerance:
            raise StaleTimestamp(f"signature timestamp is older than {tolerance} s")
        return parsed.timestamp

    @staticmethod
    def _matches(key: hmac.HMAC, signed: bytes, body: bytes, candidates: tuple[bytes, ...]) -> bool:
        mac = key.copy()
        mac.update(signed)
        mac.update(body)
        expected = mac.hexdigest().encode("ascii")
        return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def signature_header(body: bytes, secret: Secret, timestamp: int | None = None) -> str:
    """Return the ``Stripe-Signature`` header Stripe would send for ``body`` (tests, benches)."""
    moment = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.reveal().encode("utf-8"), b"%d." % moment + body, hashlib.sha256)
    return f"t={moment},{SCHEME.decode()}={mac.hexdigest()}"
