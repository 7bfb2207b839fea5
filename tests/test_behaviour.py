"""One behaviour suite, run against the in-process bus and against the real RabbitMQ; the tests
marked ``over_http`` run a third time through a bridge daemon (``Client("http://...")``), where
only external events travel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from adapter import (
    Client,
    ClientStateError,
    Event,
    InvalidDeadline,
    InvalidEventName,
    InvalidInput,
    InvalidKind,
    InvalidProperties,
    LimitExceeded,
    PropertiesTooLarge,
    load_settings,
)
from tests.support.buses import over_http

SOON = timedelta(seconds=10)


@over_http
async def test_a_bound_waiter_gets_the_event(
    client: Client, unique_name: str, kind: str, bus_kind: str
) -> None:
    async with client.expect(kind, unique_name, until=SOON) as waiter:
        result = await client.send_custom_event(
            unique_name, "a=1\nb=x=y", kind=kind, event_id="my-id-1"
        )
        event = await waiter
    assert result.routed is True
    assert result.event_id == "my-id-1"
    assert event is not None
    assert (event.name, event.kind, event.properties) == (
        unique_name,
        kind,
        {"a": "1", "b": "x=y"},
    )
    assert event.event_id == "my-id-1"
    assert event.source == ("http" if bus_kind == "http" else "amqp")
    assert abs((event.sent_at - datetime.now(UTC)).total_seconds()) < 60


@over_http
async def test_every_waiter_on_a_name_gets_the_event(
    client: Client, unique_name: str, kind: str
) -> None:
    waits = [client.expect(kind, unique_name, until=SOON) for _ in range(3)]
    for waiter in waits:
        await waiter.__aenter__()
    try:
        await client.send_custom_event(unique_name, {"n": "1"}, kind=kind)
        events = [await waiter for waiter in waits]
    finally:
        for waiter in waits:
            await waiter.__aexit__(None, None, None)
    assert [e.properties if e else None for e in events] == [{"n": "1"}] * 3


@over_http
async def test_waiters_with_different_deadlines_all_get_it(
    client: Client, unique_name: str, kind: str
) -> None:
    deadlines = [timedelta(seconds=5), timedelta(seconds=25), timedelta(minutes=3)]
    async with (
        client.expect(kind, unique_name, until=deadlines[0]) as first,
        client.expect(kind, unique_name, until=deadlines[1]) as second,
        client.expect(kind, unique_name, until=deadlines[2]) as third,
    ):
        await client.send_custom_event(unique_name, {"k": "v"}, kind=kind)
        events = [await first, await second, await third]
    assert all(e is not None and e.properties == {"k": "v"} for e in events)


@over_http
async def test_nothing_at_the_deadline_returns_none(
    client: Client, unique_name: str, kind: str
) -> None:
    assert await client.wait_custom_event_until(kind, unique_name, timedelta(seconds=1)) is None


@over_http
async def test_a_deadline_in_the_past_returns_none_without_binding(
    client: Client, unique_name: str, kind: str
) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    async with client.expect(kind, unique_name, until=past) as waiter:
        result = await client.send_custom_event(unique_name, kind=kind)
        assert await waiter is None
    assert result.routed is False


@over_http
async def test_a_send_with_nobody_waiting_is_confirmed_but_not_routed(
    client: Client, unique_name: str, kind: str
) -> None:
    result = await client.send_custom_event(unique_name, {"a": "1"}, kind=kind)
    assert result.routed is False
    assert result.event_id


@over_http
async def test_a_wait_is_unbound_when_it_ends(client: Client, unique_name: str, kind: str) -> None:
    async with client.expect(kind, unique_name, until=SOON) as waiter:
        assert (await client.send_custom_event(unique_name, kind=kind)).routed
        assert await waiter is not None
    assert (await client.send_custom_event(unique_name, kind=kind)).routed is False
    assert client.active_waits == 0


@over_http
async def test_a_wait_that_got_its_event_leaves_others_bound(
    client: Client, unique_name: str, kind: str
) -> None:
    other = unique_name + ".other"
    async with client.expect(kind, other, until=SOON) as keeper:
        async with client.expect(kind, unique_name, until=SOON) as short:
            await client.send_custom_event(unique_name, kind=kind)
            assert await short is not None
        assert (await client.send_custom_event(unique_name, kind=kind)).routed is False
        assert (await client.send_custom_event(other, {"still": "here"}, kind=kind)).routed
        event = await keeper
    assert event is not None and event.properties == {"still": "here"}


async def test_kinds_are_separate(client: Client, unique_name: str) -> None:
    # The send has returned (routed or not) before the wait's deadline starts to matter: an
    # event of the wrong kind that leaked would arrive within milliseconds.
    async with client.expect("internal", unique_name, until=timedelta(seconds=0.5)) as waiter:
        result = await client.send_custom_event(unique_name, kind="external")
        assert await waiter is None
    assert result.routed is False


@over_http
async def test_patterns_match_words(client: Client, unique_name: str) -> None:
    async with (
        client.expect("external", f"{unique_name}.*.alarm", until=SOON) as one_word,
        client.expect("external", f"{unique_name}.#", until=SOON) as any_words,
    ):
        assert not (await client.send_custom_event(f"{unique_name}x", kind="external")).routed
        await client.send_custom_event(f"{unique_name}.a.b.alarm", {"n": "1"}, kind="external")
        await client.send_custom_event(f"{unique_name}.a.alarm", {"n": "2"}, kind="external")
        first_any = await any_words
        first_one = await one_word
    assert first_any is not None and first_any.properties == {"n": "1"}
    assert first_one is not None and first_one.properties == {"n": "2"}
    assert first_one.name == f"{unique_name}.a.alarm"


@over_http
async def test_many_concurrent_waits_each_get_their_own_event(
    client: Client, unique_name: str, kind: str
) -> None:
    names = [f"{unique_name}.{i}" for i in range(200)]
    waiters = [client.expect(kind, name, until=timedelta(seconds=30)) for name in names]
    await asyncio.gather(*(w.__aenter__() for w in waiters))
    try:
        assert client.active_waits == 200
        results = await asyncio.gather(
            *(client.send_custom_event(name, {"i": name}, kind=kind) for name in names)
        )
        events = await asyncio.gather(*(w.get() for w in waiters))
    finally:
        await asyncio.gather(*(w.__aexit__(None, None, None) for w in waiters))
    assert all(r.routed for r in results)
    assert [e.properties["i"] if e else None for e in events] == names


@over_http
async def test_wait_custom_event_until_gets_an_event_sent_meanwhile(
    client: Client, unique_name: str, kind: str
) -> None:
    async def send_when_bound() -> None:
        while not (await client.send_custom_event(unique_name, {"x": "1"}, kind=kind)).routed:
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(send_when_bound())
    event = await client.wait_custom_event_until(kind, unique_name, datetime.now(UTC) + SOON)
    await sender
    assert event is not None and event.properties == {"x": "1"}


@over_http
async def test_a_resumable_wait_gets_what_was_sent_while_it_was_away(
    client: Client, unique_name: str, kind: str
) -> None:
    wait_id = "w-" + unique_name.replace(".", "-")[-40:]
    until = datetime.now(UTC) + timedelta(seconds=30)

    async def wait() -> object:
        return await client.wait_custom_event_until(kind, unique_name, until, wait_id=wait_id)

    first = asyncio.create_task(wait())
    while client.active_waits == 0:  # counted once the wait is bound
        await asyncio.sleep(0.01)
    first.cancel()  # the waiter "crashes" before any event
    with pytest.raises(asyncio.CancelledError):
        await first
    result = await client.send_custom_event(unique_name, {"while": "away"}, kind=kind)
    assert result.routed is True
    event = await client.wait_custom_event_until(kind, unique_name, until, wait_id=wait_id)
    assert event is not None and event.properties == {"while": "away"}
    # Finished: the wait's queue is gone, nothing routes to it any more.
    assert (await client.send_custom_event(unique_name, kind=kind)).routed is False


@pytest.fixture
async def small_client(bus_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A client whose resumable waits are capped at 2, each keeping at most 3 events."""
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    settings = load_settings(
        amqp={"url": url, "wait_grace": 1.0},
        limits={"max_resumable_waits": 2, "max_resumable_events": 3},
    )
    async with Client(settings) as opened:
        yield opened


async def test_resumable_waits_are_capped_and_keep_the_newest_events(
    small_client: Client, unique_name: str
) -> None:
    client = small_client
    ids = [f"cap-{i}-" + unique_name.replace(".", "-")[-40:] for i in range(3)]
    first = client.expect("internal", unique_name, until=SOON, wait_id=ids[0])
    second = client.expect("internal", unique_name, until=SOON, wait_id=ids[1])
    await first.__aenter__()
    await second.__aenter__()
    with pytest.raises(LimitExceeded, match=r"limit is 2 \(limits.max_resumable_waits\)"):
        async with client.expect("internal", unique_name, until=SOON, wait_id=ids[2]):
            pass
    # Left without finishing, the first stays alive for a comeback, and still counts.
    await first.__aexit__(asyncio.CancelledError, asyncio.CancelledError(), None)
    with pytest.raises(LimitExceeded):
        async with client.expect("internal", unique_name, until=SOON, wait_id=ids[2]):
            pass
    for n in range(1, 6):
        await client.send_custom_event(unique_name, {"n": str(n)})
    # Only the newest three were kept while it was away.
    resumed = await client.wait_custom_event_until("internal", unique_name, SOON, wait_id=ids[0])
    assert resumed is not None and resumed.properties == {"n": "3"}
    # It finished, so its place is free.
    async with client.expect("internal", unique_name, until=SOON, wait_id=ids[2]):
        pass
    await second.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda c: c.send_custom_event("a..b"), InvalidEventName, "empty word"),
        (lambda c: c.send_custom_event("a#"), InvalidEventName, "'#'"),
        (lambda c: c.send_custom_event("ok", kind="public"), InvalidKind, "'external'"),
        (lambda c: c.send_custom_event("ok", "noequals"), InvalidProperties, "line 1"),
        (lambda c: c.send_custom_event("ok", {"a": "x" * 70_000}), PropertiesTooLarge, "bytes"),
        (
            lambda c: c.wait_custom_event_until("internal", "ok", datetime(2030, 1, 1)),
            InvalidDeadline,
            "time zone",
        ),
        (
            lambda c: c.wait_custom_event_until("internal", "ok", timedelta(1), wait_id="a b"),
            Exception,
            "wait_id",
        ),
    ],
)
async def test_bad_input_is_refused_with_a_clear_error(
    client: Client, call: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        await call(client)  # type: ignore[operator]


async def test_a_client_is_opened_once(bus_kind: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    client = Client(load_settings(amqp={"url": url}))
    with pytest.raises(ClientStateError, match="unopened"):
        await client.send_custom_event("a")
    async with client:
        pass
    with pytest.raises(ClientStateError, match="closed"):
        await client.send_custom_event("a")
    with pytest.raises(ClientStateError, match="make a new Client"):
        async with client:
            pass


@over_http
async def test_an_event_survives_its_json_form(client: Client, unique_name: str, kind: str) -> None:
    async with client.expect(kind, unique_name, until=SOON) as waiter:
        # Through a daemon the principal is the caller's ("ops"), whatever the library says.
        await client.send_custom_event(unique_name, {"a": "1"}, kind=kind, principal="ops")
        event = await waiter
    assert event is not None
    assert Event.from_json(event.to_json()) == event
    with pytest.raises(InvalidInput, match="not an event"):
        Event.from_json({"name": unique_name})
