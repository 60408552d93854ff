"""uvicorn's httptools protocol with a deadline and a size cap on every request's headers.

uvicorn bounds neither: a client sending a header byte a second holds a connection forever,
and a header that never ends grows in memory (httptools rebuilds the value with each piece, so
the cost grows with its square) while it blocks the event loop. Stripe sends a request's
headers at once and well under a kilobyte, so the gateway answers 408 to headers still
arriving after :data:`HEADER_SECONDS` and 431 to more than :data:`MAX_HEADER_BYTES` of them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_SECONDS = 10.0
"""As long as a body may take (see ingest/gateway.py): both are sent at once by Stripe."""
MAX_HEADER_BYTES = 64 * 1024

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpTools(HttpToolsProtocol):
    """Counts the bytes a request's headers take and times them, from the first byte on.

    Headers are in progress from a connection's start, and from the first byte of each later
    request on it, until they are complete; a whole request arriving in one read never counts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = True
        self._header_bytes = 0
        self._parsed_bytes = 0
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        reading_headers = self._in_headers
        super().data_received(data)
        # Checked after parsing: a chunk holding the end of the headers and a body is fine.
        if (
            reading_headers and self._in_headers and not self._refused
            and not self.transport.is_closing()
        ):
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._refuse(431, "request headers over 64 KiB")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_bytes = 0
        self._parsed_bytes = 0
        self._start_deadline()

    def on_url(self, url: bytes) -> None:
        if self._counted(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._counted(len(name) + len(value)):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_deadline()
        if not self._refused:
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _counted(self, size: int) -> bool:
        """Count parsed header bytes (headers that arrived in one read); False once refused."""
        self._parsed_bytes += size
        if self._parsed_bytes > MAX_HEADER_BYTES and not self._refused:
            self._refuse(431, "request headers over 64 KiB")
        return not self._refused

    def _start_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(HEADER_SECONDS, self._too_slow)

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._in_headers and not self._refused:
            self._refuse(408, f"request headers not received within {HEADER_SECONDS:g} s")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` and close; the parser's later callbacks for the request do nothing."""
        self._refused = True
        body = f'{{"error": "{message}"}}'.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()
