"""HTTP edge cases against the real gateway process (uvicorn + httptools) and a real broker.

Requests are written as raw bytes on plain sockets, as a hostile or broken client sends them:
pipelined requests, ``Transfer-Encoding`` together with ``Content-Length``, ``Expect:
100-continue``, header floods, a slow sender, chunked bodies over 1 MiB, other methods. Every
test records which events were answered 200 and which were refused or hidden inside another
request; the last test reads the log back and checks that it holds exactly the accepted events,
then that the process is still alive, ready and of a sane size.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from ingest.signature import signature_header
from streams.log.topics import delete_topics
from streams.settings import Settings
from tests.integration.log_support import read_log
from tests.integration.test_gateway import DEFAULT, gateway_process, stripe_event

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
# The gateway answers a body trickling in for 10 s with 408; headers deserve no more patience.
HEADER_DEADLINE = 15.0
# What a healthy gateway may weigh after the corpus (about 50 MiB when idle).
RSS_BOUND = 128 * MIB


@dataclass
class Ledger:
    """Event ids the tests were answered 200 for, and ids that must never reach the log."""

    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)

    def record(self, event_id: str, answer: Response | None) -> None:
        """Note an event answered 200 before anything is asserted about the answer."""
        if answer is not None and answer.status == 200:
            self.accepted.add(event_id)


@dataclass(frozen=True)
class Gateway:
    """The gateway process under test: where it listens, its pid and its settings."""

    host: str
    port: int
    pid: int
    settings: Settings

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Response:
    """One HTTP response as read off the connection."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> dict[str, object]:
        document = json.loads(self.body)
        assert isinstance(document, dict)
        return document


class Connection:
    """One raw HTTP/1.1 connection: bytes written as given, responses parsed one by one."""

    def __init__(self, gateway: Gateway, timeout: float = 20.0) -> None:
        self.socket = socket.create_connection((gateway.host, gateway.port), timeout=timeout)
        self._reader = self.socket.makefile("rb")

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()
        self.socket.close()

    def send(self, data: bytes, *, may_be_cut_off: bool = False) -> None:
        """Write ``data``; a server that answers before the end may close before it all went."""
        try:
            self.socket.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            if not may_be_cut_off:
                raise

    def response(self, *, head: bool = False) -> Response | None:
        """The next response, or None once the server has closed the connection."""
        try:
            status_line = self._reader.readline()
            if not status_line:
                return None
            _, status, _ = status_line.split(b" ", 2)
            headers: dict[bytes, bytes] = {}
            while (line := self._reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            code = int(status)
            length = 0 if head or code < 200 else int(headers.get(b"content-length", b"0"))
            return Response(code, headers, self._reader.read(length))
        except ConnectionResetError:
            return None

    def responses(self) -> list[Response]:
        """Every response until the server closes the connection."""
        found: list[Response] = []
        while (response := self.response()) is not None:
            found.append(response)
        return found


def event() -> tuple[str, bytes]:
    body = stripe_event()
    return json.loads(body)["id"], body


def request(
    body: bytes, *, signature: bytes | None = None, path: bytes = b"/webhooks/stripe",
    method: bytes = b"POST", headers: bytes = b"", length: bool = True,
) -> bytes:
    """A webhook request in bytes, signed with the default secret unless ``signature`` is given."""
    if signature is None:
        signature = signature_header(body, DEFAULT).encode()
    head = method + b" " + path + b" HTTP/1.1\r\nHost: gateway\r\n"
    head += b"Content-Type: application/json\r\nStripe-Signature: " + signature + b"\r\n"
    if length:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + headers + b"\r\n" + body


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def gateway(kafka_bootstrap: str) -> Iterator[Gateway]:
    prefix = f"gwe{uuid.uuid4().hex[:10]}"
    settings = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STRIPE_STREAMS_TOPIC_PREFIX": prefix}
    )
    try:
        with gateway_process(kafka_bootstrap, prefix) as (process, base):
            host, port = base.removeprefix("http://").split(":")
            yield Gateway(host, int(port), process.pid, settings)
    finally:
        with suppress(Exception):
            asyncio.run(delete_topics(kafka_bootstrap, f"{prefix}."))


def test_pipelined_webhooks_on_one_connection_are_answered_in_order(
    gateway: Gateway, ledger: Ledger
) -> None:
    (first, first_body), (forged, forged_body), (last, last_body) = event(), event(), event()
    ledger.refused.add(forged)
    with Connection(gateway) as connection:
        connection.send(
            request(first_body) + request(forged_body, signature=b"t=1,v1=00")
            + request(last_body)
        )
        answers = [connection.response() for _ in range(3)]
    for event_id, answer in zip((first, forged, last), answers, strict=True):
        ledger.record(event_id, answer)

    assert [a.status if a else None for a in answers] == [200, 400, 200]
    assert answers[0] is not None and answers[2] is not None
    assert answers[0].json() == {"received": True, "id": first}
    assert answers[2].json() == {"received": True, "id": last}


def test_a_request_inside_the_body_of_a_refused_one_is_not_executed(
    gateway: Gateway, ledger: Ledger
) -> None:
    """A 404 or 405 answered before the body is read still skips exactly that body."""
    hidden, hidden_body = event()
    ledger.refused.add(hidden)
    inner = request(hidden_body)
    after, after_body = event()
    with Connection(gateway) as connection:
        connection.send(
            request(inner, path=b"/webhooks/stripe/nowhere")
            + request(inner, method=b"PUT")
            + request(after_body)
        )
        answers = [connection.response() for _ in range(3)]
    ledger.record(after, answers[2])
    assert [a.status if a else None for a in answers] == [404, 405, 200]


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 800\r\n",
        b"Transfer-Encoding: identity\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Transfer-Encoding : chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding:\r\n chunked\r\n",
    ],
    ids=["CL.TE", "TE.CL", "two lengths", "TE identity", "TE chunked,identity",
         "space before colon", "two TE", "obsolete folding"],
)
def test_ambiguous_framing_is_refused_400_and_smuggles_nothing(
    gateway: Gateway, ledger: Ledger, framing: bytes
) -> None:
    """Whichever way a proxy in front framed it, the hidden request never runs."""
    hidden, hidden_body = event()
    ledger.refused.add(hidden)
    smuggled = request(hidden_body)
    # Read as chunked the body ends at "0"; read by its length it is longer: the rest would be
    # a second, signed request that a proxy in front never saw.
    head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: gateway\r\nStripe-Signature: t=1,v1=00\r\n"
    with Connection(gateway) as connection:
        connection.send(head + framing + b"\r\n0\r\n\r\n" + smuggled)
        answers = connection.responses()

    assert [a.status for a in answers] == [400], answers


def test_expect_100_continue_is_answered_before_the_body_is_sent(
    gateway: Gateway, ledger: Ledger
) -> None:
    event_id, body = event()
    head, _, _ = request(body, headers=b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")
    with Connection(gateway) as connection:
        connection.send(head + b"\r\n\r\n")
        interim = connection.response()
        assert interim is not None and interim.status == 100
        connection.send(body)
        answer = connection.response()
    ledger.record(event_id, answer)
    assert answer is not None and answer.status == 200, answer


def test_expect_100_continue_over_1_mib_is_413_without_continue(gateway: Gateway) -> None:
    with Connection(gateway) as connection:
        connection.send(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: gateway\r\nExpect: 100-continue\r\n"
            b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 5000000\r\n\r\n"
        )
        answers = connection.responses()
    assert [a.status for a in answers] == [413]
    assert answers[0].headers[b"connection"] == b"close"


def _sized(size: int) -> tuple[str, bytes]:
    event_id, body = event()
    document = json.loads(body)
    document["padding"] = ""
    document["padding"] = "x" * (size - len(json.dumps(document).encode()))
    sized = json.dumps(document).encode()
    assert len(sized) == size
    return event_id, sized


def _chunked(body: bytes, *, end: bool = True) -> bytes:
    pieces = [body[n:n + 65536] for n in range(0, len(body), 65536)]
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    return chunks + (b"0\r\n\r\n" if end else b"")


def test_whole_webhooks_of_every_size_in_one_write_are_accepted(
    gateway: Gateway, ledger: Ledger
) -> None:
    """A request that arrives in one read is no header flood, whatever its body's size."""
    answers = []
    with Connection(gateway) as connection:
        for size in (60_000, 66_000, 100_000, 200_000):
            event_id, body = _sized(size)
            connection.send(request(body))
            answer = connection.response()
            ledger.record(event_id, answer)
            answers.append(answer.status if answer else None)
    assert answers == [200, 200, 200, 200]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_of_1_mib_is_accepted_and_one_byte_more_is_413(
    gateway: Gateway, ledger: Ledger, chunked: bool
) -> None:
    fits, fits_body = _sized(MIB)
    over, over_body = _sized(MIB + 1)
    ledger.refused.add(over)
    framing = b"Transfer-Encoding: chunked\r\n" if chunked else b""
    answers: list[Response | None] = []
    for body in (fits_body, over_body):
        content = _chunked(body) if chunked else body
        with Connection(gateway) as connection:
            signature = signature_header(body, DEFAULT).encode()
            connection.send(
                request(content, signature=signature, headers=framing, length=not chunked),
                may_be_cut_off=True,
            )
            answers.append(connection.response())
    ledger.record(fits, answers[0])
    assert [a.status if a else None for a in answers] == [200, 413]


def test_a_chunked_body_over_1_mib_is_413_before_it_ends(gateway: Gateway, ledger: Ledger) -> None:
    """The answer comes while the body is still unfinished: the gateway never buffers it all."""
    event_id, body = _sized(MIB + 65536)
    ledger.refused.add(event_id)
    with Connection(gateway) as connection:
        connection.send(
            request(b"", signature=signature_header(body, DEFAULT).encode(),
                    headers=b"Transfer-Encoding: chunked\r\n", length=False)
        )
        # No final chunk: the body is never complete, so only a gateway that cut it off answers.
        connection.send(_chunked(body, end=False), may_be_cut_off=True)
        answers = connection.responses()
    assert [a.status for a in answers] == [413]
    assert answers[0].headers[b"connection"] == b"close"


@pytest.mark.parametrize("method", [b"GET", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD"])
def test_other_methods_on_the_webhook_path_are_405(
    gateway: Gateway, ledger: Ledger, method: bytes
) -> None:
    event_id, body = event()
    ledger.refused.add(event_id)
    with Connection(gateway) as connection:
        connection.send(request(body, method=method))
        answer = connection.response(head=method == b"HEAD")
    assert answer is not None
    assert (answer.status, answer.headers[b"allow"]) == (405, b"POST")


@pytest.mark.parametrize("method", [b"FOO", b"post", b"P\xd3ST"])
def test_a_method_unknown_to_http_is_refused(
    gateway: Gateway, ledger: Ledger, method: bytes
) -> None:
    """httptools knows no such method and answers 400 itself; 405 or 501 would do as well."""
    event_id, body = event()
    ledger.refused.add(event_id)
    with Connection(gateway) as connection:
        connection.send(request(body, method=method))
        answer = connection.response()
    assert answer is not None and answer.status in (400, 405, 501), answer


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("repeated, first authentic", {200}),
        ("repeated, first forged", {400}),
        ("leading spaces", {200}),
        ("trailing spaces", {200}),
        ("non-ASCII bytes", {400}),
        ("empty", {400}),
        ("500 v1 and the right one", {200}),
        # 431 once the header section is limited (see the header flood tests below).
        ("100 KB of junk", {400, 431}),
    ],
)
def test_odd_signature_headers_reach_the_gateway_as_sent(
    gateway: Gateway, ledger: Ledger, case: str, expected: set[int]
) -> None:
    event_id, body = event()
    good = signature_header(body, DEFAULT).encode()
    now = good.split(b",")[0]
    forged = now + b",v1=" + b"0" * 64
    lines = {
        "repeated, first authentic": [good, forged],
        "repeated, first forged": [forged, good],
        "leading spaces": [b" \t " + good],
        "trailing spaces": [good + b" \t "],
        "non-ASCII bytes": [now + b",v1=\xff\xfe\xc3\x28," + b"\x80" * 10],
        "empty": [b""],
        "500 v1 and the right one": [
            now + b"," + b",".join(b"v1=%064x" % n for n in range(500)) + good[len(now):]
        ],
        "100 KB of junk": [b"x" * 100_000],
    }[case]
    head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n" % len(body)
    head += b"".join(b"Stripe-Signature: " + line + b"\r\n" for line in lines)
    with Connection(gateway) as connection:
        connection.send(head + b"\r\n" + body)
        answer = connection.response()
    ledger.record(event_id, answer)
    if expected != {200}:
        ledger.refused.add(event_id)
    assert answer is not None and answer.status in expected, answer


@pytest.mark.parametrize(
    "headers",
    [b"X-Big: " + b"a" * 100_000 + b"\r\n",
     b"".join(b"X-Header-%d: v\r\n" % n for n in range(5000))],
    ids=["one 100 KB line", "5,000 lines"],
)
def test_a_header_section_over_64_kib_is_refused_with_431(
    gateway: Gateway, headers: bytes
) -> None:
    with Connection(gateway) as connection:
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + headers + b"\r\n")
        answer = connection.response()
    assert answer is not None and answer.status == 431, answer


def test_a_header_section_that_never_ends_is_cut_off(gateway: Gateway) -> None:
    before = rss(gateway.pid)
    sent = 0
    with Connection(gateway) as connection:
        connection.send(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Flood: ")
        piece = b"a" * 65536
        with suppress(OSError):
            while sent < 16 * MIB:
                readable, _, _ = select.select([connection.socket], [], [], 0)
                if readable:
                    break  # An answer (431) or the connection closed: cut off.
                connection.send(piece)
                sent += len(piece)
        grown = rss(gateway.pid) - before
    assert sent < 16 * MIB, (
        f"the gateway took 16 MiB of one header line without answering; RSS grew by "
        f"{grown / MIB:.0f} MiB"
    )


def test_a_client_slow_to_send_its_headers_is_disconnected(gateway: Gateway) -> None:
    """Slowloris: one connection idle from the start, one sending a header byte a second."""
    trickle = b"POST /webhooks/stripe HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 100
    closed_after: dict[str, float] = {}
    started = time.monotonic()
    with (
        closing(socket.create_connection((gateway.host, gateway.port))) as idle,
        closing(socket.create_connection((gateway.host, gateway.port))) as slow,
    ):
        watched = {"idle": idle, "slow": slow}
        for byte in trickle:
            elapsed = time.monotonic() - started
            if elapsed > HEADER_DEADLINE or len(closed_after) == len(watched):
                break
            with suppress(OSError):
                slow.send(bytes([byte]))
            waiting = [s for name, s in watched.items() if name not in closed_after]
            readable, _, _ = select.select(waiting, [], [], 1.0)
            for name, connection in watched.items():
                if connection in readable:
                    with suppress(OSError):
                        connection.recv(65536)
                    closed_after[name] = time.monotonic() - started
    assert closed_after.keys() == {"idle", "slow"}, (
        f"still open after {HEADER_DEADLINE:g} s: "
        f"{sorted(watched.keys() - closed_after.keys())}; closed: {closed_after}"
    )


def test_after_the_whole_corpus_the_log_holds_exactly_the_accepted_events(
    gateway: Gateway, ledger: Ledger
) -> None:
    """Runs last: nothing refused, hidden or smuggled is in the log; the process is healthy."""
    logged = {envelope.id for _, _, envelope in read_log(gateway.settings)}
    assert ledger.refused.isdisjoint(logged), ledger.refused & logged
    assert logged == ledger.accepted

    with httpx.Client(base_url=gateway.base, timeout=10) as client:
        assert client.get("/healthz").json() == {"alive": True}
        assert client.get("/readyz").json() == {"ready": True}
        body = stripe_event()
        headers = {"Stripe-Signature": signature_header(body, DEFAULT)}
        started = time.monotonic()
        answer = client.post("/webhooks/stripe", content=body, headers=headers)
        assert answer.status_code == 200
        assert time.monotonic() - started < 2.0
    assert rss(gateway.pid) < RSS_BOUND, f"RSS {rss(gateway.pid) / MIB:.0f} MiB"
