"""The path every HTTP send takes, whatever its wire format (vRO REST, SOAP, JSON): who is
calling, may they use this name, are they within their rate, is the event valid, did the bus
confirm it. Failures are ``HttpError``s that each front end renders in its own format."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from urllib.parse import unquote_to_bytes

from starlette.requests import ClientDisconnect, Request

from .._client import Client
from .._clock import SYSTEM_CLOCK, Clock
from .._event import Event, SendResult
from .._exceptions import (
    AdapterError,
    BusError,
    ClientStateError,
    InvalidInput,
    LimitExceeded,
    edge_of,
)
from .._names import validate_name, validate_pattern
from .._settings import Settings
from .._times import parse_duration_text
from ._auth import (
    CHALLENGE,
    AuthenticationBusy,
    Authenticator,
    Caller,
    NotAuthenticated,
    TooManyFailures,
)
from ._ratelimit import RateLimiter
from ._shares import Shares

__all__ = [
    "BUS_RETRY_AFTER",
    "Gateway",
    "HttpError",
    "WaitCounter",
    "caller_key",
    "path_name",
    "read_body",
    "retain_parameter",
]

BUS_RETRY_AFTER = 1
_OUTCOMES = {
    400: "invalid",
    401: "unauthorized",
    403: "forbidden",
    408: "incomplete",
    413: "too_large",
    429: "rate_limited",
    503: "unavailable",
}


class HttpError(Exception):
    """A refusal at the edge: an HTTP status, the words for the caller, and for SOAP the fault
    code (``Client``: the caller's fault; ``Server``: ours, retry later) and, when it differs
    from ``status``, the HTTP status of the fault."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        fault: str = "Client",
        soap_status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
        self.fault = fault
        self.soap_status = soap_status


def edge_error(exc: AdapterError) -> HttpError:
    """The answer to an error of the library, from the one table of them (``EDGES``): its
    status (400 bad input, 413 too large, 409, 429 with ``Retry-After``, 503 the bus away) and
    SOAP fault code; a ``Server`` fault is sent with HTTP 500, as SOAP 1.1 sends faults."""
    edge = edge_of(exc)
    headers: dict[str, str] = {}
    detail = str(exc)
    if isinstance(exc, LimitExceeded):
        headers["Retry-After"] = str(exc.retry_after)
    if edge.http == 503:
        detail = f"the bus cannot take events right now; retry later ({exc})"
        headers["Retry-After"] = str(BUS_RETRY_AFTER)
    soap_status = 500 if edge.soap == "Server" else None
    return HttpError(edge.http, detail, headers=headers, fault=edge.soap, soap_status=soap_status)


def path_name(request: Request, parameter: str) -> str:
    """An event name from the path, refused (400) when its percent-encoding is not UTF-8: the
    server decodes such bytes to U+FFFD, which would send (or wait on) another name."""
    name: str = request.path_params[parameter]
    if "\ufffd" in name:
        try:
            unquote_to_bytes(request.scope.get("raw_path", b"")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise HttpError(
                400, f"the event name is not valid UTF-8 once percent-decoded ({exc.reason})"
            ) from None
    return name


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read in pieces and refused (413) as soon as it passes ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"the request body is larger than the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left, or did not send the body within http.body_timeout and was answered
        # 408 by the connection itself: nobody hears this one.
        raise HttpError(408, "the request body did not arrive whole") from None
    return b"".join(chunks)


class WaitCounter:
    """The HTTP waits open at once, per daemon (``http.max_waits``) and per caller
    (``http.max_waits_per_caller``)."""

    def __init__(self, total: int, per_caller: int) -> None:
        self.total = total
        self.per_caller = per_caller
        self._open = 0
        self._by_caller: dict[str, int] = {}

    @contextlib.contextmanager
    def holding(self, caller: str) -> Iterator[None]:
        """One wait of ``caller`` for the block; ``LimitExceeded`` if it does not fit."""
        held = self._by_caller.get(caller, 0)
        if held >= self.per_caller:
            raise LimitExceeded(
                "too many waits open for this caller",
                limit=self.per_caller,
                setting="http.max_waits_per_caller",
            )
        if self._open >= self.total:
            raise LimitExceeded(
                "too many waits open in this daemon", limit=self.total, setting="http.max_waits"
            )
        self._open += 1
        self._by_caller[caller] = held + 1
        try:
            yield
        finally:
            self._open -= 1
            left = self._by_caller[caller] - 1
            if left:
                self._by_caller[caller] = left
            else:
                del self._by_caller[caller]


class Gateway:
    """Authentication, authorization, rate limiting and publishing for the HTTP front ends."""

    def __init__(self, settings: Settings, client: Client, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self._clock = clock
        self.client = client
        self.metrics = client.metrics
        self.auth = Authenticator(settings.auth, clock)
        self.limiter = RateLimiter(settings.http.rate_limit, settings.http.rate_burst, clock)
        self.waits = WaitCounter(settings.http.max_waits, settings.http.max_waits_per_caller)
        self.shares = Shares(
            settings.http.max_resumable_waits_per_caller,
            settings.http.max_retained_names_per_caller,
            clock,
        )
        # Set when the daemon begins to stop: open waits end, readiness turns false.
        self.stopping = asyncio.Event()

    async def caller(self, request: Request) -> Caller:
        """The authenticated caller of a request, or 401 (400 for two credentials)."""
        given = request.headers.getlist("authorization")
        if len(given) > 1:
            raise HttpError(400, f"give one Authorization header, not {len(given)}")
        try:
            caller = await self.auth.authenticate(given[0] if given else None, _peer(request))
        except NotAuthenticated as exc:
            raise HttpError(401, str(exc), headers={"WWW-Authenticate": CHALLENGE}) from None
        except TooManyFailures as exc:
            raise HttpError(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
        except AuthenticationBusy as exc:
            raise HttpError(
                503,
                f"authentication is busy: {exc}",
                headers={"Retry-After": str(BUS_RETRY_AFTER)},
                fault="Server",
            ) from None
        request.state.principal = caller.name
        return caller

    @staticmethod
    def authorize(caller: Caller, name: str) -> str:
        """The name of a send, valid (else 400) and inside the caller's ``allow`` list (else
        403)."""
        try:
            checked = validate_name(name)
        except InvalidInput as exc:
            raise edge_error(exc) from None
        if not caller.may_use(checked):
            raise HttpError(403, f"{_who(caller)} may not use the event name {checked!r}")
        return checked

    @staticmethod
    def authorize_wait(caller: Caller, kind: str, pattern: str) -> str:
        """The name or pattern of a wait, valid (else 400) and readable by the caller (else 403):
        external events by its ``allow`` list, internal ones only by its ``read_internal`` list,
        which anonymous callers never have."""
        try:
            checked = validate_pattern(pattern)
        except InvalidInput as exc:
            raise edge_error(exc) from None
        if caller.may_read(kind, checked):
            return checked
        if kind != "internal":
            raise HttpError(403, f"{_who(caller)} may not use the event name {checked!r}")
        if caller.name is None:
            raise HttpError(403, "anonymous callers may wait only for external events")
        raise HttpError(
            403,
            f"{_who(caller)} may not read internal events named {checked!r}: no read_internal "
            "pattern of the principal covers it",
        )

    @contextlib.contextmanager
    def counting(self, ingress: str) -> Iterator[None]:
        """Count one send attempt under its outcome."""
        try:
            yield
        except HttpError as exc:
            self.metrics.sends.labels(ingress, _OUTCOMES.get(exc.status, "error")).inc()
            raise
        self.metrics.sends.labels(ingress, "ok").inc()

    async def send(
        self,
        request: Request,
        caller: Caller,
        name: str,
        properties: Mapping[str, str] | str | None,
        *,
        source: str,
        event_id: str | None = None,
        retain: timedelta | None = None,
    ) -> SendResult:
        """Publish an external event for the caller; returns once the bus confirmed it."""
        self.authorize(caller, name)
        self.take_rate(request, caller)
        try:
            event = self.client.prepare_event(
                name,
                properties,
                kind="external",
                event_id=event_id,
                source=source,
                principal=caller.name,
            )
        except InvalidInput as exc:
            raise edge_error(exc) from None
        return await self.publish(event, retain=retain, caller_key=caller_key(request, caller))

    def take_rate(self, request: Request, caller: Caller, sends: int = 1) -> None:
        """Charge ``sends`` sends to the caller's rate, all or none; 429 past it (413 for more
        than the burst at once: they could never pass)."""
        if self.limiter.rate > 0 and sends > self.limiter.burst:
            raise HttpError(
                413,
                f"{sends} sends at once are more than http.rate_burst ({self.limiter.burst:g}); "
                "send them in smaller batches",
            )
        delay = self.limiter.acquire(caller_key(request, caller), sends)
        if delay > 0:
            raise HttpError(
                429,
                f"rate limit of {self.limiter.rate:g} sends per second exceeded",
                headers={"Retry-After": str(max(1, math.ceil(delay)))},
            )

    async def publish(
        self, event: Event, *, retain: timedelta | None = None, caller_key: str | None = None
    ) -> SendResult:
        """Send a checked event; 400 for a ``retain`` out of bounds, 429 past the caller's share
        of retained names, 503 when the bus did not confirm it."""
        started = time.perf_counter()
        key = f"{event.kind}.{event.name}"
        try:
            if retain is not None and caller_key is not None:
                ends = self._clock.time() + retain.total_seconds()
                self.shares.hold_retained(caller_key, key, ends)
            try:
                result = await self.client.send_event(event, retain=retain)
            except BaseException:
                if retain is not None and caller_key is not None:
                    self.shares.retained_failed(caller_key, key)
                raise
        except (InvalidInput, BusError, ClientStateError, LimitExceeded) as exc:
            raise edge_error(exc) from None
        self.metrics.publish_seconds.observe(time.perf_counter() - started)
        return result


def retain_parameter(text: str | None) -> timedelta | None:
    """A send's ``retain`` (``30s``, ``5m``, seconds) from a query or JSON field; 400 if bad."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise HttpError(400, 'retain must be a duration as text, such as "30s" or "5m"')
    try:
        return parse_duration_text(text, "retain")
    except InvalidInput as exc:
        raise HttpError(400, str(exc)) from None


def caller_key(request: Request, caller: Caller) -> str:
    """What per-caller bounds count by: the principal, or an anonymous caller's address."""
    return caller.name if caller.name is not None else f"anonymous@{_peer(request)}"


def _who(caller: Caller) -> str:
    return repr(caller.name) if caller.name is not None else "an anonymous caller"


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
