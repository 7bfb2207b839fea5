"""Webhook triggers of the daemon (``[[triggers]]``): each is a group, named after the trigger,
whose events are POSTed to an HTTP service as CloudEvents 1.0 (structured mode by default, or
binary), signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``, one signature per secret).

What the signature covers is everything a receiver acts on. In structured mode every attribute is
in the body. In binary mode the attributes travel in ``ce-*`` headers, which Standard Webhooks does
not sign, so ``webhook-id`` is a digest of them (``attributes_id``): a receiver that recomputes it
from the headers it got and verifies with that id refuses any header changed, added or removed.

A 2xx answer acknowledges the event. 408, 429, 5xx and network errors (a timeout included)
retry it after the group's backoff, never sooner than the receiver's ``Retry-After``; any other
answer dead-letters it at once. ``timeout`` bounds the whole exchange, and at most
``REPLY_BYTES`` of the answer's body are read, as sent (``Accept-Encoding: identity``, never
decompressed): a receiver can hold a delivery slot no longer than the timeout and cost no more
memory than that. Each trigger has its own HTTP client and at most ``max_in_flight`` deliveries
under way, so a receiver that is down or slow holds up neither the daemon's sends nor the other
triggers. A trigger whose group cannot be joined (the broker away) tries again with a backoff, and
says so in its ``customevent_trigger_running`` gauge.

A trigger of target ``vro`` starts a vRO workflow instead (``_vro``): the POST goes to the
workflow's executions, authenticated by the trigger's credentials (HTTP Basic or a bearer token)
rather than signed, since vRO verifies no signature; everything else (the timeout, the reply
bound, retries and dead letters) is the same. What differs between the two is a ``_Target``.

Each retry, dead letter and unreachable receiver is logged once, as a warning naming the trigger
and the event (JSON fields ``trigger``, ``event_id``, ``event_name``, ``attempt``, ``outcome``,
``reason``); a retry whose attempts are spent is counted and logged as the dead letter it became.
The depth and dead letters of each trigger's group are gauges, refreshed every
``GAUGE_SECONDS``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import quote, unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
from standardwebhooks import Webhook

from ._client import Client
from ._cloudevents import to_http
from ._event import Event
from ._exceptions import AdapterError, BusError, InvalidInput
from ._groups import Delivery
from ._retry import failure_of, trigger_join_retrying, trigger_restart_retrying
from ._settings import Settings, Trigger
from ._tracing import consuming, requesting, span_trace, trace_headers
from ._version import __version__
from ._vro import MEDIA_TYPE, execution_body, execution_url

__all__ = [
    "ATTRIBUTES_ID_PREFIX",
    "GAUGE_SECONDS",
    "REPLY_BYTES",
    "Triggers",
    "attributes_id",
    "sign",
    "webhook_id",
]

log = logging.getLogger("adapter.triggers")

#: How a binary-mode ``webhook-id`` begins. A ``%`` followed by ``s`` is never part of a
#: percent-encoded event id (the structured-mode ``webhook-id``), so a receiver tells the two
#: forms apart from the signed id itself and cannot be made to read one mode as the other.
ATTRIBUTES_ID_PREFIX = "%sha256:"
#: The most of a receiver's answer body that is read: enough for the reason of a dead letter.
REPLY_BYTES = 4096
_RETRIED_STATUSES = frozenset({408, 429})
_BODY_SHOWN = 200
_OWS = " \t"
# What the CloudEvents HTTP binding leaves as it is in a header value (section 3.1.3.2):
# printable ASCII but space, double quote and percent.
_HEADER_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
#: How often the gauges of the triggers' groups are read from the bus (two passive declarations a
#: group at RabbitMQ).
GAUGE_SECONDS = 15.0
# At start, how long the daemon waits for its triggers to have joined their groups (so that the
# events sent once it is up are caught), before it goes on and they keep trying on their own.
_JOIN_SECONDS = 10.0


def attributes_id(headers: Iterable[tuple[str, str]]) -> str:
    """The ``webhook-id`` of a binary-mode delivery: ``%sha256:`` and the hex SHA-256 of its
    ``ce-*`` and ``Content-Type`` headers, each as ``name:value`` (name in lowercase, value
    without surrounding spaces or tabs), sorted, joined by newlines. The same for every attempt."""
    lines = sorted(
        name.lower() + ":" + value.strip(_OWS)
        for name, value in headers
        if name.lower().startswith("ce-") or name.lower() == "content-type"
    )
    return ATTRIBUTES_ID_PREFIX + hashlib.sha256("\n".join(lines).encode()).hexdigest()


def webhook_id(event_id: str, headers: dict[str, str]) -> str:
    """The ``webhook-id`` of a delivery whose CloudEvent HTTP message has these headers: in
    binary mode (``ce-*`` headers) their digest (``attributes_id``), in structured mode the
    event id, percent-encoded as a ``ce-id`` header is (a UUID stays as it is)."""
    if any(name.lower().startswith("ce-") for name in headers):
        return attributes_id(headers.items())
    return quote(event_id, safe=_HEADER_SAFE)


def sign(
    webhooks: Sequence[Webhook], message_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The Standard Webhooks headers of a delivery: ``webhook-id``, ``webhook-timestamp`` (Unix
    seconds) and ``webhook-signature``, one ``v1,<base64>`` signature per secret."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    data = body.decode("utf-8")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(w.sign(message_id, moment, data) for w in webhooks),
    }


def _retry_after(headers: Mapping[str, str]) -> float:
    """The receiver's ``Retry-After`` in seconds (delta-seconds or an HTTP date), else 0."""
    value = headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max((moment - datetime.now(UTC)).total_seconds(), 0.0)


async def _reply_head(response: aiohttp.ClientResponse) -> bytes:
    """At most ``REPLY_BYTES`` of the answer's body, as sent (the session never inflates it);
    the rest is never read (leaving the response with its body unread closes the connection
    instead of pooling it)."""
    kept = bytearray()
    while len(kept) < REPLY_BYTES:
        chunk = await response.content.read(REPLY_BYTES - len(kept))
        if not chunk:
            break
        kept += chunk
    return bytes(kept)


def _shown(headers: Mapping[str, str], head: bytes) -> str:
    """The start of an answer's body for a dead letter's reason: one line of printable text, or
    nothing for an encoded body (never decompressed)."""
    if headers.get("content-encoding", "identity").strip().lower() != "identity":
        return ""
    text = head.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()[:_BODY_SHOWN]


def _proxy_for(url: str) -> tuple[str | None, dict[str, str] | None]:
    """The proxy for ``url`` from the environment, as HTTP clients read it (``HTTPS_PROXY`` or
    ``HTTP_PROXY`` by the URL's scheme, else ``ALL_PROXY``; none when ``NO_PROXY`` names the
    host, or the host and port), and the ``Proxy-Authorization`` header of the credentials in
    its URL (UTF-8). Read once per trigger: aiohttp would read the environment again, in a
    thread, for every request."""
    parts = urlsplit(url)
    if parts.hostname and proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None, None
    proxies = getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None, None
    if "://" not in proxy:
        proxy = f"http://{proxy}"  # as curl and httpx read a proxy without a scheme
    proxy_parts = urlsplit(proxy)
    if proxy_parts.username is None:
        return proxy, None
    bare = proxy_parts._replace(netloc=proxy_parts.netloc.rpartition("@")[2]).geturl()
    pair = f"{unquote(proxy_parts.username)}:{unquote(proxy_parts.password or '')}"
    return bare, {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


class _Target(Protocol):
    """Where a trigger's deliveries go and what each request carries."""

    #: Where the POST goes, as the logs and the dead letters' reasons show it.
    url: str

    def request(self, event: Event, now: int) -> tuple[dict[str, str], bytes]:
        """The headers and body of the POST of ``event`` at ``now`` (Unix seconds);
        ``InvalidInput`` if the event cannot be delivered there at all."""
        ...


class _WebhookTarget:
    def __init__(self, trigger: Trigger) -> None:
        self.url = trigger.url
        self.mode = trigger.mode
        self.webhooks = [Webhook(key) for key in trigger.signing_keys()]

    def request(self, event: Event, now: int) -> tuple[dict[str, str], bytes]:
        headers, body = to_http(event, self.mode)
        message_id = webhook_id(event.event_id, headers)
        headers.update(sign(self.webhooks, message_id, now, body))
        return headers, body


class _VroTarget:
    def __init__(self, trigger: Trigger) -> None:
        assert trigger.workflow_id is not None  # the settings require it for a vro target
        self.url = execution_url(trigger.url, trigger.workflow_id)
        self.event_parameters = dict(trigger.event_parameters)
        authorization = trigger.authorization()
        assert authorization is not None
        self.authorization = authorization

    def request(self, event: Event, now: int) -> tuple[dict[str, str], bytes]:
        body = execution_body(event, self.event_parameters)
        # No signature (vRO checks none), but the same webhook-id for every attempt: what a
        # proxy or a workflow that de-duplicates can key on.
        headers = {
            "Content-Type": MEDIA_TYPE,
            "Accept": MEDIA_TYPE,
            "Authorization": self.authorization,
            "webhook-id": quote(event.event_id, safe=_HEADER_SAFE),
        }
        return headers, body


def _target(trigger: Trigger) -> _Target:
    return _VroTarget(trigger) if trigger.target == "vro" else _WebhookTarget(trigger)


class _Runner:
    def __init__(self, trigger: Trigger, client: Client, clock: Callable[[], float]) -> None:
        self.trigger = trigger
        self.client = client
        self.clock = clock
        self.metrics = client.metrics
        self.target = _target(trigger)
        given = trigger.max_attempts
        self.max_attempts = given if given is not None else client.settings.groups.max_attempts
        self.slots = asyncio.Semaphore(trigger.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.joined = asyncio.Event()
        # One aiohttp session, its pool as large as the deliveries under way: httpx spent
        # about three quarters of a delivery's time (bench/run.py groups measures both), and
        # its pool time quadratic in the requests it held (encode/httpcore#1035).
        self._tls = ssl.create_default_context()
        self._session: aiohttp.ClientSession | None = None
        self._proxy, self._proxy_headers = _proxy_for(self.target.url)

    async def run(self) -> None:
        """Deliver the group's events, joining it again after losing the broker."""
        retrying = trigger_join_retrying(
            lambda state: log.warning(
                "trigger %r: cannot deliver (%s); trying again",
                self.trigger.name,
                failure_of(state) or "?",
            )
        )
        async for attempt in retrying:
            with attempt:
                await self._consume()

    async def _consume(self) -> None:
        trigger = self.trigger
        subscription = self.client.subscribe(
            trigger.pattern,
            group=trigger.name,
            kind=trigger.kind,
            prefetch=trigger.max_in_flight,
            max_attempts=trigger.max_attempts,
            filters=trigger.filters,
        )
        async with subscription as deliveries:
            self.joined.set()
            self.metrics.trigger_running.labels(trigger.name).set(1)
            log.info(
                "trigger %r: delivering %s events matching %r to %s",
                trigger.name,
                trigger.kind,
                trigger.pattern,
                self.target.url,
            )
            try:
                async for delivery in deliveries:
                    await self.slots.acquire()
                    task = asyncio.create_task(
                        self._deliver(delivery), name=f"trigger-{trigger.name}"
                    )
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            finally:
                self.metrics.trigger_running.labels(trigger.name).set(0)

    def _http(self) -> aiohttp.ClientSession:
        """The trigger's session, made in the running loop on first use."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # The semaphore bounds the deliveries, hence the connections, to max_in_flight.
                connector=aiohttp.TCPConnector(limit=self.trigger.max_in_flight, ssl=self._tls),
                timeout=aiohttp.ClientTimeout(total=self.trigger.timeout),
                # The answer is read raw, never inflated (_reply_head): ask for it
                # uncompressed, so that its start can be shown in a dead letter's reason.
                auto_decompress=False,
                headers={
                    "User-Agent": f"customevent-bridge/{__version__}",
                    "Accept-Encoding": "identity",
                },
                # A receiver's cookies are not kept, nor sent to the next delivery.
                cookie_jar=aiohttp.DummyCookieJar(),
                # The proxy of the environment is read once (_proxy_for), netrc never.
                trust_env=False,
            )
        return self._session

    async def _deliver(self, delivery: Delivery) -> None:
        name = self.trigger.name
        self.metrics.trigger_in_flight.labels(name).inc()
        try:
            outcome, reason = await self._traced_post(self._http(), delivery)
            self.metrics.trigger_deliveries.labels(name, outcome).inc()
            if outcome != "ok":
                self._log_failure(delivery, outcome, reason)
        except BusError as exc:
            # Settling needs the broker: the delivery comes again once it is back.
            log.warning("trigger %r: could not settle %s: %s", name, delivery.event.event_id, exc)
        except Exception as exc:
            # A failure of the bridge's own (an HTTP client's surprise): retried like a network
            # error, never left unsettled, which would hold its message and a slot for good.
            log.exception("trigger %r: delivering %s failed", name, delivery.event.event_id)
            if delivery.settled is None:
                with contextlib.suppress(BusError):
                    await self._retry(delivery, f"the delivery failed: {type(exc).__name__}")
        finally:
            self.metrics.trigger_in_flight.labels(name).dec()
            self.slots.release()

    def _log_failure(self, delivery: Delivery, outcome: str, reason: str) -> None:
        trigger = self.trigger
        event = delivery.event
        what = "retried later" if outcome == "retry" else "dead-lettered"
        log.warning(
            "trigger %r: event %r (%s), attempt %d of %d: %s; %s",
            trigger.name,
            event.event_id,
            event.name,
            delivery.attempt,
            self.max_attempts,
            reason,
            what,
            extra={
                "trigger": trigger.name,
                "event_id": event.event_id,
                "event_name": event.name,
                "attempt": delivery.attempt,
                "outcome": outcome,
                "reason": reason,
            },
        )

    async def _retry(self, delivery: Delivery, reason: str, at_least: float = 0.0) -> str:
        """Retry; the outcome: ``retry``, or ``dead_letter`` when the attempts are spent."""
        await delivery.retry(reason, at_least=at_least)
        return "dead_letter" if delivery.settled == "dead_letter" else "retry"

    async def _traced_post(
        self, http: aiohttp.ClientSession, delivery: Delivery
    ) -> tuple[str, str]:
        """``_post`` in a process span and a CLIENT span, whose context the request's
        ``traceparent`` header carries; tracing off, both are the event's own trace."""
        event = delivery.event
        bus = self.client.bus
        with (
            consuming(
                event,
                system=bus.messaging_system,
                destination=bus.destination,
                attributes={
                    "messaging.consumer.group.name": self.trigger.name,
                    "messaging.message.delivery_count": delivery.attempt,
                },
            ),
            requesting("POST", self.target.url) as span,
        ):
            outcome, reason = await self._post(http, delivery, trace_headers(*span_trace(span)))
            if span.is_recording():
                span.set_attribute("customevent.webhook.outcome", outcome)
            return outcome, reason

    async def _post(
        self, http: aiohttp.ClientSession, delivery: Delivery, traced: dict[str, str]
    ) -> tuple[str, str]:
        """Deliver once and settle; the outcome and, unless ``ok``, why."""
        trigger = self.trigger
        url = self.target.url
        try:
            headers, body = self.target.request(delivery.event, int(self.clock()))
        except InvalidInput as exc:
            reason = f"cannot be delivered to {url}: {exc}"
            await delivery.dead_letter(reason)
            return "dead_letter", reason
        # The hop's trace context, outside the signature; the event's own is signed (its
        # ``ce-traceparent`` header in binary mode, its ``traceparent`` attribute in the body).
        headers.update(traced)
        started = time.perf_counter()
        try:
            # The whole exchange, however the receiver paces it (a byte a second included).
            async with (
                asyncio.timeout(trigger.timeout),
                http.post(
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy,
                    proxy_headers=self._proxy_headers,
                ) as response,
            ):
                head = await _reply_head(response)
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            reason = f"{url} did not answer within {trigger.timeout:g} s"
            return await self._retry(delivery, reason), reason
        except aiohttp.ClientError as exc:
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            reason = f"{url} could not be reached ({cause})"
            return await self._retry(delivery, reason), reason
        finally:
            self.metrics.trigger_seconds.labels(trigger.name).observe(time.perf_counter() - started)
        status = response.status
        if 200 <= status < 300:
            await delivery.ack()
            return "ok", ""
        detail = f"{url} answered {status}"
        text = _shown(response.headers, head)
        if text:
            detail += f": {text}"
        if status in _RETRIED_STATUSES or status >= 500:
            return await self._retry(delivery, detail, _retry_after(response.headers)), detail
        await delivery.dead_letter(detail)
        return "dead_letter", detail

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class Triggers:
    """The daemon's webhook triggers: ``async with Triggers(settings, client):`` runs one task per
    trigger, and stops them (and their deliveries under way, which come again) on exit.
    ``clock`` gives the ``webhook-timestamp`` of each attempt (Unix seconds)."""

    def __init__(
        self,
        settings: Settings,
        client: Client,
        *,
        clock: Callable[[], float] = time.time,
        gauge_seconds: float = GAUGE_SECONDS,
    ) -> None:
        self._client = client
        self._runners = [_Runner(trigger, client, clock) for trigger in settings.triggers]
        self._tasks: list[asyncio.Task[None]] = []
        self._gauge_seconds = gauge_seconds
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Self:
        for runner in self._runners:
            runner.metrics.trigger_running.labels(runner.trigger.name).set(0)
            self._tasks.append(
                asyncio.create_task(self._supervise(runner), name=f"trigger-{runner.trigger.name}")
            )
        try:
            async with asyncio.timeout(_JOIN_SECONDS):
                await asyncio.gather(*(runner.joined.wait() for runner in self._runners))
        except TimeoutError:
            waiting = [r.trigger.name for r in self._runners if not r.joined.is_set()]
            log.warning("triggers %s have not joined their groups yet; they keep trying", waiting)
        if self._runners:
            self._tasks.append(asyncio.create_task(self._gauges(), name="trigger-group-gauges"))
        return self

    async def _gauges(self) -> None:
        """Keep the depth and dead-letter gauges of the triggers' groups; a group that cannot
        be read now (the broker away, not joined yet) keeps its last values."""
        # Ends on ``_stopping`` as well as on a cancel: a cancel that lands inside a broker call
        # can be swallowed by the AMQP client (seen: the task left "cancelling" in its sleep,
        # and the daemon's exit waiting on it for good).
        while not self._stopping.is_set():
            for runner in self._runners:
                name = runner.trigger.name
                try:
                    info = await self._client.group_info(name, bindings=False)
                except AdapterError as exc:
                    log.debug("group %r: gauges not read: %s", name, exc)
                    continue
                self._client.metrics.group_depth.labels(name).set(info.depth)
                self._client.metrics.group_dead_letters.labels(name).set(info.dead_letters)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._gauge_seconds)

    async def _supervise(self, runner: _Runner) -> None:
        # A bug in one trigger must not end the others, nor go unnoticed. ``run`` returns only
        # by raising: its group subscription is read for good.
        retrying = trigger_restart_retrying(
            lambda state: log.error(
                "trigger %r stopped on an error; restarting",
                runner.trigger.name,
                exc_info=failure_of(state),
            )
        )
        await retrying(runner.run)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for runner in self._runners:
            await runner.close()
