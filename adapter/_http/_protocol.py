"""The daemon's HTTP connections: uvicorn's httptools protocol with the bounds an edge needs.

httptools keeps a request's head in memory until it is complete, however large, and uvicorn waits
for it as long as the client likes and accepts every connection the kernel hands it. Here a head
(request line and headers) is cut at ``http.max_header_bytes`` (431), must arrive within
``http.header_timeout`` (408), and a connection past ``http.max_connections`` is answered 503 and
closed at once, so its file descriptor is free again.

A body, too, must be complete within ``http.body_timeout`` of the end of its head (408, closed).
And a response that starts before its request's body has all arrived (401, 403, 413: refused
before the body is read) closes the connection once sent: uvicorn would keep it open and discard
the rest of the body as it comes, each byte putting off its keep-alive timeout, so a client with
no credentials dripping a body held a connection slot for as long as it liked. Everything else
is uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, ClassVar

from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent
from uvicorn._types import Scope as ASGIScope
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .._settings import HttpSettings

__all__ = ["bounded_protocol", "raise_file_limit"]

log = logging.getLogger("adapter.http")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Unavailable"}
# File descriptors the daemon needs besides its HTTP connections (broker links, logs, files).
_SPARE_FILES = 256


class _BoundedProtocol(HttpToolsProtocol):
    bounds: ClassVar[HttpSettings]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: int | None = None  # bytes of the request head so far; None once complete
        self._saw_header = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- connections ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.bounds.max_connections:
            self._refuse(
                503,
                f"too many connections to this daemon (http.max_connections = "
                f"{self.bounds.max_connections}); retry later",
            )
            return
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    # -- the request head -----------------------------------------------------------------

    def _begin_head(self) -> None:
        self._head = 0
        self._saw_header = False
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.bounds.header_timeout, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        limit = self.bounds.max_header_bytes
        if self._head is not None and self._head + len(data) > limit:
            # Feed only what fits: the head may end inside it (the rest is then body or the
            # next request); if it does not, the head is too large.
            room = limit - self._head
            self._head = limit
            super().data_received(data[:room])
            if self.transport.is_closing():
                return
            if self._head is not None:
                self._refuse(431, self._too_large(limit))
                return
            data = data[room:]
            if not data:
                return
        if self._head is not None:
            self._head += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head is None:  # a later request on a kept-alive connection
            self._begin_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._saw_header = True
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head = None
        self._stop_head_timer()
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before:  # a request (not an upgrade): its body is now due
            self._stop_body_timer()
            self._body_timer = self.loop.call_later(
                self.bounds.body_timeout, self._body_too_slow, self.cycle
            )

    # -- the request body ------------------------------------------------------------------

    def on_message_complete(self) -> None:
        self._stop_body_timer()
        super().on_message_complete()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self, cycle: RequestResponseCycle) -> None:
        self._body_timer = None
        if not cycle.more_body or self.transport.is_closing():
            return
        started = cycle.response_started
        # The app hears that the client is gone (its read ends), and nothing it sends from now
        # on is written after this answer.
        cycle.disconnected = True
        cycle.message_event.set()
        if started:
            self.transport.close()
            return
        self._refuse(
            408,
            f"the request body did not arrive within {self.bounds.body_timeout:g}s "
            "(http.body_timeout)",
        )

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        async def closing_early(
            scope: ASGIScope, receive: ASGIReceiveCallable, send: ASGISendCallable
        ) -> None:
            async def send_early(message: ASGISendEvent) -> None:
                if message["type"] == "http.response.start" and cycle.more_body:
                    # Answered before the body arrived whole: say so and close once sent,
                    # rather than read (and wait for) the rest of a body nobody needs.
                    cycle.keep_alive = False
                await send(message)

            await app(scope, receive, send_early)

        super()._start_asgi_task(cycle, closing_early)

    def _too_large(self, limit: int) -> str:
        part = "request headers are" if self._saw_header else "request line is"
        return f"the {part} larger than {limit} bytes (http.max_header_bytes)"

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head is not None and not self.transport.is_closing():
            self._refuse(
                408,
                f"the request head did not arrive within {self.bounds.header_timeout:g}s "
                "(http.header_timeout)",
            )

    def _refuse(self, status: int, detail: str) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        body = detail.encode()
        head = [
            b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
            b"content-type: text/plain; charset=utf-8",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        if status == 503:
            head.append(b"retry-after: 1")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


def bounded_protocol(settings: HttpSettings) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with the bounds of ``settings``."""
    return type("BoundedHttpProtocol", (_BoundedProtocol,), {"bounds": settings})


def raise_file_limit(settings: HttpSettings) -> None:
    """Make room for ``http.max_connections``: raise the soft limit on open files up to the hard
    limit when needed, and warn when even that is too low."""
    needed = settings.max_connections + _SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - platform dependent
            log.warning("could not raise the open files limit: %s", exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open files limit (%d) is below http.max_connections + %d = %d: lower "
            "http.max_connections or raise the limit (ulimit -n)",
            soft,
            _SPARE_FILES,
            needed,
        )
