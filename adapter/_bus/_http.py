"""``HttpBus``: the bus as seen through a bridge daemon's HTTP API, for a service or a script with
no AMQP access: ``Client("http://user:pass@host:8280")`` and ``customevent ... --url http://...``.

Sends are ``POST /api/v1/events/{name}``. A wait is a stream-mode long poll: the daemon answers
200 only once the wait is bound, so ``async with`` returns exactly when events can be caught, and
the outcome follows in the body (see ``adapter/_http/_wait.py``). Only external events travel
this way: the daemon never lets its edge produce an internal one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from .._event import Event
from .._exceptions import (
    AdapterError,
    BrokerAuthenticationError,
    BusError,
    BusUnavailable,
    ClientStateError,
    ConfigurationError,
    InvalidInput,
    LimitExceeded,
    PropertiesTooLarge,
    WaitConflict,
)
from .._groups import DeadLetter, GroupInfo, GroupOptions, GroupSubscription
from .._names import Kind, validate_kind, validate_name
from ._base import DAEMON_SCHEMES, Bus, Subscription, check_wait_id

__all__ = ["HttpBus"]

# The daemon's stream-mode wait protocol (adapter/_http/_wait.py), restated here so that the CLI
# does not import the web stack: its heartbeat period, and how many a wait may miss before it
# counts as lost.
_HEARTBEAT_SECONDS = 15.0
_HEARTBEAT_SLACK = 4
_BOUND_HEADER = "x-customevent-wait"


def _split_credentials(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """The URL without its userinfo (safe to show), and Basic credentials from the userinfo."""
    parts = urlsplit(url)
    if parts.scheme not in DAEMON_SCHEMES or not parts.hostname:
        raise InvalidInput(
            f"the daemon URL must be http(s)://[user:password@]host:port, not {url!r}"
        )
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    auth = None
    if parts.username is not None:
        auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
    return base, auth


E = TypeVar("E", bound=AdapterError)


def _remote(cls: type[E], detail: str, **attributes: object) -> E:
    """An error of the daemon's as the same type here, with its words (the daemon's own values
    of the attributes it does not send are None or 0)."""
    error = cls.__new__(cls)
    Exception.__init__(error, detail)
    for name, value in attributes.items():
        setattr(error, name, value)
    return error


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text.strip()[:500]


class HttpBus(Bus):
    """A bus reached through a bridge daemon: ``HttpBus("http://user:pass@host:8280")``, or
    with ``token=`` for a bearer token. Only external events can be sent this way."""

    name = "HTTP"
    default_kind: Kind = "external"

    def __init__(self, base_url: str, *, token: str | None = None) -> None:
        self.url, self._auth = _split_credentials(base_url)
        self._headers: dict[str, str] = {}
        if token and self._auth is None:
            self._headers["Authorization"] = f"Bearer {token}"
        self._http: httpx.AsyncClient | None = None
        self._connected = False

    async def start(self) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.url,
            auth=self._auth,
            headers=self._headers,
            timeout=httpx.Timeout(60.0, connect=10.0),
            # Each wait holds a connection until its outcome: httpx's default pool of 100 would
            # make the 101st wait hang, then fail as "cannot reach". The daemon bounds what
            # one caller may hold, and says so (429/503).
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
        )

    async def close(self) -> None:
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def where(self) -> str:
        return f"the bridge daemon at {self.url}"

    def _client(self) -> httpx.AsyncClient:
        self._check_open()
        assert self._http is not None
        return self._http

    def _unreachable(self, exc: httpx.HTTPError) -> BusUnavailable:
        self._connected = False
        return BusUnavailable(
            f"cannot reach the bridge daemon at {self.url} ({type(exc).__name__}: {exc}); "
            "is 'customevent serve' running there?"
        )

    def _refusal(self, response: httpx.Response) -> AdapterError:
        """The error for a response that is not a success: the daemon's own error, as the same
        type (``EDGES`` maps each to its status), with the daemon's words."""
        status = response.status_code
        detail = _detail(response)
        self._connected = status != 503
        if status in (401, 403):
            return BrokerAuthenticationError(
                f"the bridge daemon at {self.url} answered {status} "
                f"{response.reason_phrase}: {detail}"
            )
        if status == 413:
            return _remote(PropertiesTooLarge, detail, rule=detail, line=None, limit=0, size=0)
        if status in (400, 422):
            return InvalidInput(detail)
        if status == 409:
            return _remote(WaitConflict, detail, wait_id=None, held=None, asked=None)
        if status == 429:
            retry_after = response.headers.get("retry-after", "1")
            return _remote(
                LimitExceeded,
                f"the bridge daemon at {self.url} refused it: {detail}",
                limit=0,
                setting="the daemon's",
                retry_after=int(retry_after) if retry_after.isdigit() else 1,
            )
        return BusUnavailable(f"the bridge daemon at {self.url} answered {status}: {detail}")

    async def publish(self, event: Event, *, retain: timedelta | None = None) -> bool:
        if event.kind != "external":
            raise InvalidInput(
                f"{self.where} accepts only external events (kind='external', --kind external); "
                "send internal events over AMQP (an amqp:// URL)"
            )
        body: dict[str, Any] = {"properties": event.properties, "event_id": event.event_id}
        if retain is not None:
            # The daemon checks it against its own amqp.max_retain.
            body["retain"] = f"{retain.total_seconds():.3f}s"
        headers: dict[str, str] = {}
        if event.traceparent is not None:
            headers["traceparent"] = event.traceparent
            if event.tracestate is not None:
                headers["tracestate"] = event.tracestate
        try:
            response = await self._client().post(
                f"/api/v1/events/{quote(validate_name(event.name), safe='')}",
                json=body,
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code != 202:
            raise self._refusal(response)
        self._connected = True
        return bool(response.json().get("routed"))

    async def keep_refused(self, source: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Not offered: the daemon's HTTP API takes events, not refused messages. An edge that
        refuses messages (the MQTT bridge) runs in the daemon, on the daemon's own bus."""
        raise BusError(
            f"the bridge daemon at {self.url} keeps no refused messages over HTTP; "
            f"run the {source} edge in the daemon (customevent serve), on its own bus"
        )

    def subscribe(
        self,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        *,
        wait_id: str | None = None,
        match: Mapping[str, str] | None = None,
    ) -> Subscription:
        return _HttpSubscription(
            self, validate_kind(kind), pattern, deadline, check_wait_id(wait_id), match
        )

    def subscribe_group(
        self, group: str, kind: Kind, pattern: str, options: GroupOptions
    ) -> GroupSubscription:
        raise _no_groups()

    async def dead_letters(self, group: str) -> list[DeadLetter]:
        raise _no_groups()

    async def replay(self, group: str, event_id: str | None = None) -> int:
        raise _no_groups()

    async def groups(self, known: Iterable[str] = ()) -> list[GroupInfo]:
        raise _no_groups()

    async def group_info(self, group: str) -> GroupInfo:
        raise _no_groups()

    async def purge_group(self, group: str) -> int:
        raise _no_groups()

    async def delete_group(self, group: str, *, force: bool = False) -> GroupInfo:
        raise _no_groups()

    async def purge_dead(self, group: str) -> int:
        raise _no_groups()


def _no_groups() -> ConfigurationError:
    # A group is a durable queue of the broker's: a daemon cannot lend one over HTTP. Its
    # webhooks ([[triggers]]) are how HTTP services receive a group's events.
    return ConfigurationError(
        "groups need RabbitMQ (an amqp:// URL) or the in-process bus, not a bridge daemon; "
        "to have a daemon deliver a group's events to an HTTP service, configure a [[triggers]] "
        "webhook"
    )


class _HttpSubscription(Subscription):
    def __init__(
        self,
        bus: HttpBus,
        kind: Kind,
        pattern: str,
        deadline: datetime,
        wait_id: str | None,
        match: Mapping[str, str] | None,
    ) -> None:
        super().__init__(kind, pattern, deadline, match)
        self._bus = bus
        self._wait_id = wait_id
        self._response: httpx.Response | None = None
        self._outcome: Event | None = None
        self._done = False

    async def __aenter__(self) -> Self:
        http = self._bus._client()
        params: list[tuple[str, str | int | float | bool | None]] = [
            ("until", self.deadline.isoformat()),
            ("kind", self.kind),
            ("stream", "true"),
        ]
        if self._wait_id is not None:
            params.append(("wait_id", self._wait_id))
        # The daemon matches: a wait over HTTP hears only of its own event.
        params.extend(("match", f"{key}={value}") for key, value in (self.match or {}).items())
        request = http.build_request(
            "GET",
            f"/api/v1/events/{quote(self.pattern, safe='')}/wait",
            params=params,
            timeout=httpx.Timeout(_HEARTBEAT_SECONDS * _HEARTBEAT_SLACK, connect=10.0),
        )
        try:
            # Returns once the status line and headers arrived: the daemon sends them only after
            # the wait is bound.
            response = await http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._bus._unreachable(exc) from None
        if response.status_code == 204:
            await response.aclose()
            self._done = True
            return self
        if response.status_code != 200:
            try:
                await response.aread()
            except httpx.HTTPError as exc:
                raise self._bus._unreachable(exc) from None
            finally:
                await response.aclose()
            raise self._bus._refusal(response)
        self._bus._connected = True
        self._response = response
        return self

    async def get(self) -> Event | None:
        if self._done:
            return self._outcome
        response = self._response
        if response is None:
            raise ClientStateError("use the subscription inside async with")
        try:
            body = await response.aread()
        except httpx.HTTPError as exc:
            raise self._bus._unreachable(exc) from None
        if response.headers.get(_BOUND_HEADER) == "bound":
            outcome = _parse(body)
            status = outcome.get("status")
        else:  # a plain answer (a daemon that ignored stream=true)
            status = response.status_code
            outcome = {"event": _parse(body)} if body.strip() else {}
        unmatched = outcome.get("unmatched")
        if isinstance(unmatched, int) and not isinstance(unmatched, bool) and unmatched >= 0:
            self._refused = unmatched  # the daemon's count: it did the matching
        if status == 200:
            self._outcome = _event(outcome.get("event"))
        elif status != 204:
            self._bus._connected = False
            raise BusUnavailable(
                f"the wait at the bridge daemon {self._bus.url} ended early: "
                f"{outcome.get('detail', status)}"
            )
        self._done = True
        return self._outcome

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()


def _parse(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        raise BusUnavailable(
            f"the bridge daemon sent a wait outcome that is not JSON: {body[:200]!r}"
        ) from None
    if not isinstance(value, dict):
        raise BusUnavailable("the bridge daemon sent a wait outcome that is not a JSON object")
    return value


def _event(data: Any) -> Event:
    try:
        return Event.from_json(data)
    except InvalidInput as exc:
        raise BusUnavailable(
            f"the bridge daemon sent an event this client cannot read: {exc}"
        ) from None
