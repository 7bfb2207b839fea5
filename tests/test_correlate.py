"""Correlation: waits that match properties, and what a send's receipt says. One suite for the
in-process bus, RabbitMQ and a bridge daemon (``over_http``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from adapter import Client, InvalidInput
from adapter._bus._base import SubscriptionIndex
from adapter._event import Event
from adapter._match import MAX_MATCH_BYTES, MAX_MATCH_KEYS, check_match, parse_match_items
from tests.support.buses import over_http
from tests.support.http import HEADERS, asgi_client, make_settings, until_waiting

SOON = timedelta(seconds=10)
BRIEF = timedelta(milliseconds=600)
RETAIN = timedelta(seconds=60)


@over_http
async def test_a_match_wait_ignores_a_non_matching_event_and_takes_its_own(
    client: Client, unique_name: str, kind: str
) -> None:
    async with client.expect(kind, unique_name, until=SOON, match={"vm": "web-01"}) as waiter:
        other = await client.send_custom_event(unique_name, {"vm": "web-02"}, kind=kind)
        await client.send_custom_event(unique_name, {"host": "web-01"}, kind=kind)
        mine = await client.send_custom_event(
            unique_name, {"vm": "web-01", "ip": "10.0.0.1"}, kind=kind
        )
        event = await waiter
    # The bus routes by name: the non-matching send reached the wait's binding.
    assert other.routed is True and other.outcome == "routed"
    assert event is not None and event.event_id == mine.event_id
    assert event.properties == {"vm": "web-01", "ip": "10.0.0.1"}
    assert waiter.unmatched == 2


@over_http
async def test_every_key_of_a_match_must_hold(client: Client, unique_name: str, kind: str) -> None:
    match = {"vm": "web-01", "env": "prod"}
    async with client.expect(kind, unique_name, until=SOON, match=match) as waiter:
        await client.send_custom_event(unique_name, {"vm": "web-01", "env": "dev"}, kind=kind)
        await client.send_custom_event(unique_name, {"vm": "web-01", "env": "prod"}, kind=kind)
        event = await waiter
    assert event is not None and event.properties == {"vm": "web-01", "env": "prod"}
    assert waiter.unmatched == 1


@over_http
async def test_a_non_matching_event_leaves_the_wait_waiting_to_its_deadline(
    client: Client, unique_name: str, kind: str
) -> None:
    async with client.expect(kind, unique_name, until=BRIEF, match={"vm": "a"}) as waiter:
        await client.send_custom_event(unique_name, {"vm": "b"}, kind=kind)
        assert await waiter is None
    assert waiter.unmatched == 1


@over_http
async def test_waits_with_different_keys_each_get_their_own_event(
    client: Client, unique_name: str, kind: str
) -> None:
    names = [f"vm-{i}" for i in range(5)]
    waits = [client.expect(kind, unique_name, until=SOON, match={"vm": n}) for n in names]
    plain = client.expect(kind, unique_name, until=SOON)
    for waiter in [*waits, plain]:
        await waiter.__aenter__()
    try:
        for n in reversed(names):
            await client.send_custom_event(unique_name, {"vm": n}, kind=kind)
        events = [await waiter for waiter in waits]
        first = await plain
    finally:
        for waiter in [*waits, plain]:
            await waiter.__aexit__(None, None, None)
    assert [e.properties["vm"] if e else None for e in events] == names
    assert first is not None and first.properties == {"vm": names[-1]}  # a wait without match
    # Counted until each was answered: vm-4 came first, vm-0 last.
    assert [w.unmatched for w in waits] == [4, 3, 2, 1, 0]


@over_http
async def test_a_retained_matching_event_answers_a_late_match_wait(
    client: Client, unique_name: str, kind: str
) -> None:
    sent = await client.send_custom_event(unique_name, {"vm": "web-01"}, kind=kind, retain=RETAIN)
    assert (sent.routed, sent.retained, sent.outcome) == (False, True, "retained")
    event = await client.wait_custom_event_until(kind, unique_name, SOON, match={"vm": "web-01"})
    assert event is not None and event.event_id == sent.event_id
    # The retained event is another VM's: a wait for web-02 is not answered by it.
    assert (
        await client.wait_custom_event_until(kind, unique_name, BRIEF, match={"vm": "web-02"})
        is None
    )


@over_http
async def test_a_resumable_match_wait_gets_only_its_own_from_while_it_was_away(
    client: Client, unique_name: str, kind: str
) -> None:
    wait_id = "m-" + unique_name.replace(".", "-")[-40:]
    match = {"vm": "web-01"}

    async def wait() -> object:
        return await client.wait_custom_event_until(
            kind, unique_name, SOON, wait_id=wait_id, match=match
        )

    first = asyncio.create_task(wait())
    while client.active_waits == 0:
        await asyncio.sleep(0.01)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await client.send_custom_event(unique_name, {"vm": "web-02"}, kind=kind)
    mine = await client.send_custom_event(unique_name, {"vm": "web-01"}, kind=kind)
    event = await client.wait_custom_event_until(
        kind, unique_name, SOON, wait_id=wait_id, match=match
    )
    assert event is not None and event.event_id == mine.event_id


@over_http
async def test_a_plain_send_says_it_was_routed_or_reached_nobody(
    client: Client, unique_name: str, kind: str
) -> None:
    nobody = await client.send_custom_event(unique_name, kind=kind)
    assert (nobody.routed, nobody.retained, nobody.outcome) == (False, False, "unrouted")
    assert nobody.to_json() == {
        "event_id": nobody.event_id,
        "routed": False,
        "retained": False,
        "outcome": "unrouted",
    }
    async with client.expect(kind, unique_name, until=SOON) as waiter:
        both = await client.send_custom_event(unique_name, kind=kind, retain=RETAIN)
        await waiter
    assert (both.routed, both.retained, both.outcome) == (True, True, "routed")


@over_http
async def test_bad_matches_are_refused_naming_the_problem(
    client: Client, unique_name: str, kind: str
) -> None:
    bad: list[tuple[object, str]] = [
        ({"a=b": "1"}, "contains '='"),
        ({"vm": "a\nb"}, "contains"),
        ({"": "x"}, "empty property name"),
        ({f"k{i}": "v" for i in range(MAX_MATCH_KEYS + 1)}, f"more than {MAX_MATCH_KEYS}"),
        ({"k": "v" * (MAX_MATCH_BYTES + 1)}, f"more than {MAX_MATCH_BYTES} bytes"),
        ({"k": 1}, "must be strings"),
        (["vm", "web-01"], "must be a mapping"),
    ]
    for match, words in bad:
        with pytest.raises(InvalidInput, match=words):
            client.expect(kind, unique_name, until=SOON, match=match)  # type: ignore[arg-type]


def test_match_items_parse_key_value_and_refuse_repeats_and_floods() -> None:
    assert parse_match_items(["vm=web-01", "url=a=b"]) == {"vm": "web-01", "url": "a=b"}
    assert parse_match_items([]) is None
    assert check_match({}) is None
    with pytest.raises(InvalidInput, match="expected KEY=VALUE"):
        parse_match_items(["vm"])
    with pytest.raises(InvalidInput, match="given twice"):
        parse_match_items(["vm=a", "vm=b"])
    with pytest.raises(InvalidInput, match=f"more than {MAX_MATCH_KEYS}"):
        parse_match_items(f"k{i}=v" for i in range(10**6))  # stops early: a generator


async def test_many_match_waits_on_one_name_are_found_by_lookup_not_scan() -> None:
    from datetime import UTC, datetime

    from adapter._bus._memory import MemoryBus

    bus = MemoryBus()
    deadline = datetime.now(UTC) + SOON
    index = SubscriptionIndex()
    subs = [
        bus.subscribe("internal", "vm.created", deadline, match={"vm": f"web-{i}"})
        for i in range(10_000)
    ]
    for sub in subs:
        index.add(sub)
    event = Event("vm.created", "internal", {"vm": "web-1234"})
    calls = 0
    original = type(subs[0]).matches

    def counting(self: object, ev: Event) -> bool:
        nonlocal calls
        calls += 1
        return original(self, ev)  # type: ignore[arg-type]

    type(subs[0]).matches = counting  # type: ignore[method-assign]
    try:
        found = index.matching("internal.vm.created", event)
    finally:
        type(subs[0]).matches = original  # type: ignore[method-assign]
    assert found == [subs[1234]]
    assert calls == 0  # not one wait was looked at to find it
    assert subs[1234].unmatched == 0 and subs[0].unmatched == 1
    for sub in subs:
        index.remove(sub)
    assert len(index) == 0 and not index.binds("internal.vm.created")


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}


# -- through the daemon: the HTTP wait's match=, and the CLI's --match ----------------------


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(client, make_settings()) as opened:
        opened.headers.update(HEADERS)
        yield opened


async def test_the_http_wait_takes_match_in_the_query_and_says_how_many_did_not(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    query = "timeout=10s&match=vm%3Dweb-01&match=env%3Dprod"
    waiting = asyncio.ensure_future(http.get(f"/api/v1/events/{unique_name}/wait?{query}"))
    await until_waiting(client)
    await client.send_custom_event(unique_name, {"vm": "web-02", "env": "prod"}, kind="external")
    mine = await client.send_custom_event(
        unique_name, {"vm": "web-01", "env": "prod"}, kind="external"
    )
    response = await waiting
    assert response.status_code == 200, response.text
    assert response.json()["event_id"] == mine.event_id
    assert response.headers["x-customevent-unmatched"] == "1"
    metrics = (await http.get("/metrics")).text
    assert "customevent_wait_unmatched_total" in metrics


async def test_an_http_match_wait_ends_at_its_deadline_with_the_count(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    waiting = asyncio.ensure_future(
        http.get(f"/api/v1/events/{unique_name}/wait", params={"timeout": "1s", "match": "vm=a"})
    )
    await until_waiting(client)
    await client.send_custom_event(unique_name, {"vm": "b"}, kind="external")
    response = await waiting
    assert response.status_code == 204
    assert response.headers["x-customevent-unmatched"] == "1"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ([("match", "novalue")], "expected KEY=VALUE"),
        ([("match", "a=1"), ("match", "a=2")], "given twice"),
        ([("match", f"k{i}=v") for i in range(MAX_MATCH_KEYS + 1)], "more than 16"),
        ([("match", "k=" + "v" * (MAX_MATCH_BYTES + 1))], "bytes"),
        ([("match", "k=a\u2028b")], "U+2028"),
    ],
)
async def test_the_http_wait_refuses_bad_matches_with_400(
    http: httpx.AsyncClient, unique_name: str, params: list[tuple[str, str]], words: str
) -> None:
    response = await http.get(
        f"/api/v1/events/{unique_name}/wait", params=[("timeout", "5s"), *params]
    )
    assert response.status_code == 400
    assert words in response.json()["detail"]


@pytest.mark.rabbitmq
def test_cli_wait_match_takes_only_its_own_event(amqp_url: str, unique_name: str) -> None:
    env = {**_clean_env(), "CUSTOMEVENT_AMQP__URL": amqp_url}
    command = [sys.executable, "-m", "adapter._cli"]
    waiter = subprocess.Popen(
        [*command, "wait", unique_name, "--until", "30s", "--json", "--match", "vm=web-01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def send(vm: str) -> dict[str, object]:
        sent = subprocess.run(
            [*command, "send", unique_name, "-p", f"vm={vm}", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert sent.returncode == 0, sent.stderr
        result: dict[str, object] = json.loads(sent.stdout)
        return result

    try:
        for _ in range(100):  # until the waiter is bound
            if send("web-02")["routed"]:
                break
            time.sleep(0.2)
        mine = send("web-01")
        assert mine["outcome"] == "routed" and mine["retained"] is False
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    printed = json.loads(out)
    assert printed["event_id"] == mine["event_id"]
    assert printed["properties"] == {"vm": "web-01"}
    assert printed["unmatched"] == 1


def test_cli_wait_refuses_a_bad_match_before_connecting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapter._cli", "wait", "x.y", "--until", "5s", "--match", "vm"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(),
    )
    assert result.returncode == 64, result.stderr
    assert "--match 'vm': expected KEY=VALUE" in result.stderr


async def test_the_retained_view_hands_a_retained_event_only_to_the_waits_it_matches() -> None:
    from datetime import UTC, datetime

    from adapter._bus._memory import MemoryBus
    from adapter._bus._retained import RetainedEvents

    bus = MemoryBus()
    deadline = datetime.now(UTC) + SOON
    view = RetainedEvents(10)  # not caught up yet: nothing is handed out
    subs = {vm: bus.subscribe("internal", "vm.created", deadline, match={"vm": vm}) for vm in "ab"}
    plain = bus.subscribe("internal", "vm.created", deadline)
    for sub in [*subs.values(), plain]:
        view.watch(sub)
    event = Event("vm.created", "internal", {"vm": "a"})
    view.put("internal.vm.created", event, time.time() + 60, 1)
    view.mark_ready()
    assert await subs["a"].get() == event
    assert await plain.get() == event
    assert subs["b"].take_all() == []
    # Looking a wait up for the retained events does not count against it.
    assert subs["b"].unmatched == 0
    for sub in [*subs.values(), plain]:
        view.unwatch(sub)
    later = Event("vm.created", "internal", {"vm": "b"})
    view.put("internal.vm.created", later, time.time() + 60, 2)
    assert subs["b"].take_all() == []  # unwatched: not handed anything


@pytest.mark.rabbitmq
async def test_forged_messages_on_the_bus_never_answer_a_match_wait(
    amqp_url: str, unique_name: str
) -> None:
    """Whatever a publisher puts on the exchange is read by the one decoder first: a body that
    is not properties (a list where a value goes, a huge key count, not JSON) is refused, however
    well it seems to carry the match, and the wait goes on to take its own event."""
    import aio_pika

    async with Client(amqp_url) as client:
        match = {"vm": "web-01"}
        async with client.expect("internal", unique_name, until=SOON, match=match) as waiter:
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange("customevents", ensure=False)
                forged = [
                    b'{"vm": ["web-01"]}',
                    b'{"vm": "web-01", "vm": "web-01"}',
                    b'{"vm": "web-01", "x": "a\\nb"}',
                    b"vm=web-01",
                    json.dumps({"vm": "web-01", **{f"k{i}": "v" for i in range(5000)}}).encode(),
                ]
                for body in forged:
                    message = aio_pika.Message(body, content_type="application/json")
                    await exchange.publish(message, routing_key=f"internal.{unique_name}")
            mine = await client.send_custom_event(unique_name, {"vm": "web-01", "n": "1"})
            event = await waiter
    assert event is not None and event.event_id == mine.event_id
