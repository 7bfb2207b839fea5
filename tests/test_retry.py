"""adapter/_retry.py: every backoff of the package and the tenacity policy of each use."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tenacity import AsyncRetrying, RetryCallState, wait_exponential, wait_random

from adapter import _retry
from adapter._exceptions import BusError, BusUnavailable, PublishRejected
from adapter._retry import (
    EGRESS_BIND,
    EGRESS_RESTART,
    INGRESS_PUBLISH,
    MQTT_RECONNECT,
    TRIGGER_JOIN,
    TRIGGER_RESTART,
    Backoff,
    RetryPolicy,
    broker_connect_backoff,
    broker_connect_retrying,
    egress_bind_retrying,
    failure_of,
    ingress_publish_retrying,
    retry_after_first_failure,
    trigger_join_retrying,
    trigger_restart_retrying,
)

PACKAGE = Path(__file__).resolve().parents[1] / "adapter"


def _state(attempt: int) -> RetryCallState:
    state = RetryCallState(AsyncRetrying(), None, (), {})
    state.attempt_number = attempt
    return state


def _recording(retrying: AsyncRetrying) -> list[float]:
    """Make ``retrying`` note its pauses instead of sleeping them."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    retrying.sleep = sleep
    return pauses


def _failing(
    failures: list[BaseException], result: object = "done"
) -> tuple[Callable[[], Awaitable[object]], list[int]]:
    """A call that raises each of ``failures`` in turn, then gives ``result``."""
    calls = [0]

    async def call() -> object:
        calls[0] += 1
        if failures:
            raise failures.pop(0)
        return result

    return call, calls


def _seq(backoff: Backoff, count: int) -> list[float]:
    return [backoff.delay(n) for n in range(1, count + 1)]


# -- the ladders ---------------------------------------------------------------------------------


def test_the_ingress_retries_after_a_tenth_then_doubles_to_two_seconds() -> None:
    # As before the change: a first retry after 0.1 s, then 0.2 s doubling up to 2 s.
    assert _seq(INGRESS_PUBLISH, 7) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    assert _seq(EGRESS_BIND, 7) == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


def test_the_other_ladders() -> None:
    assert _seq(TRIGGER_JOIN, 8) == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert _seq(TRIGGER_RESTART, 3) == [5, 5, 5]
    assert _seq(MQTT_RECONNECT, 7) == [1, 2, 4, 8, 16, 30, 30]
    assert _seq(EGRESS_RESTART, 8) == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert _seq(broker_connect_backoff(8.0), 6) == [0.5, 1, 2, 4, 8, 8]


@pytest.mark.parametrize(
    ("backoff", "before"),
    [
        (INGRESS_PUBLISH, None),
        (EGRESS_BIND, wait_exponential(multiplier=0.1, max=2.0)),
        (TRIGGER_JOIN, wait_exponential(multiplier=0.5, max=30)),
        (MQTT_RECONNECT, wait_exponential(multiplier=1, min=1, max=30)),
        (EGRESS_RESTART, wait_exponential(multiplier=0.5, max=30.0)),
        (broker_connect_backoff(8.0), wait_exponential(multiplier=0.5, max=8.0)),
    ],
)
def test_each_ladder_is_the_tenacity_wait_it_replaced(
    backoff: Backoff, before: wait_exponential | None
) -> None:
    if before is None:  # the ingress: a 0.1 s sleep, then wait_exponential(0.2, max=2) from there
        later = wait_exponential(multiplier=0.2, max=2.0)
        expected = [0.1] + [later(_state(n)) for n in range(1, 80)]
    else:
        expected = [before(_state(n)) for n in range(1, 81)]
    assert [backoff.delay(n) for n in range(1, 81)] == pytest.approx(expected)


def test_jitter_stays_within_its_bound_and_varies() -> None:
    for backoff in (MQTT_RECONNECT, EGRESS_RESTART, broker_connect_backoff(8.0)):
        for attempt in (1, 3, 40):
            pauses = {backoff(_state(attempt)) for _ in range(50)}
            low = backoff.delay(attempt)
            assert all(low <= pause <= low + backoff.jitter for pause in pauses)
            assert len(pauses) > 1
    assert {TRIGGER_JOIN(_state(2)) for _ in range(20)} == {1.0}


def test_a_backoff_adds_like_any_tenacity_wait() -> None:
    combined = Backoff(1.0, 4.0) + wait_random(0, 0)
    assert combined(_state(3)) == 4.0


def test_a_loop_that_runs_for_days_does_not_overflow() -> None:
    assert MQTT_RECONNECT.delay(100_000) == 30.0
    assert Backoff(1e-300, 1e300).delay(5000) == pytest.approx(1e-300 * 2**62)


def test_the_group_redelivery_ladder() -> None:
    policy = RetryPolicy(1.0, 300.0)
    assert [policy.delay_ms(n) for n in range(1, 11)] == [
        1000,
        2000,
        4000,
        8000,
        16000,
        32000,
        64000,
        128000,
        256000,
        300000,
    ]
    assert policy.delay_ms(0) == 1000
    # Retry-After: the first step of the ladder not shorter than it, or the longest.
    assert policy.delay_ms(1, at_least=3.0) == 4000
    assert policy.delay_ms(5, at_least=3.0) == 16000
    assert policy.delay_ms(1, at_least=10_000.0) == 300000
    assert RetryPolicy(0.2, 0.4).delay_ms(9) == 400
    assert RetryPolicy(0.2, 5.0).backoff.delay(3) == pytest.approx(0.8)


# -- the policies --------------------------------------------------------------------------------


async def test_the_ingress_policy_goes_on_from_a_bare_first_failure() -> None:
    seen: list[BaseException | None] = []
    retrying = ingress_publish_retrying(
        abandoned=lambda: False, before_sleep=lambda state: seen.append(failure_of(state))
    )
    pauses = _recording(retrying)
    first = BusUnavailable("down")
    second = PublishRejected("nack")
    call, calls = _failing([second])
    assert await retry_after_first_failure(retrying, first, call) == "done"
    # The failure made outside counts as the first attempt: logged, then 0.1 s, then 0.2 s.
    assert seen == [first, second]
    assert pauses == [0.1, 0.2]
    assert calls == [2]


async def test_the_ingress_policy_gives_false_once_abandoned_but_waits_out_the_first() -> None:
    abandoned = [True]
    retrying = ingress_publish_retrying(abandoned=lambda: abandoned[0], before_sleep=lambda _: None)
    pauses = _recording(retrying)
    call, calls = _failing([BusUnavailable("down")] * 3)
    assert await retry_after_first_failure(retrying, BusUnavailable("down"), call) is False
    assert pauses == [0.1]
    assert calls == [1]


async def test_the_ingress_policy_retries_only_what_the_bus_may_confirm_later() -> None:
    retrying = ingress_publish_retrying(abandoned=lambda: False, before_sleep=lambda _: None)
    pauses = _recording(retrying)
    call, _ = _failing([ValueError("a bug")])
    with pytest.raises(ValueError, match="a bug"):
        await retry_after_first_failure(retrying, BusUnavailable("down"), call)
    assert pauses == [0.1]


async def test_the_broker_connect_policy_stops_after_its_attempts_with_the_last_error() -> None:
    announced: list[int] = []
    retrying = broker_connect_retrying(
        3, 8.0, fatal=(PermissionError,), before_sleep=lambda s: announced.append(s.attempt_number)
    )
    pauses = _recording(retrying)
    call, calls = _failing([OSError("one"), OSError("two"), OSError("three"), OSError("four")])
    with pytest.raises(OSError, match="three"):
        await retrying(call)
    assert calls == [3]
    assert announced == [1, 2]
    assert 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 1.5


async def test_the_broker_connect_policy_ends_at_once_on_a_fatal_error() -> None:
    retrying = broker_connect_retrying(
        6, 8.0, fatal=(PermissionError,), before_sleep=lambda _: None
    )
    pauses = _recording(retrying)
    call, calls = _failing([PermissionError("refused")])
    with pytest.raises(PermissionError):
        await retrying(call)
    assert (calls, pauses) == ([1], [])


async def test_the_trigger_policies_retry_their_errors_and_let_others_through() -> None:
    join = trigger_join_retrying(lambda _: None)
    pauses = _recording(join)
    call, _ = _failing([BusUnavailable("away"), BusError("closed")])
    assert await join(call) == "done"
    assert pauses == [0.5, 1.0]
    call, _ = _failing([RuntimeError("a bug")])
    with pytest.raises(RuntimeError):
        await trigger_join_retrying(lambda _: None)(call)

    restart = trigger_restart_retrying(lambda _: None)
    pauses = _recording(restart)
    call, _ = _failing([RuntimeError("a bug"), KeyError("another")])
    assert await restart(call) == "done"
    assert pauses == [5.0, 5.0]


async def test_a_wait_queue_is_bound_again_a_few_times_and_only_while_connected() -> None:
    connected = [True]
    rebind = _retry.wait_rebind_retrying(lambda: connected[0], lambda _: None)
    pauses = _recording(rebind)
    call, _ = _failing([BusUnavailable("node down"), BusError("404")])
    assert await rebind(call) == "done"
    assert pauses == [0.2, 0.4]

    rebind = _retry.wait_rebind_retrying(lambda: True, lambda _: None)
    pauses = _recording(rebind)
    call, calls = _failing([BusUnavailable("down")] * 10)
    with pytest.raises(BusUnavailable):
        await rebind(call)
    assert calls == [_retry.WAIT_REBIND_ATTEMPTS]
    assert pauses == [0.2, 0.4, 0.8, 1.6, 2.0]

    # The link went down: the next reconnect binds it again, so no retry meanwhile.
    connected[0] = False
    rebind = _retry.wait_rebind_retrying(lambda: connected[0], lambda _: None)
    pauses = _recording(rebind)
    call, calls = _failing([BusUnavailable("down")] * 3)
    with pytest.raises(BusUnavailable):
        await rebind(call)
    assert (calls, pauses) == ([1], [])

    call, _ = _failing([RuntimeError("a bug")])
    with pytest.raises(RuntimeError):
        await _retry.wait_rebind_retrying(lambda: True, lambda _: None)(call)


@pytest.mark.parametrize(
    "make",
    [
        lambda: trigger_restart_retrying(lambda _: None),
        lambda: egress_bind_retrying(lambda _: None),
        lambda: _retry.egress_restart_retrying(lambda _: None),
        lambda: _retry.mqtt_reconnect_retrying(lambda _: None),
        lambda: _retry.wait_rebind_retrying(lambda: True, lambda _: None),
    ],
)
async def test_a_cancel_is_never_retried(make: Callable[[], AsyncRetrying]) -> None:
    retrying = make()
    pauses = _recording(retrying)
    call, calls = _failing([asyncio.CancelledError()])
    with pytest.raises(asyncio.CancelledError):
        await retrying(call)
    assert (calls, pauses) == ([1], [])


def test_the_docs_table_names_every_policy() -> None:
    uses = [row.use for row in _retry.POLICIES]
    assert len(uses) == len(set(uses)) == 9
    pauses = " ".join(row.pauses for row in _retry.POLICIES)
    assert "0.1 s, doubling up to 2 s" in pauses
    assert "1 s, doubling up to 30 s, plus up to 1 s at random" in pauses


# -- one place -----------------------------------------------------------------------------------


def test_no_module_but_the_retry_module_builds_a_retry() -> None:
    """Backoffs and tenacity policies live in adapter/_retry.py only, and each use takes its
    policy from there."""
    built = re.compile(r"\b(AsyncRetrying|wait_exponential|wait_random|stop_after_attempt)\b")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_retry.py" and built.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    users = {
        "_mqtt/_connection.py": "mqtt_reconnect_retrying(",
        "_mqtt/_ingress.py": "ingress_publish_retrying(",
        "_mqtt/_egress.py": "egress_restart_retrying(",
        "_bus/amqp/_link.py": "broker_connect_retrying(",
        "_bus/amqp/_groups.py": "RetryPolicy(",
        "_bus/_memory_groups.py": "RetryPolicy(",
        "_triggers.py": "trigger_restart_retrying(",
    }
    for module, call in users.items():
        assert call in (PACKAGE / module).read_text(encoding="utf-8"), module
    assert "egress_bind_retrying(" in (PACKAGE / "_mqtt/_egress.py").read_text(encoding="utf-8")
    assert "trigger_join_retrying(" in (PACKAGE / "_triggers.py").read_text(encoding="utf-8")
