"""Every retry of the package, in one place: the backoff constants and one tenacity policy per use.

A ``Backoff`` is one exponential ladder (``first`` seconds after the first failure, doubling up to
``maximum``, plus up to ``jitter`` seconds at random so that replicas spread out); its ``delay``
is a plain function of the number of failures, which both its tenacity wait and the group
redelivery ladder read. Each ``*_retrying`` function gives the ``AsyncRetrying`` of one use; the
caller supplies only what is its own (what it logs and counts before each pause). ``POLICIES``
describes them all for the docs (docs/operate.md, "Retries").

Imports no sibling but ``_exceptions``, so that any module can use it without an import cycle.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
)
from tenacity.wait import wait_base

from ._exceptions import BusError, BusUnavailable, PublishRejected

__all__ = [
    "BROKER_CONNECT_FIRST",
    "BROKER_CONNECT_JITTER",
    "EGRESS_BIND",
    "EGRESS_RESTART",
    "INGRESS_PUBLISH",
    "INGRESS_RETRIED",
    "MQTT_AFTER_LOSS",
    "MQTT_RECONNECT",
    "POLICIES",
    "TRIGGER_JOIN",
    "TRIGGER_RESTART",
    "WAIT_REBIND",
    "WAIT_REBIND_ATTEMPTS",
    "Backoff",
    "RetryPolicy",
    "RetryRow",
    "broker_connect_backoff",
    "broker_connect_retrying",
    "egress_bind_retrying",
    "egress_restart_retrying",
    "failure_of",
    "ingress_publish_retrying",
    "mqtt_reconnect_retrying",
    "retry_after_first_failure",
    "trigger_join_retrying",
    "trigger_restart_retrying",
    "wait_rebind_retrying",
]

BeforeSleep = Callable[[RetryCallState], None]
T = TypeVar("T")


class Backoff(wait_base):
    """A tenacity wait: ``first`` seconds after the first failure, doubling up to ``maximum``,
    plus a random ``0 .. jitter`` seconds."""

    def __init__(self, first: float, maximum: float, jitter: float = 0.0) -> None:
        self.first = first
        self.maximum = maximum
        self.jitter = jitter

    def delay(self, failures: int) -> float:
        """The pause after ``failures`` failed attempts (1 for the first), jitter left out."""
        # The shift is bounded: a retry loop that runs for days must not overflow a float.
        return min(self.first * (1 << min(max(failures, 1) - 1, 62)), self.maximum)

    def __call__(self, retry_state: RetryCallState) -> float:
        pause = self.delay(retry_state.attempt_number)
        return pause + random.uniform(0, self.jitter) if self.jitter else pause

    def __repr__(self) -> str:
        return f"Backoff(first={self.first}, maximum={self.maximum}, jitter={self.jitter})"

    def describe(self) -> str:
        """The ladder in words, for the docs."""
        if self.first >= self.maximum:
            text = f"{_seconds(self.maximum)} each time"
        else:
            text = f"{_seconds(self.first)}, doubling up to {_seconds(self.maximum)}"
        return f"{text}, plus up to {_seconds(self.jitter)} at random" if self.jitter else text


def _seconds(value: float) -> str:
    return f"{value:g} s"


# -- the constants -----------------------------------------------------------------------------

# The MQTT connection: 1 s between attempts, doubling up to 30 s, plus jitter so that replicas
# spread out; and a pause after a loss before the first attempt, so that a broker that ends every
# connection (two bridges with one client id take it over from each other) is not hammered.
MQTT_RECONNECT = Backoff(1.0, 30.0, jitter=1.0)
MQTT_AFTER_LOSS = 1.0
# A device message the bus did not confirm: again after 0.1 s, doubling up to 2 s; short, since
# the message is held unacknowledged meanwhile.
INGRESS_PUBLISH = Backoff(0.1, 2.0)
INGRESS_RETRIED: tuple[type[Exception], ...] = (BusUnavailable, PublishRejected)
# An egress subscription that cannot bind while the bus is down: again after 0.1 s, up to 2 s.
EGRESS_BIND = Backoff(0.1, 2.0)
# An egress task that failed: restarted after 0.5 s, doubling up to 30 s, with jitter.
EGRESS_RESTART = Backoff(0.5, 30.0, jitter=0.5)
# A trigger that cannot join its group (the broker away): again after 0.5 s, up to 30 s.
TRIGGER_JOIN = Backoff(0.5, 30.0)
# A trigger stopped by an unexpected error: restarted after 5 s each time.
TRIGGER_RESTART = Backoff(5.0, 5.0)
# A wait queue bound again after a reconnect, or after the broker cancelled its consumer (its
# node lost in a cluster: the queue is removed a moment after aio-pika restored it): again after
# 0.2 s, doubling up to 2 s, 6 attempts in all (about 5 s). A link that is down ends it at once:
# the next reconnect binds the queue again.
WAIT_REBIND = Backoff(0.2, 2.0)
WAIT_REBIND_ATTEMPTS = 6
# RabbitMQ's first connection: 0.5 s, doubling up to ``amqp.connect_backoff_max``, with jitter,
# for ``amqp.connect_attempts`` attempts.
BROKER_CONNECT_FIRST = 0.5
BROKER_CONNECT_JITTER = 0.5


def broker_connect_backoff(longest: float) -> Backoff:
    """The pauses between first-connection attempts, up to ``longest`` (a setting)."""
    return Backoff(BROKER_CONNECT_FIRST, longest, jitter=BROKER_CONNECT_JITTER)


# -- the policies ------------------------------------------------------------------------------


def failure_of(state: RetryCallState) -> BaseException | None:
    """The exception the attempt that just ended raised, if any."""
    return state.outcome.exception() if state.outcome is not None else None


def mqtt_reconnect_retrying(before_sleep: BeforeSleep) -> AsyncRetrying:
    """Connecting to the MQTT broker: every failure is retried (a broker that is down, a refusal,
    a TLS error alike), for as long as the bridge runs."""
    return AsyncRetrying(
        wait=MQTT_RECONNECT, retry=retry_if_exception_type(Exception), before_sleep=before_sleep
    )


def ingress_publish_retrying(
    abandoned: Callable[[], bool], before_sleep: BeforeSleep
) -> AsyncRetrying:
    """Publishing a device message while the bus does not confirm; it gives ``False`` once the
    message is ``abandoned`` (its MQTT connection lost: the broker delivers it again anyway)."""
    return AsyncRetrying(
        wait=INGRESS_PUBLISH,
        retry=retry_if_exception_type(INGRESS_RETRIED),
        # From the second failure on: the first is always counted, logged and waited out.
        stop=lambda state: state.attempt_number > 1 and abandoned(),
        before_sleep=before_sleep,
        retry_error_callback=lambda _: False,
    )


def egress_bind_retrying(before_sleep: BeforeSleep) -> AsyncRetrying:
    """Binding an egress subscription while the bus is down."""
    return AsyncRetrying(
        wait=EGRESS_BIND, retry=retry_if_exception_type(BusUnavailable), before_sleep=before_sleep
    )


def egress_restart_retrying(before_sleep: BeforeSleep) -> AsyncRetrying:
    """Restarting an egress task after any failure."""
    return AsyncRetrying(
        wait=EGRESS_RESTART, retry=retry_if_exception_type(Exception), before_sleep=before_sleep
    )


def trigger_join_retrying(before_sleep: BeforeSleep) -> AsyncRetrying:
    """Joining a trigger's group again after a bus error (the broker away)."""
    return AsyncRetrying(
        wait=TRIGGER_JOIN, retry=retry_if_exception_type(BusError), before_sleep=before_sleep
    )


def trigger_restart_retrying(before_sleep: BeforeSleep) -> AsyncRetrying:
    """Restarting a trigger stopped by any other error: a bug in one trigger must not end the
    others."""
    return AsyncRetrying(
        wait=TRIGGER_RESTART, retry=retry_if_exception_type(Exception), before_sleep=before_sleep
    )


def wait_rebind_retrying(connected: Callable[[], bool], before_sleep: BeforeSleep) -> AsyncRetrying:
    """Declaring and binding a wait queue again: a bus error is retried while the link is
    ``connected``, ``WAIT_REBIND_ATTEMPTS`` attempts at most; the last error is raised."""
    return AsyncRetrying(
        stop=lambda state: state.attempt_number >= WAIT_REBIND_ATTEMPTS or not connected(),
        wait=WAIT_REBIND,
        retry=retry_if_exception_type(BusError),
        before_sleep=before_sleep,
        reraise=True,
    )


def broker_connect_retrying(
    attempts: int,
    longest: float,
    fatal: tuple[type[BaseException], ...],
    before_sleep: BeforeSleep,
) -> AsyncRetrying:
    """RabbitMQ's first connection: ``attempts`` attempts, pauses up to ``longest``; an error of
    the ``fatal`` types (refused credentials) ends it at once. The last error is raised."""
    return AsyncRetrying(
        stop=stop_after_attempt(attempts),
        wait=broker_connect_backoff(longest),
        retry=retry_if_not_exception_type(fatal),
        before_sleep=before_sleep,
        reraise=True,
    )


async def retry_after_first_failure(
    retrying: AsyncRetrying, failure: BaseException, fn: Callable[..., Any], *args: Any
) -> T:
    """Go on with ``retrying`` as though its first attempt had been made and raised ``failure``:
    the caller made that attempt bare, because building and entering an ``AsyncRetrying`` costs
    30 to 110 µs (tenacity 9.2, a loaded 2-core machine; a bare await well under 1 µs) and nearly
    every first attempt succeeds."""
    replayed = False

    async def attempt() -> T:
        nonlocal replayed
        if not replayed:
            replayed = True
            raise failure
        result: T = await fn(*args)
        return result

    result: T = await retrying(attempt)
    return result


class RetryPolicy:
    """The delay before a group's retried delivery comes again: ``retry_initial``, doubling up to
    ``retry_max`` (``Backoff.delay``), in whole milliseconds (each distinct delay is a queue at
    the broker, so the ladder is short)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.backoff = Backoff(initial, maximum)

    def delay_ms(self, attempt: int, *, at_least: float = 0.0) -> int:
        """The delay after failed attempt ``attempt`` (1-based), and not less than ``at_least``
        seconds (a receiver's ``Retry-After``), rounded up to a step of the ladder."""
        step = max(attempt, 1)
        while True:
            seconds = self.backoff.delay(step)
            if seconds >= at_least or seconds >= self.backoff.maximum:
                return round(seconds * 1000)
            step += 1


# -- for the docs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryRow:
    """One row of the docs' table of retries."""

    use: str
    retried: str
    pauses: str
    stop: str


POLICIES: tuple[RetryRow, ...] = (
    RetryRow(
        "RabbitMQ, first connection",
        "a round of the `amqp.url` nodes that all failed",
        f"{_seconds(BROKER_CONNECT_FIRST)}, doubling up to `amqp.connect_backoff_max`, "
        f"plus up to {_seconds(BROKER_CONNECT_JITTER)} at random",
        "after `amqp.connect_attempts`; at once on refused credentials or virtual host",
    ),
    RetryRow(
        "RabbitMQ, a wait queue bound again",
        "a bus error after a reconnect, or after the broker cancelled the queue's consumer",
        WAIT_REBIND.describe(),
        f"after {WAIT_REBIND_ATTEMPTS} attempts, or at once while disconnected "
        "(the next reconnect binds it again)",
    ),
    RetryRow(
        "group redelivery (`retry`)",
        "a delivery its consumer retried, held by the broker",
        "`groups.retry_initial`, doubling up to `groups.retry_max`, never "
        "sooner than a receiver's `Retry-After`",
        "dead letter after `max_attempts`",
    ),
    RetryRow(
        "trigger, joining its group",
        "a bus error (the broker away)",
        TRIGGER_JOIN.describe(),
        "never",
    ),
    RetryRow(
        "trigger, restart",
        "any other error of a trigger",
        TRIGGER_RESTART.describe(),
        "never",
    ),
    RetryRow(
        "MQTT connection",
        "any failed connection attempt",
        f"{MQTT_RECONNECT.describe()}; the first attempt after a loss waits "
        f"{_seconds(MQTT_AFTER_LOSS)}",
        "never",
    ),
    RetryRow(
        "MQTT ingress, publishing",
        "a device message the bus did not confirm",
        INGRESS_PUBLISH.describe(),
        "once its MQTT connection is lost (the broker delivers it again)",
    ),
    RetryRow(
        "MQTT egress, binding",
        "a subscription while the bus is down",
        EGRESS_BIND.describe(),
        "never",
    ),
    RetryRow(
        "MQTT egress, restart",
        "any failure of an egress task",
        EGRESS_RESTART.describe(),
        "never",
    ),
)
