"""``customevent listen``: a group's consumer that prints each event, or runs a command per event.

With a command, the event goes to the command as JSON on stdin, with ``CUSTOMEVENT_NAME``,
``CUSTOMEVENT_EVENT_ID``, ``CUSTOMEVENT_KIND``, ``CUSTOMEVENT_GROUP`` and ``CUSTOMEVENT_ATTEMPT``
in its environment (and ``TRACEPARENT``, ``TRACESTATE`` when the event is traced: the process
span's context when the bridge records traces, else the event's own), and none of the
listener's own ``CUSTOMEVENT_*`` settings (its AMQP URL holds
a password) unless named with ``--pass-env``. Exit status 0 acknowledges the event; anything else
retries it (after the group's backoff; past ``max_attempts``, a dead letter); a command still
running after its
timeout is stopped (SIGTERM to its process group, SIGKILL 5 s later) and the event retried.

One event is in hand at a time (prefetch 1), so a stop (SIGTERM, SIGINT) lets the running command
finish and settles its event before leaving: nothing is delivered again because of a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable, Sequence

from ._client import Client
from ._event import Event
from ._exceptions import ConfigurationError
from ._groups import Delivery
from ._tracing import consuming, span_trace

__all__ = ["command_environment", "listen", "run_command"]

log = logging.getLogger("adapter.listen")

_KILL_GRACE = 5.0
_OWN_PREFIX = "CUSTOMEVENT_"
_TRACEPARENT = "TRACEPARENT"
_TRACESTATE = "TRACESTATE"


async def listen(
    client: Client,
    pattern: str,
    *,
    group: str,
    kind: str,
    command: Sequence[str] | None,
    command_timeout: float,
    show: Callable[[Event], None],
    stop: asyncio.Event,
    pass_env: Sequence[str] = (),
    filters: object = None,
) -> int:
    """Consume ``group`` until ``stop`` is set; the number of events handled (acknowledged).
    Events that ``filters`` leave out are acknowledged unhandled (not counted here)."""
    handled = 0
    subscription = client.subscribe(pattern, group=group, kind=kind, prefetch=1, filters=filters)
    async with subscription as deliveries:
        incoming = aiter(deliveries)
        while not stop.is_set():
            delivery = await _next_or_stop(incoming, stop)
            if delivery is None:
                break
            if command is None:
                show(delivery.event)
                await delivery.ack()
                handled += 1
                continue
            failure = await run_command(
                command,
                delivery,
                group=group,
                limit=command_timeout,
                pass_env=pass_env,
                system=client.bus.messaging_system,
                destination=client.bus.destination,
            )
            if failure is None:
                await delivery.ack()
                handled += 1
            else:
                await delivery.retry(failure)
                # Said after the group decided: its own max_attempts (fixed when it was made)
                # is what counts, not this listener's setting.
                last = delivery.settled == "dead_letter"
                log.warning(
                    "event %s (%s, attempt %d): %s; %s",
                    delivery.event.event_id,
                    delivery.event.name,
                    delivery.attempt,
                    failure,
                    "that was the last attempt: it became a dead letter"
                    if last
                    else "it will be retried",
                    extra={
                        "group": group,
                        "event_id": delivery.event.event_id,
                        "event_name": delivery.event.name,
                        "attempt": delivery.attempt,
                        "outcome": "dead_letter" if last else "retry",
                    },
                )
    return handled


async def _next_or_stop(incoming: object, stop: asyncio.Event) -> Delivery | None:
    taking = asyncio.ensure_future(anext(incoming))  # type: ignore[call-overload]
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({taking, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if taking in done:
        delivery: Delivery = taking.result()
        return delivery
    taking.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await taking
    return None


def command_environment(pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The listener's environment for its command, less its own settings (``CUSTOMEVENT_*``:
    the AMQP URL and its password, tokens, principals) but those named in ``pass_env``."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_OWN_PREFIX) or name in pass_env
    }


async def run_command(
    command: Sequence[str],
    delivery: Delivery,
    *,
    group: str,
    limit: float,
    pass_env: Sequence[str] = (),
    system: str = "customevent",
    destination: str = "customevent",
) -> str | None:
    """Run the command for one delivery, for ``limit`` seconds at most: None when it exits 0,
    else why it failed. ``system`` and ``destination``: the bus's, for the process span."""
    event = delivery.event
    env = {
        **command_environment(pass_env),
        "CUSTOMEVENT_NAME": event.name,
        "CUSTOMEVENT_EVENT_ID": event.event_id,
        "CUSTOMEVENT_KIND": event.kind,
        "CUSTOMEVENT_GROUP": group,
        "CUSTOMEVENT_ATTEMPT": str(delivery.attempt),
    }
    # The listener's own trace, if it was started in one, is not the event's.
    env.pop(_TRACEPARENT, None)
    env.pop(_TRACESTATE, None)
    # Tracing off, the span is the event's own trace: the command continues it either way.
    with consuming(
        event,
        system=system,
        destination=destination,
        attributes={
            "messaging.consumer.group.name": group,
            "messaging.message.delivery_count": delivery.attempt,
        },
    ) as span:
        _trace_environment(env, *span_trace(span))
        return await _run(command, env, event, limit)


def _trace_environment(
    env: dict[str, str], traceparent: str | None, tracestate: str | None
) -> None:
    if traceparent is not None:
        env[_TRACEPARENT] = traceparent
        if tracestate is not None:
            env[_TRACESTATE] = tracestate


async def _run(
    command: Sequence[str], env: dict[str, str], event: Event, limit: float
) -> str | None:
    try:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            env=env,
            # Its own process group: a Ctrl-C meant for the listener does not reach it (the
            # listener lets it finish), and a timeout stops everything it started.
            start_new_session=True,
        )
    except OSError as exc:
        raise ConfigurationError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from None
    payload = json.dumps(event.to_json(), ensure_ascii=False).encode("utf-8") + b"\n"
    try:
        async with asyncio.timeout(limit):
            await process.communicate(payload)
    except TimeoutError:
        await _stop(process)
        return f"the command was still running after {limit:g}s and was stopped"
    if process.returncode == 0:
        return None
    if process.returncode is not None and process.returncode < 0:
        return f"the command was killed by signal {-process.returncode}"
    return f"the command exited {process.returncode}"


async def _stop(process: asyncio.subprocess.Process) -> None:
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        if grace is None:
            await process.wait()
            return
        try:
            async with asyncio.timeout(grace):
                await process.wait()
            return
        except TimeoutError:
            continue
