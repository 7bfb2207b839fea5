"""HTTP long-poll waits: ``GET /api/v1/events/{name}/wait``.

Plain mode answers when the wait ends: 200 with the event, 204 at the deadline, 503 when the daemon
stops first (the wait did not reach its deadline, so "nothing came" would be a lie; the caller
waits again, with the same ``wait_id`` to get what was sent meanwhile).

Stream mode (``stream=true``) answers 200 as soon as the wait is bound, so a caller can trigger the
event without a race; a newline every ``HEARTBEAT_SECONDS`` keeps the connection alive, and the
body ends with one JSON object whose ``status`` is what plain mode would have answered:
``{"status": 200, "event": {...}}``, ``{"status": 204}`` or ``{"status": 503, "detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .._bus import check_wait_id
from .._cloudevents import STRUCTURED_CONTENT_TYPE, to_structured_json
from .._event import Event
from .._exceptions import (
    BusError,
    ClientStateError,
    InvalidInput,
    LimitExceeded,
    WaitConflict,
    edge_of,
)
from .._names import Kind
from .._times import parse_deadline_text
from ._gateway import BUS_RETRY_AFTER, Gateway, HttpError
from ._logging import OUTCOME_STATUS

__all__ = [
    "HEARTBEAT_SECONDS",
    "WAIT_BOUND_HEADER",
    "WaitResponse",
    "parse_deadline",
    "scoped",
]

HEARTBEAT_SECONDS = 15.0
WAIT_BOUND_HEADER = "x-customevent-wait"
WAIT_BOUND = WAIT_BOUND_HEADER.encode()
UNMATCHED_HEADER = b"x-customevent-unmatched"
_STOPPING = "the daemon is shutting down; wait again (with the same wait_id to resume)"


def parse_deadline(timeout: str | None, until: str | None, max_wait: float) -> datetime:
    """The deadline of a wait from ``timeout`` (30s, 5m, or seconds) or ``until`` (RFC 3339)."""
    if (timeout is None) == (until is None):
        raise HttpError(400, "give the deadline as either timeout= (30s, 5m) or until= (RFC 3339)")
    text = timeout if timeout is not None else until
    assert text is not None
    try:
        deadline = parse_deadline_text(text, "timeout" if timeout is not None else "until")
    except InvalidInput as exc:
        raise HttpError(400, str(exc)) from None
    if deadline - datetime.now(UTC) > timedelta(seconds=max_wait):
        raise HttpError(400, f"the deadline is more than http.max_wait ({max_wait:g}s) away")
    return deadline


def scoped(wait_id: str | None, principal: str | None) -> str | None:
    """A wait id private to its principal, so nobody resumes another caller's wait; 400 for an
    id that is not one."""
    if wait_id is None:
        return None
    owner = hashlib.sha256((principal or "").encode("utf-8", "surrogateescape")).hexdigest()
    prefix = f"h{owner[:16]}-"
    try:
        check_wait_id(wait_id, reserved=len(prefix))
    except InvalidInput as exc:
        raise HttpError(400, str(exc)) from None
    return prefix + wait_id


class _Interrupted(Exception):
    """The wait ended early (caller gone, daemon stopping); a resumable wait keeps its events."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _content_headers(content_type: str, length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type.encode()), (b"content-length", str(length).encode())]


class WaitResponse(Response):
    """Binds a wait when the response is sent, and answers with its outcome."""

    def __init__(
        self,
        gateway: Gateway,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        *,
        wait_id: str | None,
        stream: bool,
        caller_key: str,
        cloudevent: bool = False,
        match: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=200)
        self._match = match
        # Events on the name that did not carry the match, once the wait ended.
        self._unmatched: int | None = None
        self._cloudevent = cloudevent
        self._gateway = gateway
        self._caller_key = caller_key
        self._kind = kind
        self._pattern = pattern
        self._deadline = deadline
        self._wait_id = wait_id
        self._stream = stream
        self._started = False
        self._finished = False
        self._state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Where the access log (_logging.RequestContext) reads a streamed wait's outcome.
        self._state = scope.setdefault("state", {})
        try:
            with self._gateway.waits.holding(self._caller_key), self._resumable_share():
                await self._wait(receive, send)
        except WaitConflict as exc:
            self._gateway.metrics.http_waits.labels("refused").inc()
            await self._finish(send, edge_of(exc).http, {"detail": str(exc)})
        except LimitExceeded as exc:
            self._gateway.metrics.http_waits.labels("refused").inc()
            status = edge_of(exc).http
            await self._finish(send, status, {"detail": str(exc)}, retry_after=exc.retry_after)
        except _Interrupted as stop:
            if stop.args:
                self._gateway.metrics.http_waits.labels("interrupted").inc()
                await self._finish(send, 503, {"detail": _STOPPING})
        except (BusError, ClientStateError) as exc:
            self._gateway.metrics.http_waits.labels("error").inc()
            await self._finish(
                send, edge_of(exc).http, {"detail": f"the bus cannot serve waits right now ({exc})"}
            )

    @contextlib.contextmanager
    def _resumable_share(self) -> Iterator[None]:
        """A resumable wait counts against its caller's share until it finishes, or, left early,
        until its queue expires (deadline plus the grace)."""
        wait_id = self._wait_id
        if wait_id is None:
            yield
            return
        shares = self._gateway.shares
        before = shares.hold_resumable(self._caller_key, wait_id)
        self._finished = False
        try:
            yield
        finally:
            grace = self._gateway.settings.amqp.wait_grace
            kept = None if self._finished else self._deadline.timestamp() + grace
            shares.resumable_done(self._caller_key, wait_id, kept, before)

    async def _wait(self, receive: Receive, send: Send) -> None:
        if self._gateway.stopping.is_set():
            raise _Interrupted("stopping")
        client = self._gateway.client
        expectation = client.expect(
            self._kind,
            self._pattern,
            until=self._deadline,
            wait_id=self._wait_id,
            match=self._match,
        )
        async with expectation as waiter:
            self._gateway.metrics.http_waits_active.inc()
            try:
                if self._stream:
                    bound = [(b"content-type", b"application/json"), (WAIT_BOUND, b"bound")]
                    await self._start(send, 200, bound)
                event = await self._race(waiter.get(), receive, send)
            finally:
                self._gateway.metrics.http_waits_active.dec()
                if self._match is not None:
                    self._unmatched = waiter.unmatched
                    self._gateway.metrics.wait_unmatched.inc(waiter.unmatched)
        self._finished = True
        if event is None:
            self._gateway.metrics.http_waits.labels("deadline").inc()
            await self._finish(send, 204, None)
        else:
            self._gateway.metrics.http_waits.labels("event").inc()
            if self._cloudevent and not self._started:
                body = to_structured_json(event)
                headers = _content_headers(STRUCTURED_CONTENT_TYPE, len(body))
                await self._start(send, 200, headers)
                await send({"type": "http.response.body", "body": body})
                return
            if self._cloudevent:  # stream mode: the CloudEvent beside the event in the outcome
                self._state[OUTCOME_STATUS] = 200
                outcome = {
                    "status": 200,
                    "event": event.to_json(),
                    "cloudevent": json.loads(to_structured_json(event)),
                    **self._unmatched_member(),
                }
                await send({"type": "http.response.body", "body": _json(outcome)})
                return
            await self._finish(send, 200, event.to_json())

    async def _race(self, getting: Any, receive: Receive, send: Send) -> Event | None:
        get = asyncio.ensure_future(getting)
        gone = asyncio.ensure_future(_disconnected(receive))
        stop = asyncio.ensure_future(self._gateway.stopping.wait())
        pending = {get, gone, stop}
        heartbeat = HEARTBEAT_SECONDS if self._stream else None
        try:
            while True:
                done, _ = await asyncio.wait(
                    pending, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED
                )
                if get in done:
                    result: Event | None = get.result()
                    return result
                if gone in done:
                    raise _Interrupted()
                if stop in done:
                    raise _Interrupted("stopping")
                await send({"type": "http.response.body", "body": b"\n", "more_body": True})
        finally:
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _unmatched_member(self) -> dict[str, int]:
        return {} if self._unmatched is None else {"unmatched": self._unmatched}

    async def _start(
        self,
        send: Send,
        status: int,
        headers: list[tuple[bytes, bytes]],
        retry_after: int = BUS_RETRY_AFTER,
    ) -> None:
        headers = [(b"cache-control", b"no-store"), *headers]
        if self._unmatched is not None:
            headers.append((UNMATCHED_HEADER, str(self._unmatched).encode()))
        if status in (429, 503):
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self._started = True

    async def _finish(
        self,
        send: Send,
        status: int,
        body: dict[str, Any] | None,
        *,
        retry_after: int = BUS_RETRY_AFTER,
    ) -> None:
        if self._started:
            # Stream mode: the status line went out when the wait was bound; the outcome is in
            # the body.
            outcome: dict[str, Any] = {"status": status, **self._unmatched_member()}
            self._state[OUTCOME_STATUS] = status
            if status == 200:
                outcome["event"] = body
            elif body is not None:
                outcome.update(body)
            await send({"type": "http.response.body", "body": _json(outcome)})
            return
        content = b"" if body is None else _json(body)
        headers = [] if status == 204 else _content_headers("application/json", len(content))
        await self._start(send, status, headers, retry_after)
        await send({"type": "http.response.body", "body": content})
