"""Webhook triggers of the daemon (``[[triggers]]``): each is a group, named after the trigger,
whose events are POSTed to an HTTP service as CloudEvents 1.0 (binary mode, or structured),
signed ``X-CustomEvent-Signature: sha256=<hex HMAC-SHA256 of the body>``.

A 2xx answer acknowledges the event. 408, 429, 5xx and network errors (a timeout included)
retry it after the group's backoff, never sooner than the receiver's ``Retry-After``; any other
answer dead-letters it at once. Each trigger has its own HTTP client and at most
``max_in_flight`` deliveries under way, so a receiver that is down or slow holds up neither the
daemon's sends nor the other triggers. A trigger whose group cannot be joined (the broker away)
tries again with a backoff, and says so in its ``customevent_trigger_running`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import hmac
import logging
import ssl
import time
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import httpx
from prometheus_client import Counter, Gauge, Histogram
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from ._client import Client
from ._cloudevents import to_http
from ._exceptions import BusError
from ._groups import Delivery
from ._settings import Settings, Trigger
from ._version import __version__

__all__ = ["SIGNATURE_HEADER", "Triggers", "sign"]

log = logging.getLogger("adapter.triggers")

SIGNATURE_HEADER = "X-CustomEvent-Signature"
_RETRIED_STATUSES = frozenset({408, 429})
_BODY_SHOWN = 200
# At start, how long the daemon waits for its triggers to have joined their groups (so that the
# events sent once it is up are caught), before it goes on and they keep trying on their own.
_JOIN_SECONDS = 10.0

DELIVERIES = Counter(
    "customevent_trigger_deliveries",
    "Webhook deliveries by trigger and outcome (ok, retry, dead_letter).",
    ["trigger", "outcome"],
)
SECONDS = Histogram(
    "customevent_trigger_seconds",
    "Time from a webhook POST to its answer, by trigger.",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
IN_FLIGHT = Gauge(
    "customevent_trigger_in_flight", "Webhook deliveries under way, by trigger.", ["trigger"]
)
RUNNING = Gauge(
    "customevent_trigger_running",
    "1 while the trigger has joined its group and delivers, else 0.",
    ["trigger"],
)


def sign(secret: bytes, body: bytes) -> str:
    """The value of ``X-CustomEvent-Signature`` for a body: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def _retry_after(response: httpx.Response) -> float:
    """The receiver's ``Retry-After`` in seconds (delta-seconds or an HTTP date), else 0."""
    value = response.headers.get("retry-after", "").strip()
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


class _Runner:
    def __init__(self, trigger: Trigger, client: Client) -> None:
        self.trigger = trigger
        self.client = client
        self.secret = trigger.read_secret()
        self.slots = asyncio.Semaphore(trigger.max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.joined = asyncio.Event()
        # One HTTP client per delivery under way, each with one connection: httpcore's pool
        # spends time quadratic in the requests it holds (encode/httpcore#1035), which made 16
        # deliveries at once slower than one; a pool per lane never holds more than one. They
        # share one TLS context (building one costs a quarter of a second).
        self._tls = ssl.create_default_context()
        self._idle: list[httpx.AsyncClient] = []
        self._lanes: list[httpx.AsyncClient] = []

    async def run(self) -> None:
        """Deliver the group's events, joining it again after losing the broker."""
        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=0.5, max=30),
            retry=retry_if_exception_type(BusError),
            before_sleep=lambda state: log.warning(
                "trigger %r: cannot deliver (%s); trying again",
                self.trigger.name,
                state.outcome.exception() if state.outcome else "?",
            ),
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
        )
        async with subscription as deliveries:
            self.joined.set()
            RUNNING.labels(trigger.name).set(1)
            log.info(
                "trigger %r: delivering %s events matching %r to %s",
                trigger.name,
                trigger.kind,
                trigger.pattern,
                trigger.url,
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
                RUNNING.labels(trigger.name).set(0)

    def _lane(self) -> httpx.AsyncClient:
        if self._idle:
            return self._idle.pop()
        lane = httpx.AsyncClient(
            timeout=httpx.Timeout(self.trigger.timeout),
            follow_redirects=False,
            verify=self._tls,
            headers={"User-Agent": f"customevent-bridge/{__version__}"},
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        self._lanes.append(lane)
        return lane

    async def _deliver(self, delivery: Delivery) -> None:
        name = self.trigger.name
        IN_FLIGHT.labels(name).inc()
        lane = self._lane()  # the semaphore bounds the lanes to max_in_flight
        try:
            outcome = await self._post(lane, delivery)
            DELIVERIES.labels(name, outcome).inc()
        except BusError as exc:
            # Settling needs the broker: the delivery comes again once it is back.
            log.warning("trigger %r: could not settle %s: %s", name, delivery.event.event_id, exc)
        finally:
            self._idle.append(lane)
            IN_FLIGHT.labels(name).dec()
            self.slots.release()

    async def _post(self, http: httpx.AsyncClient, delivery: Delivery) -> str:
        trigger = self.trigger
        event = delivery.event
        headers, body = to_http(event, trigger.mode)
        headers[SIGNATURE_HEADER] = sign(self.secret, body)
        started = time.perf_counter()
        try:
            response = await http.post(trigger.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await delivery.retry(f"{trigger.url} could not be reached ({reason})")
            return "retry"
        finally:
            SECONDS.labels(trigger.name).observe(time.perf_counter() - started)
        status = response.status_code
        if 200 <= status < 300:
            await delivery.ack()
            return "ok"
        detail = f"{trigger.url} answered {status}"
        text = response.text.strip()[:_BODY_SHOWN]
        if text:
            detail += f": {text}"
        if status in _RETRIED_STATUSES or status >= 500:
            await delivery.retry(detail, at_least=_retry_after(response))
            return "retry"
        await delivery.dead_letter(detail)
        return "dead_letter"

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for lane in self._lanes:
            await lane.aclose()
        self._lanes.clear()
        self._idle.clear()


class Triggers:
    """The daemon's webhook triggers: ``async with Triggers(settings, client):`` runs one task per
    trigger, and stops them (and their deliveries under way, which come again) on exit."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self._runners = [_Runner(trigger, client) for trigger in settings.triggers]
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        for runner in self._runners:
            RUNNING.labels(runner.trigger.name).set(0)
            self._tasks.append(
                asyncio.create_task(self._supervise(runner), name=f"trigger-{runner.trigger.name}")
            )
        try:
            async with asyncio.timeout(_JOIN_SECONDS):
                await asyncio.gather(*(runner.joined.wait() for runner in self._runners))
        except TimeoutError:
            waiting = [r.trigger.name for r in self._runners if not r.joined.is_set()]
            log.warning("triggers %s have not joined their groups yet; they keep trying", waiting)
        return self

    async def _supervise(self, runner: _Runner) -> None:
        # A bug in one trigger must not end the others, nor go unnoticed.
        while True:
            try:
                await runner.run()
            except Exception:
                log.exception("trigger %r stopped on an error; restarting", runner.trigger.name)
                await asyncio.sleep(5)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for runner in self._runners:
            await runner.close()
