"""Filters in the CloudEvents Subscriptions API dialects: the expressions (and hostile ones),
groups on both buses (a filtered-out event is acknowledged, counted, never retried or
dead-lettered), ``listen --filter`` and a trigger's ``filters``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from adapter import Client, ConfigurationError, InvalidInput, load_settings
from adapter._event import Event
from adapter._filters import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_NODES,
    MAX_FILTER_VALUE_BYTES,
    FilteredSubscription,
    parse_filter_items,
    parse_filters,
)
from tests.support.groups import GROUPS, nothing, take
from tests.support.metrics import own_metrics, sample
from tests.support.webhooks import Receiver, delete_group_queues, running, serving
from tests.support.webhooks import trigger as _trigger
from tests.support.webhooks import until as _until

VM = Event("vm.created", "external", {"vm": "web-01", "env": "prod", "name": "prop"}, source="mqtt")


def _holds(filters: Any, event: Event = VM) -> bool:
    parsed = parse_filters(filters)
    assert parsed is not None
    return parsed.matches(event)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([{"exact": {"name": "vm.created"}}], True),
        ([{"exact": {"name": "vm.deleted"}}], False),
        ([{"prefix": {"name": "vm."}}, {"exact": {"env": "prod"}}], True),
        ([{"prefix": {"name": "vm."}}, {"exact": {"env": "dev"}}], False),
        ([{"suffix": {"vm": "-01"}}], True),
        ([{"exact": {"kind": "external"}}, {"exact": {"source": "mqtt"}}], True),
        ([{"exact": {"name": "prop"}}], False),  # name is the event's name...
        ([{"exact": {"properties.name": "prop"}}], True),  # ...its property is properties.name
        ([{"exact": {"missing": ""}}], False),  # an absent property matches nothing
        ([{"not": {"exact": {"missing": "x"}}}], True),
        ([{"any": [{"exact": {"env": "dev"}}, {"exact": {"env": "prod"}}]}], True),
        ([{"any": [{"exact": {"env": "dev"}}, {"exact": {"env": "qa"}}]}], False),
        ([{"all": [{"prefix": {"vm": "web"}}, {"not": {"suffix": {"vm": "02"}}}]}], True),
        ({"exact": {"vm": "web-01", "env": "prod"}}, True),  # several attributes: all of them
        ({"exact": {"vm": "web-01", "env": "dev"}}, False),
    ],
)
def test_the_dialects(filters: Any, expected: bool) -> None:
    assert _holds(filters) is expected


def test_no_filters_is_none_and_cli_items_are_exact_matches() -> None:
    assert parse_filters(None) is None and parse_filters([]) is None
    assert parse_filter_items([]) is None
    both = parse_filter_items(["env=prod", "name=vm.created"])
    assert both is not None and both.matches(VM)
    other = parse_filter_items(["env=prod", "vm=web-02"])
    assert other is not None and not other.matches(VM)
    with pytest.raises(InvalidInput, match="--filter 'env': expected KEY=VALUE"):
        parse_filter_items(["env"])


def _nested(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"exact": {"a": "b"}}
    for _ in range(depth - 1):
        node = {"not": node}
    return node


@pytest.mark.parametrize(
    ("filters", "words"),
    [
        ([{"sql": "a = 1"}], "filters[0]: unknown filter dialect 'sql'"),
        ([{"exact": {"a": "1"}, "prefix": {"b": "2"}}], "exactly one dialect"),
        ([{}], "exactly one dialect"),
        (["exact"], "a filter is a table"),
        ([{"exact": "a=1"}], "filters[0].exact: expected a table"),
        ([{"exact": {}}], "filters[0].exact: expected a table"),
        ([{"prefix": {"name": ""}}], "empty value"),
        ([{"exact": {"a": 1}}], "strings"),
        ([{"exact": {"a=b": "1"}}], "contains '='"),
        ([{"exact": {"a": "x\ny"}}], "contains"),
        ([{"any": []}], "filters[0].any: an empty list"),
        ([{"all": {"exact": {"a": "b"}}}], "filters[0].all: expected a list"),
        ([{"any": [{"exact": {"a": "1"}}, {"nope": {}}]}], "filters[0].any[1]: unknown"),
        ([_nested(MAX_FILTER_DEPTH + 1)], f"nested more than {MAX_FILTER_DEPTH} deep"),
        ([_nested(100_000)], f"nested more than {MAX_FILTER_DEPTH} deep"),  # no recursion error
        ([{"exact": {"a": "b"}}] * (MAX_FILTER_NODES + 1), f"more than {MAX_FILTER_NODES}"),
        (
            [{"exact": {f"k{i}": "v" for i in range(MAX_FILTER_NODES)}}],
            f"more than {MAX_FILTER_NODES} expressions",
        ),
        ([{"exact": {"a": "v" * MAX_FILTER_VALUE_BYTES}}], f"{MAX_FILTER_VALUE_BYTES} bytes"),
        ("exact", "expected a list of filters"),
    ],
)
def test_hostile_and_malformed_filters_are_refused_naming_where(filters: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_filters(filters)
    assert words in str(caught.value)


def test_a_filter_at_the_depth_bound_is_fine() -> None:
    # Seven nots over an exact that fails: true.
    assert _holds([_nested(MAX_FILTER_DEPTH)], Event("x", "internal", {"a": "c"})) is True


@pytest.fixture
def group() -> Iterator[str]:
    name = f"t-filter-{uuid.uuid4().hex[:10]}"
    yield name
    delete_group_queues(name)


@pytest.fixture
async def groups_client(bus_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    settings = load_settings(amqp={"url": url}, groups=GROUPS)
    async with Client(settings, metrics=own_metrics()) as client:
        yield client


def _filtered(client: Client, group: str) -> float:
    return sample(client.metrics, "customevent_filtered_total", group=group)


async def test_a_filtered_group_takes_its_events_and_acks_the_rest_uncounted_as_failures(
    groups_client: Client, group: str, unique_name: str
) -> None:
    client = groups_client
    filters = [{"exact": {"env": "prod"}}]
    sub = client.subscribe(f"{unique_name}.*", group=group, filters=filters, dedup_window=0)
    assert isinstance(sub, FilteredSubscription)
    async with sub as deliveries:
        await client.send_custom_event(f"{unique_name}.a", {"env": "dev"}, event_id="dev-1")
        await client.send_custom_event(f"{unique_name}.b", {"env": "prod"}, event_id="prod-1")
        delivery = await take(deliveries)
        assert delivery.event.event_id == "prod-1" and delivery.attempt == 1
        await delivery.ack()
        await nothing(deliveries, 1.0)  # the dev event is not retried
    assert sub.filtered == 1
    assert _filtered(client, group) == 1
    assert await client.dead_letters(group) == []
    # Acknowledged, not held back: a consumer without filters finds the group empty.
    async with client.subscribe(f"{unique_name}.*", group=group, dedup_window=0) as deliveries:
        await nothing(deliveries, 1.0)


async def test_bad_filters_are_refused_before_the_group_is_made(
    groups_client: Client, group: str, unique_name: str
) -> None:
    with pytest.raises(InvalidInput, match="unknown filter dialect"):
        groups_client.subscribe(unique_name, group=group, filters=[{"regex": {"a": "b"}}])


def test_a_trigger_refuses_bad_filters_in_its_settings() -> None:
    hook = _trigger("t-bad", "vm.*", "http://127.0.0.1:9/hook", filters=[{"prefix": {}}])
    with pytest.raises((ConfigurationError, ValueError), match=r"triggers.filters\[0\].prefix"):
        load_settings(triggers=[hook])
    deep = _trigger("t-deep", "vm.*", "http://127.0.0.1:9/", filters=[_nested(50)])
    with pytest.raises((ConfigurationError, ValueError), match="nested more than"):
        load_settings(triggers=[deep])


@pytest.mark.rabbitmq
async def test_a_filtered_trigger_posts_only_matching_events(
    amqp_url: str, unique_name: str
) -> None:
    name = f"t-filter-{unique_name.replace('.', '-')[-30:]}"
    filters = [{"prefix": {"name": f"{unique_name}.vm."}}, {"exact": {"env": "prod"}}]
    try:
        async with serving(Receiver()) as receiver:
            hook = _trigger(name, f"{unique_name}.#", receiver.url, filters=filters)
            async with running(amqp_url, hook) as client:
                sends = [
                    (f"{unique_name}.vm.created", {"env": "dev"}),
                    (f"{unique_name}.disk.created", {"env": "prod"}),
                    (f"{unique_name}.vm.created", {"env": "prod"}),
                ]
                for event_name, properties in sends:
                    await client.send_custom_event(event_name, properties)
                await _until(lambda: _filtered(client, name) == 2, "two left out")
                await _until(lambda: len(receiver.received) == 1, "one delivery")
                await asyncio.sleep(0.5)
                dead = await client.dead_letters(name)
        assert len(receiver.received) == 1
        posted = receiver.events()[0]
        assert posted.get_type() == f"{unique_name}.vm.created"
        assert dead == []
    finally:
        delete_group_queues(name)


@pytest.mark.rabbitmq
def test_listen_filter_prints_only_matching_events(amqp_url: str, unique_name: str) -> None:
    env = {"CUSTOMEVENT_AMQP__URL": amqp_url, "PATH": "/usr/bin:/bin"}
    group_name = f"t-listen-{unique_name.replace('.', '-')[-30:]}"
    command = [sys.executable, "-m", "adapter._cli"]
    listener = subprocess.Popen(
        [
            *command,
            *("listen", f"{unique_name}.*", "--group", group_name, "--json"),
            *("--filter", "env=prod", "--filter", f"name={unique_name}.vm"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for _ in range(100):  # until the group exists and its consumer is bound
            sent = subprocess.run(
                [*command, "send", f"{unique_name}.vm", "-p", "env=dev", "--json"],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
            )
            assert sent.returncode == 0, sent.stderr
            if json.loads(sent.stdout)["routed"]:
                break
            time.sleep(0.2)
        mine = subprocess.run(
            [*command, "send", f"{unique_name}.vm", "-p", "env=prod", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert mine.returncode == 0, mine.stderr
        assert listener.stdout is not None
        line = listener.stdout.readline()
    finally:
        listener.terminate()
        listener.communicate(timeout=30)
        delete_group_queues(group_name)
    printed = json.loads(line)
    assert printed["event_id"] == json.loads(mine.stdout)["event_id"]
    assert printed["properties"] == {"env": "prod"}


def test_listen_refuses_a_bad_filter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "adapter._cli", "listen", "vm.*", "--group", "g", "--filter", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 64, result.stderr
    assert "--filter 'x': expected KEY=VALUE" in result.stderr
