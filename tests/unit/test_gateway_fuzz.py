"""Hostile webhook deliveries, generated and kept as a regression corpus.

The ASGI application is driven directly, as a server would drive it, with an in-memory log in
place of Kafka: fast enough for hundreds of generated deliveries. Every ``@example`` and every
named body is a case kept for good (repeated, empty, huge or non-ASCII signature headers,
thousands of ``v1`` candidates, deep nesting, numbers beyond any float, duplicate keys, lone
surrogates, NUL characters, bodies at and just over 1 MiB). Whatever arrives, the answer is a
2xx only for an authentic Stripe event, that event alone reaches the log, and the log's readers
see in it the same event the gateway answered for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
import tracemalloc
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ingest.gateway import MAX_BODY_BYTES, Gateway
from streams.settings import Secret, Settings
from tests.unit.test_gateway_webhooks import CONNECT, DEFAULT, ENV, ROTATED, MemoryLog

TOLERANCE = 300
FUZZ = settings(
    max_examples=200, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)


@dataclass(frozen=True)
class Answer:
    """What the gateway sent back for one request."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reads: int

    def error(self) -> str:
        document = json.loads(self.body)
        assert set(document) == {"error"}, document
        return str(document["error"])


def deliver(
    log: MemoryLog, body: bytes, signatures: list[bytes] | None = None, *,
    pieces: list[bytes] | None = None, method: str = "POST", path: str = "/webhooks/stripe",
    content_length: int | None = None,
) -> Answer:
    """Send one request to a fresh gateway writing to ``log``, as uvicorn would pass it on.

    ``signatures`` are the values of the request's ``Stripe-Signature`` header lines, in order.
    A body given as ``pieces`` arrives in several messages with no length declared, as a
    chunked body does; otherwise the request declares ``content_length`` (the body's length
    unless given).
    """
    headers = [(b"host", b"gateway"), (b"content-type", b"application/json")]
    headers += [(b"stripe-signature", value) for value in signatures or ()]
    if pieces is None:
        declared = len(body) if content_length is None else content_length
        headers.append((b"content-length", str(declared).encode()))
        pieces = [body]
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    return asyncio.run(_exchange(Gateway(Settings.from_env(ENV), log), scope, pieces))


async def _exchange(app: Gateway, scope: dict[str, Any], pieces: list[bytes]) -> Answer:
    inbox = [
        {"type": "http.request", "body": piece, "more_body": n + 1 < len(pieces)}
        for n, piece in enumerate(pieces)
    ]
    sent: list[MutableMapping[str, Any]] = []
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        # Past the body a server reports the client gone rather than inventing more of it.
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, *rest = sent
    assert start["type"] == "http.response.start"
    body = b"".join(message.get("body", b"") for message in rest)
    return Answer(int(start["status"]), list(start["headers"]), body, reads)


def event_body(**overrides: Any) -> bytes:
    event: dict[str, Any] = {
        "id": "evt_1QfZz2eZvKYlo2CfUzz",
        "object": "event",
        "api_version": "2026-10-28",
        "created": int(time.time()),
        "data": {"object": {"id": "cus_RqK4fuzz", "object": "customer", "name": "Jane"}},
        "livemode": False,
        "type": "customer.updated",
    }
    event.update(overrides)
    return json.dumps(event).encode()


def v1(body: bytes, moment: int, secret: Secret = DEFAULT) -> bytes:
    mac = hmac.new(secret.reveal().encode(), b"%d." % moment + body, hashlib.sha256)
    return mac.hexdigest().encode()


def signed(body: bytes, moment: int | None = None) -> list[bytes]:
    at = int(time.time()) if moment is None else moment
    return [b"t=%d,v1=%s" % (at, v1(body, at))]


def assert_nothing_written(log: MemoryLog, answer: Answer, status: int = 400) -> None:
    assert answer.status == status, answer.body
    assert log.appended == []
    assert len(answer.error()) < 200


def assert_logged_as_a_reader_sees_it(log: MemoryLog, answer: Answer, body: bytes) -> None:
    """The one appended envelope holds ``body`` and agrees with what the log's readers parse."""
    assert answer.status == 200, answer.body
    [envelope] = log.envelopes()
    assert envelope.payload.encode() == body
    assert json.loads(answer.body) == {"received": True, "id": envelope.id}
    # The worker reads payloads with orjson; other consumers and jsonb keep the last of
    # duplicate keys too; the envelope must say what all of them read.
    for parsed in (orjson.loads(envelope.payload), json.loads(envelope.payload)):
        assert (parsed["id"], parsed["type"], parsed["object"]) == (
            envelope.id, envelope.type, "event"
        )
        assert parsed["created"] == envelope.created
        assert envelope.key == _object_id(parsed).encode()


def _object_id(event: dict[str, Any]) -> str:
    object_id = event["data"]["object"].get("id")
    return object_id if isinstance(object_id, str) and object_id else str(event["id"])


# --- Stripe-Signature headers ------------------------------------------------------------------
#
# A header is generated as items with a meaning ("t=now", "v1=good@now", junk bytes, ...) turned
# into bytes for the delivery's body and clock, so the expected verdict follows from the
# documented rules without parsing the bytes again: items split on ",", each on "="; the first
# "t" is the timestamp and must be plain digits (at most 20); every "v1" is a candidate; a "t" or
# "v1" without "=" spoils the header; other schemes are ignored. The delivery is authentic when
# a candidate is the HMAC of "<t>.<body>" under a secret of the endpoint, then fresh unless
# older than the tolerance. Only the first Stripe-Signature line of a request counts.

_TIMESTAMPS = {
    "t=now": "now", "t=stale": "stale", "t=future": "future", "t=000now": "now",
    "t=now=tail": "now",
}
_BAD_TIMESTAMPS = (
    "t=", "t=abc", "t=-now", "t=+now", "t= now", "t=now ", "t=now.5", "t=1_0", "t=0x10",
    "t=٣٤٥", "t=" + "9" * 21, "t=-1",
)
_CANDIDATES = {
    "v1=good@now": "now", "v1=good@stale": "stale", "v1=good@future": "future",
    "v1=rotated@now": "now", "v1=good@now=tail": "now",
    "v1=connect@now": None, "v1=forged": None, "v1=": None, "v1=GOOD@now": None,
    "v1=good@now ": None, "v1=forged*5000": None,
}
# Keys that are not exactly "t" or "v1": ignored however much they look like one.
_IGNORED = ("v0=good@now", " v1=good@now", "V1=good@now", "v2=good@now", "t =now", "x=y", "")
_SPOILERS = ("t", "v1")
_TOKENS = (*_TIMESTAMPS, *_BAD_TIMESTAMPS, *_CANDIDATES, *_IGNORED, *_SPOILERS)


def _junk(raw: bytes) -> bool:
    """Bytes that make one item of another scheme: no comma, and not keyed "t" or "v1"."""
    return b"," not in raw and raw.partition(b"=")[0] not in (b"t", b"v1")


_ITEMS = st.sampled_from(_TOKENS) | st.binary(max_size=40).filter(_junk)
# Most lines look like Stripe's, a timestamp then candidates, so that all verdicts occur often.
_STRIPE_LIKE = st.builds(
    lambda timestamp, before, candidate, after: [timestamp, *before, candidate, *after],
    st.sampled_from(tuple(_TIMESTAMPS)) | st.sampled_from(_BAD_TIMESTAMPS),
    st.lists(_ITEMS, max_size=3),
    st.sampled_from([c for c, moment in _CANDIDATES.items() if moment])
    | st.sampled_from(tuple(_CANDIDATES)),
    st.lists(_ITEMS, max_size=3),
)
_LINES = _STRIPE_LIKE | st.lists(_ITEMS, max_size=7)
_HEADER_LINES = st.lists(_LINES, max_size=3)


def _moments(now: int) -> dict[str, int]:
    return {"now": now, "stale": now - TOLERANCE - 30, "future": 10**20 - 1}


_SIGNED_ITEM = re.compile(
    r"(?P<key>[^=]*)=(?P<kind>\w+)@(?P<moment>\w+)(?P<tail>=tail)?(?P<space> ?)"
)
_SECRETS = {"good": DEFAULT, "GOOD": DEFAULT, "rotated": ROTATED, "connect": CONNECT}


def _render(item: str | bytes, body: bytes, now: int) -> bytes:
    """The bytes of one header item for ``body`` signed (or not) at ``now``."""
    if isinstance(item, bytes):
        return item
    moments = _moments(now)
    if item == "v1=forged":
        return b"v1=%064x" % 0xDEAD
    if item.startswith("v1=forged*"):
        count = int(item.removeprefix("v1=forged*"))
        return b",".join(b"v1=%064x" % n for n in range(count))
    signed_item = _SIGNED_ITEM.fullmatch(item)
    if signed_item is None:
        for name, moment in moments.items():
            item = item.replace(name, str(moment))
        return item.encode()
    kind = signed_item["kind"]
    mac = v1(body, moments[signed_item["moment"]], _SECRETS[kind]).decode()
    mac = mac.upper() if kind.isupper() else mac
    return f"{signed_item['key']}={mac}{signed_item['tail'] or ''}{signed_item['space']}".encode()


def _header(items: list[str | bytes], body: bytes, now: int) -> bytes:
    line = b",".join(_render(item, body, now) for item in items)
    # Whitespace around a whole field value is not part of it (RFC 9110 5.5) and a server may
    # strip it before the gateway sees it; an ignored item keeps these lines clear of that.
    if line[:1] in (b" ", b"\t"):
        line = b"x=y," + line
    if line[-1:] in (b" ", b"\t"):
        line += b",x=y"
    return line


def _verdict(items: list[str | bytes]) -> str:
    """'accepted', 'stale' or 'invalid' for one Stripe-Signature line, by the documented rules."""
    timestamp: str | None = None
    candidates: list[str | None] = []
    for item in items:
        if isinstance(item, bytes) or item in _IGNORED:
            continue
        if item in _SPOILERS:
            return "invalid"
        if item in _CANDIDATES:
            candidates.append(_CANDIDATES[item])
        elif timestamp is None:
            timestamp = _TIMESTAMPS.get(item, "bad")
    if timestamp in (None, "bad") or not candidates:
        return "invalid"
    if timestamp not in candidates:
        return "invalid"
    return "stale" if timestamp == "stale" else "accepted"


@FUZZ
@given(lines=_HEADER_LINES)
@example(lines=[]).via("no Stripe-Signature header")
@example(lines=[[]]).via("an empty header")
@example(lines=[["t=now", "v1=good@now"]]).via("what Stripe sends")
@example(lines=[["t=now", "v1=rotated@now"]]).via("the secret being rotated in")
@example(lines=[["t=now", "v1=connect@now"]]).via("another endpoint's secret")
@example(lines=[["t=now", "v0=good@now"]]).via("v0 only, even matching")
@example(lines=[["v1=good@now"]]).via("missing t")
@example(lines=[["t=abc", "v1=good@now"]]).via("t not numeric")
@example(lines=[["t=-now", "v1=good@now"]]).via("t negative")
@example(lines=[["t=" + "9" * 21, "v1=good@now"]]).via("t of 21 digits")
@example(lines=[["t=future", "v1=good@future"]]).via("t of 20 digits, far ahead of our clock")
@example(lines=[["t=٣٤٥", "v1=good@now"]]).via("t in non-ASCII digits")
@example(lines=[["t=000now", "v1=good@now"]]).via("t zero-padded")
@example(lines=[["t=stale", "v1=good@stale"]]).via("stale but authentic")
@example(lines=[["t= now", "v1=good@now"]]).via("a space inside t")
@example(lines=[["t=now", " v1=good@now"]]).via("a space before v1")
@example(lines=[["t=now", "v1=good@now "]]).via("a space after the signature")
@example(lines=[["t=now", "v1=GOOD@now"]]).via("the signature in upper case")
@example(lines=[["t=now", "v1=good@now=tail"]]).via("a second '=' in an item")
@example(lines=[["t=now", "v1", "v1=good@now"]]).via("a bare v1 spoils the header")
@example(lines=[["t=stale", "t=now", "v1=good@now"]]).via("duplicated t: the first counts")
@example(lines=[["t=now", "t=stale", "v1=good@now"]]).via("duplicated t, fresh first")
@example(lines=[["t=now", "v1=forged", "v1=good@now", "v1=forged"]]).via("duplicated v1")
@example(lines=[["t=now", "v1=forged*5000", "v1=good@now"]]).via("thousands of v1")
@example(lines=[["t=now", "v1=forged*5000"]]).via("thousands of forged v1")
@example(lines=[[b"\xff\xfe\xc3(=\x80", "t=now", "v1=good@now"]]).via("invalid UTF-8 item")
@example(lines=[["t=now", "v1=good@now", b"x" * 100_000]]).via("100 KB header, authentic")
@example(lines=[[b"x" * 100_000]]).via("100 KB header of junk")
@example(lines=[["t=now", "v1=good@now"], ["t=now", "v1=forged"]]).via("repeated: first good")
@example(lines=[["t=now", "v1=forged"], ["t=now", "v1=good@now"]]).via("repeated: first forged")
@example(lines=[[], ["t=now", "v1=good@now"]]).via("repeated: first empty")
def test_a_delivery_is_accepted_only_when_its_first_signature_line_is_authentic_and_fresh(
    lines: list[list[str | bytes]],
) -> None:
    log = MemoryLog()
    body = event_body()
    now = int(time.time())
    answer = deliver(log, body, [_header(items, body, now) for items in lines])

    verdict = _verdict(lines[0]) if lines else "invalid"
    event(verdict)
    if verdict == "accepted":
        assert_logged_as_a_reader_sees_it(log, answer, body)
    else:
        assert_nothing_written(log, answer)
        stale = "older than" in answer.error()
        assert stale == (verdict == "stale"), answer.error()
        assert DEFAULT.reveal() not in answer.body.decode()


@pytest.mark.parametrize("count", [20_000])
@pytest.mark.parametrize("authentic", [False, True])
def test_thousands_of_v1_candidates_cost_bounded_time(count: int, authentic: bool) -> None:
    """Each candidate costs one constant-time compare against one HMAC per secret, no more."""
    log = MemoryLog()
    body = event_body()
    now = int(time.time())
    forged = b",".join(b"v1=%064x" % n for n in range(count))
    good = b",v1=" + v1(body, now) if authentic else b""
    header = b"t=%d," % now + forged + good
    assert len(header) > 1_000_000

    # CPU time, not wall time: what the delivery costs, whatever else runs on the machine.
    started = time.process_time()
    answer = deliver(log, body, [header])
    elapsed = time.process_time() - started

    assert answer.status == (200 if authentic else 400)
    assert len(log.appended) == int(authentic)
    assert elapsed < 1.0, f"{count} candidates took {elapsed:.2f} s"


# --- bodies ------------------------------------------------------------------------------------


# Signed, so they reach the parser: each is refused 400 and costs little.
_NOT_STORABLE = {
    "empty": b"",
    "whitespace": b"  \r\n",
    "JSON null": b"null",
    "JSON array": b"[]",
    "JSON string": b'"evt_1"',
    "JSON number": b"1",
    "JSON true": b"true",
    "100,000 levels of [": b"[" * 100_000,
    "100,000 levels of [ closed": b"[" * 100_000 + b"]" * 100_000,
    "100,000 levels of objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep inside an event": event_body().replace(b'"Jane"', b"[" * 50_000 + b"]" * 50_000),
    "1e400": event_body().replace(b'"Jane"', b"1e400"),
    "-1e400": event_body().replace(b'"Jane"', b"-1e400"),
    "a number of 5,000 digits": event_body().replace(b'"Jane"', b"1" * 5_000),
    "created as 1e400": event_body().replace(b'"created": ', b'"created": 1e400, "x": '),
    "created beyond 64 bits": event_body(created=2**64),
    "created as a float": event_body(created=1.75e9),
    "NaN": event_body().replace(b'"Jane"', b"NaN"),
    "invalid UTF-8": event_body().replace(b"Jane", b"J\xffne"),
    "UTF-8 encoded surrogate": event_body().replace(b"Jane", b"J\xed\xa0\x80ne"),
    "overlong UTF-8": event_body().replace(b"Jane", b"J\xc0\xafne"),
    "lone high surrogate": event_body().replace(b"Jane", b"J\\ud800ne"),
    "lone low surrogate": event_body().replace(b"Jane", b"J\\udc00ne"),
    "surrogates reversed": event_body().replace(b"Jane", b"\\ude00\\ud83d"),
    "lone surrogate in the id": event_body(id="evt_\ud800"),
    "raw NUL in a string": event_body().replace(b"Jane", b"J\x00ne"),
    "raw NUL after the JSON": event_body() + b"\x00",
    "NUL escape in the id": event_body(id="evt_\u0000"),
    "NUL escape in the type": event_body(type="customer.\u0000updated"),
    "NUL escape in the account": event_body(account="acct_\u0000"),
    "NUL escape in the object id": event_body(data={"object": {"id": "cus_\u0000"}}),
    "byte order mark": b"\xef\xbb\xbf" + event_body(),
    "UTF-16": event_body().decode().encode("utf-16"),
    "two documents": event_body() + event_body(),
    "trailing garbage": event_body() + b"x",
    "duplicate object, last not an event": event_body().replace(
        b'"object": "event"', b'"object": "event", "object": "customer"'),
    "duplicate created, last not a time": event_body().replace(
        b'"type": "customer.updated"', b'"type": "customer.updated", "created": "soon"'),
}


@pytest.mark.parametrize("body", _NOT_STORABLE.values(), ids=_NOT_STORABLE.keys())
def test_signed_bodies_that_are_no_event_the_log_can_hold_are_refused(body: bytes) -> None:
    log = MemoryLog()
    started = time.process_time()
    answer = deliver(log, body, signed(body))
    assert_nothing_written(log, answer)
    assert time.process_time() - started < 1.0


_ODD_BUT_READABLE = {
    "nested 300 levels": event_body().replace(b'"Jane"', b"[" * 300 + b"]" * 300),
    "integer at 64 bits": event_body().replace(b'"Jane"', str(2**63 - 1).encode()),
    "integer beyond 64 bits": event_body().replace(b'"Jane"', str(10**30).encode()),
    "1e308": event_body().replace(b'"Jane"', b"1e308"),
    "a surrogate pair": event_body().replace(b"Jane", b"J\\ud83d\\ude00ne"),
    "NUL escape in the data": event_body().replace(b"Jane", b"J\\u0000ne"),
    "two ids, the last counts": event_body().replace(
        b'"id": "evt_1QfZz2eZvKYlo2CfUzz"',
        b'"id": "evt_first", "id": "evt_1QfZz2eZvKYlo2CfUzz"'),
    "two ids, the first would be refused": event_body().replace(
        b'"id": "evt_1QfZz2eZvKYlo2CfUzz"',
        b'"id": "evt_\\u0000", "id": "evt_1QfZz2eZvKYlo2CfUzz"'),
    "two object ids": event_body().replace(
        b'"id": "cus_RqK4fuzz"', b'"id": "cus_first", "id": "cus_RqK4fuzz"'),
    "two types": event_body().replace(
        b'"type": "customer.updated"', b'"type": "charge.failed", "type": "customer.updated"'),
    "two objects, the last an event": event_body().replace(
        b'"object": "event"', b'"object": "customer", "object": "event"'),
    "two data members": event_body().replace(
        b'"data": ', b'"data": {"object": {"id": "cus_first"}}, "data": '),
}


@pytest.mark.parametrize("body", _ODD_BUT_READABLE.values(), ids=_ODD_BUT_READABLE.keys())
def test_signed_odd_but_readable_events_are_logged_as_every_reader_reads_them(
    body: bytes,
) -> None:
    log = MemoryLog()
    answer = deliver(log, body, signed(body))
    assert_logged_as_a_reader_sees_it(log, answer, body)


def test_of_duplicate_keys_the_last_is_the_one_answered_keyed_and_logged() -> None:
    """As orjson, json and PostgreSQL's jsonb read them: no reader sees another event."""
    body = (
        b'{"id": "evt_first", "object": "event", "type": "charge.failed", "created": 1,'
        b' "data": {"object": {"id": "ch_first", "object": "charge"}, "object":'
        b' {"id": "cus_last", "object": "customer"}}, "created": 1750000000,'
        b' "type": "customer.updated", "id": "evt_last"}'
    )
    log = MemoryLog()
    answer = deliver(log, body, signed(body))
    assert json.loads(answer.body) == {"received": True, "id": "evt_last"}
    [(key, _)] = log.appended
    [envelope] = log.envelopes()
    assert key == b"cus_last"
    assert (envelope.type, envelope.object_type, envelope.created) == (
        "customer.updated", "customer", 1750000000
    )


def test_a_1_mib_json_bomb_is_judged_quickly_and_in_bounded_memory() -> None:
    """The largest body read expands when parsed (about 40 MiB here); it must stay bounded.

    Only a body with an authentic signature is parsed, so only Stripe can send one.
    """
    filler = b'{"a":[]},' * 10
    template = event_body().replace(b'"Jane"', b"[" + b"FILL" + b"{}]")
    count = (MAX_BODY_BYTES - len(template) + 4) // len(filler)
    body = template.replace(b"FILL", filler * count)
    body = body.replace(b"{}]", b"{}" + b" " * (MAX_BODY_BYTES - len(body)) + b"]")
    assert len(body) == MAX_BODY_BYTES

    log = MemoryLog()
    tracemalloc.start()
    started = time.process_time()
    try:
        answer = deliver(log, body, signed(body))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.process_time() - started

    assert_logged_as_a_reader_sees_it(log, answer, body)
    assert peak < 96 * 1024 * 1024, f"{peak / 2**20:.0f} MiB for a 1 MiB body"
    assert elapsed < 10.0


def _of_size(size: int) -> bytes:
    body = event_body(padding="")
    return event_body(padding="x" * (size - len(body)))


@pytest.mark.parametrize("size", [MAX_BODY_BYTES, MAX_BODY_BYTES + 1])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_1_mib_is_read_and_judged_and_one_byte_more_is_413(size: int, framing: str) -> None:
    body = _of_size(size)
    assert len(body) == size
    log = MemoryLog()
    pieces = None
    if framing == "chunked":
        pieces = [body[n:n + 65536] for n in range(0, len(body), 65536)]
    answer = deliver(log, body, signed(body), pieces=pieces)
    if size <= MAX_BODY_BYTES:
        assert_logged_as_a_reader_sees_it(log, answer, body)
    else:
        assert_nothing_written(log, answer, 413)
        assert (b"connection", b"close") in answer.headers


def test_a_declared_length_over_1_mib_is_413_before_any_of_the_body_is_read() -> None:
    body = _of_size(MAX_BODY_BYTES + 1)
    log = MemoryLog()
    answer = deliver(log, body, signed(body), content_length=len(body))
    assert_nothing_written(log, answer, 413)
    assert answer.reads == 0


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_on_the_webhook_path_are_405_and_not_read(method: str) -> None:
    body = event_body()
    log = MemoryLog()
    answer = deliver(log, body, signed(body), method=method)
    assert_nothing_written(log, answer, 405)
    assert (b"allow", b"POST") in answer.headers
    assert answer.reads == 0


@pytest.mark.parametrize(
    "path", ["/webhooks/stripe/platform", "/webhooks/stripe/", "/webhooks/stripe/connect/x",
             "/webhooks/stripe/%00", "/webhooks/stripe/" + "x" * 10_000],
)
def test_unknown_endpoints_are_404_whatever_they_carry(path: str) -> None:
    body = event_body()
    log = MemoryLog()
    assert_nothing_written(log, deliver(log, body, signed(body), path=path), 404)


# Fragments a hostile or broken sender could put where a value goes.
_FRAGMENTS = st.sampled_from(
    [
        b'"evt_x"', b'""', b"null", b"true", b"0", b"-0", b"1.5", b"1e400", b"1" * 400,
        str(2**64).encode(), b"[]", b"{}", b'"\\u0000"', b'"\\ud800"', b'"\\udc00x"',
        b'"\\ud83d\\ude00"', b'"a\x00b"', b'"\xff"', b'"\xed\xa0\x80"', b'"\\"', b"[" * 2000,
        b"[" * 200 + b"]" * 200, b'{"id": "cus_x", "object": "customer"}', b"NaN", b"'x'",
        b'"2026-11-22T06:20:52.246Z"', b'"' + b"x" * 300 + b'"',
    ]
) | st.binary(max_size=12)
_SLOTS = ("ID", "TYPE", "CREATED", "OBJECT_ID", "EXTRA")
_TEMPLATE = (
    b'{"id": ID, "object": "event", "type": TYPE, "created": CREATED, '
    b'"data": {"object": {"id": OBJECT_ID, "object": "customer", "name": EXTRA}}}'
)
_DEFAULTS = {
    "ID": b'"evt_fuzz1"', "TYPE": b'"customer.updated"', "CREATED": str(int(time.time())).encode(),
    "OBJECT_ID": b'"cus_fuzz1"', "EXTRA": b'"Jane"',
}
_OTHERS = {
    "ID": b'"evt_fuzz2"', "TYPE": b'"charge.failed"', "CREATED": b"1700000000",
    "OBJECT_ID": b'"cus_fuzz2"', "EXTRA": b'"Joan"',
}


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """An event whose values are replaced, duplicated or surrounded by hostile fragments."""
    body = _TEMPLATE
    for slot in _SLOTS:
        value = _DEFAULTS[slot]
        if draw(st.integers(0, 3)) == 0:
            value = draw(_FRAGMENTS)
        if draw(st.integers(0, 4)) == 0:
            # A repeated member: its key again, with another value, after this one.
            key = {"ID": b"id", "TYPE": b"type", "CREATED": b"created",
                   "OBJECT_ID": b"id", "EXTRA": b"name"}[slot]
            value += b', "' + key + b'": ' + draw(st.just(_OTHERS[slot]) | _FRAGMENTS)
        body = body.replace(slot.encode(), value, 1)
    return body


@FUZZ
@given(body=hostile_bodies(), cuts=st.lists(st.integers(0, 400), max_size=3))
@example(body=event_body(), cuts=[]).via("an ordinary event")
@example(body=event_body(), cuts=[1, 17, 200]).via("an ordinary event in pieces")
@example(body=_TEMPLATE.replace(b"ID", b'"evt_a", "id": "evt_b"', 1), cuts=[]).via(
    "an unfilled template stays refused")
def test_signed_hostile_bodies_are_refused_or_logged_as_every_reader_reads_them(
    body: bytes, cuts: list[int]
) -> None:
    log = MemoryLog()
    pieces = None
    if cuts:
        edges = [0, *sorted(min(cut, len(body)) for cut in cuts), len(body)]
        pieces = [body[start:end] for start, end in itertools.pairwise(edges)]
    answer = deliver(log, body, signed(body), pieces=pieces)
    event(f"answered {answer.status}")
    assert answer.status in (200, 400), answer.body
    if answer.status == 200:
        assert_logged_as_a_reader_sees_it(log, answer, body)
        log.envelopes()[0].check()
    else:
        assert_nothing_written(log, answer)


@FUZZ
@given(body=hostile_bodies(), header=st.binary(max_size=120))
def test_unsigned_hostile_bodies_never_reach_the_log(body: bytes, header: bytes) -> None:
    log = MemoryLog()
    answer = deliver(log, body, [header] if header else [])
    assert_nothing_written(log, answer)
