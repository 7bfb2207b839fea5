"""Webhook triggers against real receivers (uvicorn on a free port) and the real RabbitMQ:
CloudEvents signed per Standard Webhooks that the SDK parses and the standardwebhooks library
verifies, key rotation, retries honouring Retry-After, dead letters, timeouts, a daemon restarted
mid-stream, and a dead receiver that holds up nobody else. Hostile receivers and replayed or
altered deliveries: test_hostile_webhooks.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from adapter import Client, ConfigurationError, GroupNotFound, load_settings
from adapter._bus.amqp._queues import dead_queue, group_queue
from adapter._http._logging import JsonFormatter
from adapter._triggers import Triggers, attributes_id
from adapter.testing import free_port, memory_client
from tests.support.metrics import own_metrics, sample
from tests.support.processes import Daemon
from tests.support.webhooks import (
    RETRY,
    SECRET,
    Receiver,
    delete_group_queues,
    running,
    serving,
    serving_example,
)
from tests.support.webhooks import trigger as _trigger
from tests.support.webhooks import until as _until


@pytest.fixture
def group() -> Iterator[str]:
    name = f"t-hook-{uuid.uuid4().hex[:10]}"
    yield name
    delete_group_queues(name)


def _verify(secret: str, headers: dict[str, str], body: bytes) -> None:
    """What a receiver does: verify with the standardwebhooks library, binding the ce-* headers
    through webhook-id in binary mode."""
    if "ce-id" in headers:
        headers = {**headers, "webhook-id": attributes_id(headers.items())}
    Webhook(secret).verify(body, headers, json_parse=False)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_a_delivery_is_a_signed_cloudevent_the_sdk_reads(
    amqp_url: str, group: str, unique_name: str, mode: str
) -> None:
    async with serving(Receiver()) as receiver:
        hook = _trigger(group, f"{unique_name}.*", receiver.url, mode=mode)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(
                f"{unique_name}.created", {"vm": "web-1"}, event_id=f"{group}-1", principal="ops"
            )
            await _until(lambda: len(receiver.received) == 1, "one delivery")
            await asyncio.sleep(0.5)
    assert len(receiver.received) == 1
    _, headers, body = receiver.received[0]
    _verify(SECRET, headers, body)
    assert "x-customevent-signature" not in headers
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    event = receiver.events()[0]
    assert event.get_id() == f"{group}-1"
    assert event.get_type() == f"{unique_name}.created"
    assert event.get_source() == "urn:customevent:amqp"
    assert event.get_extension("eventkind") == "internal"
    assert event.get_extension("principal") == "ops"
    assert event.get_data() == {"vm": "web-1"}
    if mode == "structured":
        assert headers["content-type"].startswith("application/cloudevents+json")
        assert headers["webhook-id"] == f"{group}-1"  # receivers de-duplicate by it
    else:
        assert headers["ce-id"] == f"{group}-1"
        assert headers["webhook-id"] == attributes_id(headers.items())
    assert headers["accept-encoding"] == "identity"


@pytest.mark.rabbitmq
async def test_structured_mode_is_the_default_and_every_secret_signs(
    amqp_url: str, group: str, unique_name: str, tmp_path: Path
) -> None:
    old, new = (
        "whsec_" + base64.b64encode(f"{word}-key-for-rotation-tests".encode()).decode()
        for word in ("old", "new")
    )
    secrets = tmp_path / "secrets"
    secrets.write_text(f"# rotating: the new one first\n{new}\n\n{old}\n")
    async with serving(Receiver()) as receiver:
        hook = {**_trigger(group, unique_name, receiver.url), "secret": None}
        hook["secret_file"] = str(secrets)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-rot")
            await _until(lambda: len(receiver.received) == 1, "the delivery")
    _, headers, body = receiver.received[0]
    assert headers["content-type"].startswith("application/cloudevents+json")
    assert not any(name.startswith("ce-") for name in headers)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):  # a receiver holding either one verifies the delivery
        _verify(secret, headers, body)


@pytest.mark.rabbitmq
async def test_500_then_204_is_retried_then_acknowledged(
    amqp_url: str, group: str, unique_name: str
) -> None:
    receiver = Receiver(answer=lambda n: (500, {}) if n == 1 else (204, {}))
    async with serving(receiver):
        async with running(amqp_url, _trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-r")
            await _until(lambda: len(receiver.received) == 2, "the retry")
            await asyncio.sleep(1)
            assert await client.dead_letters(group) == []
    assert [e.get_id() for e in receiver.events()] == [f"{group}-r"] * 2
    assert receiver.received[1][0] - receiver.received[0][0] >= 0.15  # after the backoff


@pytest.mark.rabbitmq
async def test_429_with_retry_after_is_retried_no_sooner(
    amqp_url: str, group: str, unique_name: str
) -> None:
    receiver = Receiver(answer=lambda n: (429, {"Retry-After": "2"}) if n == 1 else (200, {}))
    async with serving(receiver):
        async with running(amqp_url, _trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-429")
            await _until(lambda: len(receiver.received) == 2, "the retry", 30)
    assert receiver.received[1][0] - receiver.received[0][0] >= 1.9


@pytest.mark.rabbitmq
async def test_400_is_a_dead_letter_at_once(amqp_url: str, group: str, unique_name: str) -> None:
    receiver = Receiver(answer=lambda n: (400, {}))
    async with serving(receiver):
        async with running(amqp_url, _trigger(group, unique_name, receiver.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-400")
            await _until(lambda: len(receiver.received) == 1, "the delivery")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
    assert len(receiver.received) == 1
    assert [(d.event.event_id, d.reason) for d in dead] == [
        (f"{group}-400", f"{receiver.url} answered 400")
    ]


@pytest.mark.rabbitmq
async def test_a_receiver_that_hangs_past_the_timeout_gets_it_again(
    amqp_url: str, group: str, unique_name: str
) -> None:
    receiver = Receiver(delay=0)
    receiver.answer = lambda n: (204, {})
    slow_first = Receiver()

    async def hanging(scope: Any, receive: Any, send: Any) -> None:
        if not slow_first.received:
            slow_first.received.append((time.monotonic(), {}, b""))
            await asyncio.sleep(10)
        await receiver.app(scope, receive, send)

    slow_first.app = hanging  # type: ignore[method-assign]
    async with serving(slow_first) as served:
        hook = _trigger(group, unique_name, served.url, timeout=1)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-slow")
            await _until(lambda: len(receiver.received) == 1, "the delivery after the timeout")
    assert receiver.events()[0].get_id() == f"{group}-slow"


@pytest.mark.rabbitmq
async def test_a_dead_receiver_holds_up_neither_sends_nor_other_triggers(
    amqp_url: str, group: str, unique_name: str
) -> None:
    # A black hole: accepts connections and never answers.
    hole = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    hole_url = f"http://127.0.0.1:{hole.sockets[0].getsockname()[1]}/"
    good = Receiver()
    try:
        async with serving(good):
            hooks = [
                _trigger(f"{group}-bad", unique_name, hole_url, timeout=5, max_in_flight=2),
                _trigger(group, unique_name, good.url),
            ]
            async with running(amqp_url, *hooks) as client:
                started = time.monotonic()
                for n in range(30):
                    await client.send_custom_event(unique_name, {"n": str(n)})
                sending = time.monotonic() - started
                await _until(lambda: len(good.received) == 30, "the good trigger's deliveries")
    finally:
        hole.close()
        for queue in (
            group_queue("customevents", f"{group}-bad"),
            dead_queue("customevents", f"{group}-bad"),
        ):
            await asyncio.to_thread(
                subprocess.run, ["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True
            )
    assert sending < 5  # the sends did not wait for the black hole's 5 s timeouts
    assert sorted(int(e.get_data()["n"]) for e in good.events()) == list(range(30))


@pytest.mark.rabbitmq
async def test_the_daemon_restarted_mid_stream_loses_nothing(
    amqp_url: str, group: str, unique_name: str, tmp_path: Path
) -> None:
    receiver = Receiver(delay=0.2)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    async with serving(receiver):
        trigger = {
            "name": group,
            "pattern": unique_name,
            "url": receiver.url,
            "secret_file": str(secret_file),
            "max_in_flight": 4,
        }
        env = {
            "CUSTOMEVENT_AMQP__URL": amqp_url,
            "CUSTOMEVENT_TRIGGERS": json.dumps([trigger]),
            "CUSTOMEVENT_GROUPS__RETRY_INITIAL": "0.2",
        }
        daemon = Daemon(f"triggers-{group}", **env)
        await asyncio.to_thread(daemon.start)
        async with Client(load_settings(amqp={"url": amqp_url})) as sender:
            for n in range(40):
                await sender.send_custom_event(unique_name, {"n": str(n)}, event_id=f"{group}-{n}")
            await _until(lambda: len(receiver.received) >= 5, "some deliveries")
            assert await asyncio.to_thread(daemon.stop) == 0
            delivered_before = len(receiver.received)
            await asyncio.to_thread(daemon.start)
            try:
                await _until(
                    lambda: (
                        {e.get_id() for e in receiver.events()}
                        == {f"{group}-{n}" for n in range(40)}
                    ),
                    "every event, after the restart",
                    60,
                )
            finally:
                await asyncio.to_thread(daemon.stop)
    assert delivered_before < 40  # the restart came mid-stream


@pytest.mark.rabbitmq
async def test_trigger_metrics_and_readiness(amqp_url: str, group: str, unique_name: str) -> None:
    receiver = Receiver(answer=lambda n: (204, {}) if n > 1 else (503, {}))
    async with serving(receiver):
        trigger = {**_trigger(group, unique_name, receiver.url)}
        daemon = Daemon(
            f"trigger-metrics-{group}",
            CUSTOMEVENT_AMQP__URL=amqp_url,
            CUSTOMEVENT_TRIGGERS=json.dumps([trigger]),
            CUSTOMEVENT_GROUPS__RETRY_INITIAL="0.2",
        )
        with daemon:
            async with Client(load_settings(amqp={"url": amqp_url})) as sender:
                await sender.send_custom_event(unique_name)
            await _until(lambda: len(receiver.received) == 2, "two deliveries")
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"{daemon.url}/metrics")).text
    assert f'customevent_trigger_deliveries_total{{outcome="retry",trigger="{group}"}} 1.0' in text
    assert f'customevent_trigger_deliveries_total{{outcome="ok",trigger="{group}"}} 1.0' in text
    assert f'customevent_trigger_running{{trigger="{group}"}} 1.0' in text
    assert f'customevent_trigger_in_flight{{trigger="{group}"}} 0.0' in text
    assert f'customevent_trigger_seconds_count{{trigger="{group}"}} 2.0' in text
    # The gauges of the trigger's group, read when it joined: nothing waits, nothing is dead.
    assert f'customevent_group_depth{{group="{group}"}} 0.0' in text
    assert f'customevent_group_dead_letters{{group="{group}"}} 0.0' in text


def test_a_trigger_needs_whsec_secrets_and_a_readable_file(tmp_path: Path) -> None:
    base = {"name": "t", "pattern": "vm.*", "url": "http://x/"}
    with pytest.raises(ConfigurationError, match="as secret or as secret_file"):
        load_settings(triggers=[base])
    with pytest.raises(ConfigurationError, match="trigger 't': secret is not a Standard Webhooks"):
        load_settings(triggers=[{**base, "secret": "a-plain-secret-of-32-characters!"}])
    with pytest.raises(ConfigurationError, match="not base64 after whsec_"):
        load_settings(triggers=[{**base, "secret": "whsec_not base64!"}])
    short = "whsec_" + base64.b64encode(b"15 bytes of key").decode()
    with pytest.raises(ConfigurationError, match=r"\(secret 2\) is a key of 15 bytes, fewer"):
        load_settings(triggers=[{**base, "secret": [SECRET, short]}])
    with pytest.raises(ConfigurationError, match=r"triggers\.url must look like"):
        load_settings(triggers=[{**base, "secret": SECRET, "url": "ftp://x/"}])
    unpadded = load_settings(triggers=[{**base, "secret": SECRET.rstrip("=")}])
    assert unpadded.triggers[0].signing_keys() == [b"a-webhook-secret-of-some-length"]
    settings = load_settings(triggers=[{**base, "secret_file": str(tmp_path / "none")}])
    with pytest.raises(ConfigurationError, match="trigger 't': cannot read secret_file"):
        settings.triggers[0].signing_keys()
    (tmp_path / "empty").write_text("# nothing yet\n\n")
    empty = load_settings(triggers=[{**base, "secret_file": str(tmp_path / "empty")}])
    with pytest.raises(ConfigurationError, match="holds no secret"):
        empty.triggers[0].signing_keys()


async def test_the_webhook_receiver_example_checks_what_a_trigger_sends(unique_name: str) -> None:
    handled: list[tuple[str, str, dict[str, str]]] = []
    with serving_example(handled) as url:
        hooks = [_trigger("docs", "t.#", url), _trigger("docs-bin", "t.#", url, mode="binary")]
        async with running(None, *hooks) as client:
            await client.send_custom_event(unique_name, {"vm": "web-1"}, event_id="docs-1")
            await _until(lambda: len(handled) == 2, "the example to handle the event twice")
        async with httpx.AsyncClient() as http:
            stamp = str(int(time.time()))
            forged = {"webhook-id": "x", "webhook-timestamp": stamp, "webhook-signature": "v1,AA=="}
            forged_answer = await http.post(url, content=b"{}", headers=forged)
            body = b'{"not": "a cloudevent"}'
            signed = Webhook(SECRET).sign(
                "y", datetime.fromtimestamp(int(stamp), UTC), body.decode()
            )
            headers = {"webhook-id": "y", "webhook-timestamp": stamp, "webhook-signature": signed}
            not_an_event = await http.post(url, content=body, headers=headers)
    assert handled == [("docs-1", unique_name, {"vm": "web-1"})] * 2  # structured, binary
    assert forged_answer.status_code == 401
    assert not_an_event.status_code == 400


# -- what the operator sees: outcomes, log lines, group gauges (both buses) ----------------------


@contextlib.asynccontextmanager
async def _triggers_on(
    bus_kind: str, request: pytest.FixtureRequest, *hooks: dict[str, Any]
) -> AsyncIterator[Client]:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    settings = load_settings(amqp={"url": url}, groups=RETRY, triggers=list(hooks))
    opened = Client(settings, metrics=own_metrics()) if url is not None else memory_client(settings)
    async with opened as client:
        try:
            async with Triggers(settings, client, gauge_seconds=0.1):
                yield client
        finally:
            for hook in hooks:
                with contextlib.suppress(GroupNotFound):
                    await client.delete_group(hook["name"], force=True)


async def test_a_retry_that_spends_the_attempts_counts_and_logs_as_a_dead_letter(
    bus_kind: str,
    request: pytest.FixtureRequest,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"t-hook-{uuid.uuid4().hex[:10]}"
    receiver = Receiver(answer=lambda n: (500, {}))
    caplog.set_level(logging.WARNING, logger="adapter.triggers")
    async with serving(receiver):
        hook = _trigger(name, unique_name, receiver.url, max_attempts=2)
        async with _triggers_on(bus_kind, request, hook) as client:
            await client.send_custom_event(unique_name, event_id=f"{name}-x")
            await _until(lambda: len(receiver.received) == 2, "two attempts")
            await _until(
                lambda: sample(client.metrics, "customevent_group_dead_letters", group=name) == 1.0,
                "the dead-letter gauge",
            )
            dead = await client.dead_letters(name)
    assert [d.event.event_id for d in dead] == [f"{name}-x"]
    counted = {
        outcome: sample(
            client.metrics, "customevent_trigger_deliveries_total", trigger=name, outcome=outcome
        )
        for outcome in ("retry", "dead_letter", "ok")
    }
    assert counted == {"retry": 1.0, "dead_letter": 1.0, "ok": 0.0}
    assert sample(client.metrics, "customevent_group_depth", group=name) == 0.0
    mine = [r for r in caplog.records if getattr(r, "trigger", None) == name]
    assert [(r.event_id, r.attempt, r.outcome) for r in mine] == [  # type: ignore[attr-defined]
        (f"{name}-x", 1, "retry"),
        (f"{name}-x", 2, "dead_letter"),
    ]
    assert all(r.reason == f"{receiver.url} answered 500" for r in mine)  # type: ignore[attr-defined]
    assert "attempt 2 of 2" in mine[1].getMessage() and "dead-lettered" in mine[1].getMessage()


async def test_an_unreachable_receiver_is_logged_once_per_attempt_by_trigger_and_event(
    bus_kind: str,
    request: pytest.FixtureRequest,
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"t-hook-{uuid.uuid4().hex[:10]}"
    url = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens
    caplog.set_level(logging.WARNING, logger="adapter.triggers")
    hook = _trigger(name, unique_name, url, max_attempts=1)
    async with _triggers_on(bus_kind, request, hook) as client:
        await client.send_custom_event(unique_name, event_id=f"{name}-u")

        async def buried() -> bool:
            return len(await client.dead_letters(name)) == 1

        async with asyncio.timeout(20):
            while not await buried():
                await asyncio.sleep(0.05)
    mine = [r for r in caplog.records if getattr(r, "trigger", None) == name]
    assert len(mine) == 1
    record = mine[0]
    assert (record.event_id, record.outcome, record.event_name) == (  # type: ignore[attr-defined]
        f"{name}-u",
        "dead_letter",
        unique_name,
    )
    assert "could not be reached (ClientConnectorError" in record.reason  # type: ignore[attr-defined]
    assert record.levelno == logging.WARNING
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["trigger"], entry["event_id"], entry["attempt"]) == (name, f"{name}-u", 1)


async def test_the_gauges_follow_the_depth_of_a_trigger_group(
    bus_kind: str, request: pytest.FixtureRequest, unique_name: str
) -> None:
    name = f"t-hook-{uuid.uuid4().hex[:10]}"
    release = asyncio.Event()
    receiver = Receiver(answer=lambda n: (204, {}))

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await Receiver.app(receiver, scope, receive, send)

    holder = Receiver()
    holder.app = slow  # type: ignore[method-assign]
    async with serving(holder):
        hook = _trigger(name, unique_name, holder.url, max_in_flight=1, timeout=30)
        async with _triggers_on(bus_kind, request, hook) as client:
            for n in range(4):
                await client.send_custom_event(unique_name, event_id=f"{name}-{n}")
            # One is out with the trigger, three wait in the group.
            await _until(
                lambda: sample(client.metrics, "customevent_group_depth", group=name) == 3.0,
                "depth 3",
            )
            release.set()
            await _until(
                lambda: sample(client.metrics, "customevent_group_depth", group=name) == 0.0,
                "depth 0",
            )
            await _until(lambda: len(receiver.received) == 4, "all four delivered")


@pytest.mark.rabbitmq
async def test_a_delivery_the_bridge_itself_fails_is_retried_not_left_unsettled(
    amqp_url: str, group: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception no path expects (here from the HTTP client, on the first attempt): the
    delivery is logged and retried after the backoff. Left unsettled, its message would hold
    a prefetch slot for as long as the trigger ran, and its copies be dropped as duplicates."""
    import aiohttp

    real_post = aiohttp.ClientSession.post
    calls = 0

    def post(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a surprise of the HTTP client")
        return real_post(self, *args, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "post", post)
    receiver = Receiver(answer=lambda n: (204, {}))
    async with serving(receiver):
        hook = _trigger(group, unique_name, receiver.url, max_in_flight=1)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(unique_name, {"a": "1"}, event_id=f"{group}-s")
            await _until(lambda: len(receiver.received) == 1, "the retry")
            await client.send_custom_event(unique_name, {"a": "2"}, event_id=f"{group}-t")
            await _until(lambda: len(receiver.received) == 2, "the next event, in the one slot")
            assert await client.dead_letters(group) == []
    assert [e.get_id() for e in receiver.events()] == [f"{group}-s", f"{group}-t"]
    assert calls == 3


@pytest.mark.parametrize(
    ("environment", "url", "proxy", "authorization"),
    [
        ({"HTTPS_PROXY": "proxy:3128"}, "https://hooks.example/h", "http://proxy:3128", None),
        ({"HTTP_PROXY": "http://p:1"}, "https://hooks.example/h", None, None),
        ({"ALL_PROXY": "http://all:1"}, "https://hooks.example/h", "http://all:1", None),
        (
            {"HTTP_PROXY": "http://u%40x:p%C3%A9ss@p:1"},
            "http://hooks.example/h",
            "http://p:1",
            "Basic " + base64.b64encode("u@x:péss".encode()).decode(),
        ),
        (
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "hooks.example"},
            "http://hooks.example/h",
            None,
            None,
        ),
        (
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": ".example"},
            "http://hooks.example/h",
            None,
            None,
        ),
        (
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "hooks.example:8080"},
            "http://hooks.example:8080/h",
            None,
            None,
        ),
        (
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "hooks.example:8080"},
            "http://hooks.example/h",
            "http://p:1",
            None,
        ),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "*"}, "http://hooks.example/h", None, None),
    ],
)
def test_the_proxy_is_read_from_the_environment_as_http_clients_read_it(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    url: str,
    proxy: str | None,
    authorization: str | None,
) -> None:
    from adapter._triggers import _proxy_for

    for name in ("http", "https", "all", "no"):
        monkeypatch.delenv(f"{name}_proxy", raising=False)
        monkeypatch.delenv(f"{name.upper()}_PROXY", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    found, headers = _proxy_for(url)
    assert found == proxy
    assert (headers or {}).get("Proxy-Authorization") == authorization
