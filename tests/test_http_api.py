"""The daemon's HTTP endpoints, in-process (ASGI), on the in-process bus and on RabbitMQ."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from adapter import Client
from adapter._bus import MemoryBus
from adapter._event import Event
from adapter._exceptions import BusUnavailable
from adapter._http import create_app
from tests.support.http import (
    HEADERS,
    LIMITED,
    asgi_client,
    basic,
    make_settings,
    until_waiting,
)


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(client, make_settings()) as opened:
        opened.headers.update(HEADERS)
        yield opened


async def test_vro_rest_send_reaches_a_waiter(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    async with client.expect("external", unique_name, until=timedelta(seconds=10)) as waiter:
        response = await http.post(
            f"/vco/api/customevent/{unique_name}", params={"properties": "a=1\nb=x=y"}
        )
        event = await waiter
    assert response.status_code == 200
    assert response.content == b""
    assert event is not None
    assert event.properties == {"a": "1", "b": "x=y"}
    assert (event.kind, event.source, event.principal) == ("external", "http", "ops")
    assert response.headers["x-event-id"] == event.event_id


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"color=blue\r\nsize = 3\n\n"),
        (None, b"color=blue\nsize = 3"),
        ("application/x-www-form-urlencoded", b"properties=color%3Dblue%0Asize%20%3D%203"),
    ],
)
async def test_vro_rest_properties_in_the_body(
    client: Client,
    http: httpx.AsyncClient,
    unique_name: str,
    content_type: str | None,
    body: bytes,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    async with client.expect("external", unique_name, until=timedelta(seconds=10)) as waiter:
        response = await http.post(
            f"/vco/api/customevent/{unique_name}", content=body, headers=headers
        )
        event = await waiter
    assert response.status_code == 200, response.text
    assert event is not None
    assert event.properties == {"color": "blue", "size": " 3"}  # values keep their spaces


@pytest.mark.parametrize(
    ("path", "params", "body", "words"),
    [
        ("t.ok", {"properties": "novalue"}, None, "line 1: no '='"),
        ("t.ok", {"properties": "a=1\na=2"}, None, "given twice"),
        ("t.ok", {"properties": "a=1"}, b"b=2", "not both"),
        ("t..bad", {}, None, "empty word"),
        ("t.bad.", {}, None, "must not end with '.'"),
        ("t.a*b", {}, None, "must not contain '*'"),
        ("t.ok", {}, b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_vro_rest_bad_input_is_400_with_the_rule(
    http: httpx.AsyncClient, path: str, params: dict[str, str], body: bytes | None, words: str
) -> None:
    response = await http.post(f"/vco/api/customevent/{path}", params=params, content=body)
    assert response.status_code == 400
    assert words in response.json()["detail"]


async def test_properties_over_the_limit_are_413(unique_name: str) -> None:
    settings = make_settings(limits={"max_bytes": 64})
    async with Client(settings) as client, asgi_client(client, settings) as http:
        response = await http.post(
            f"/vco/api/customevent/{unique_name}",
            params={"properties": "a=" + "x" * 100},
            headers=HEADERS,
        )
    assert response.status_code == 413
    assert "limit of 64 bytes" in response.json()["detail"]


async def test_body_over_max_body_bytes_is_413(client: Client, unique_name: str) -> None:
    settings = make_settings(http={"max_body_bytes": 2048})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"a=" + b"x" * 1000 + b"\n"

    async with asgi_client(client, settings) as http:
        response = await http.post(
            f"/vco/api/customevent/{unique_name}", content=chunks(), headers=HEADERS
        )
    assert response.status_code == 413
    assert "2048 bytes" in response.json()["detail"]


async def test_json_send_is_202_with_routed(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    nobody = await http.post(f"/api/v1/events/{unique_name}", json={"properties": {"a": "1"}})
    assert nobody.status_code == 202
    assert nobody.json()["routed"] is False
    async with client.expect("external", unique_name, until=timedelta(seconds=10)) as waiter:
        response = await http.post(
            f"/api/v1/events/{unique_name}",
            json={"properties": {"text": "line 1, line 2"}, "event_id": "my-id-1"},
        )
        event = await waiter
    assert response.status_code == 202
    assert response.json() == {
        "event_id": "my-id-1",
        "routed": True,
        "retained": False,
        "outcome": "routed",
    }
    assert event is not None
    assert event.event_id == "my-id-1"
    assert event.properties == {"text": "line 1, line 2"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "the request body is not JSON"),
        (b'{"properties": {"a": 1}}', "properties.a"),
        (b'{"kind": "internal"}', "kind"),
        (b'{"event_id": ""}', "event_id"),
        (b"[]", "body"),
    ],
)
async def test_json_send_bad_body_is_400(
    http: httpx.AsyncClient, unique_name: str, body: bytes, words: str
) -> None:
    response = await http.post(
        f"/api/v1/events/{unique_name}", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert words in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            b'{"properties": {"note=approved": "true"}}',
            "property name 'note=approved' contains '='",
        ),
        (b'{"properties": {"a\\nb": "1"}}', "property name 'a\\nb' contains a control character"),
        (b'{"properties": {"": "1"}}', "empty property name"),
        (b'{"properties": {" a": "1"}}', "surrounding spaces"),
        (b'{"properties": {"note": "hi\\napproved=true"}}', "value of property 'note'"),
        (b'{"properties": {"note": "hi\\r"}}', "value of property 'note'"),
        (b'{"properties": {"a": "1", "a": "2"}}', "'a' given twice in a JSON object"),
        (b'{"properties": {"a": "1"}, "properties": {}}', "'properties' given twice"),
    ],
)
async def test_json_send_refuses_properties_that_could_forge_output(
    client: Client, http: httpx.AsyncClient, unique_name: str, body: bytes, words: str
) -> None:
    # Each of these once reached a waiter, whose `key=value` output then showed a property that
    # was never sent (`approved=true`), or silently dropped one of two values. The refusal comes
    # before any publish, and a published event reaches a bound waiter within milliseconds (on
    # RabbitMQ too): half a second of "nothing" is as telling as more.
    async with client.expect("external", unique_name, until=timedelta(seconds=0.5)) as waiter:
        response = await http.post(
            f"/api/v1/events/{unique_name}",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert words in response.json()["detail"]
        assert await waiter is None


async def _wait_task(
    http: httpx.AsyncClient, name: str, **params: str
) -> asyncio.Task[httpx.Response]:
    return asyncio.create_task(http.get(f"/api/v1/events/{name}/wait", params=params))


async def test_http_wait_gets_the_event(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    waiting = await _wait_task(http, unique_name, timeout="20s")
    await until_waiting(client)
    await client.send_custom_event(unique_name, {"k": "v"}, kind="external")
    response = await waiting
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == unique_name
    assert body["properties"] == {"k": "v"}
    assert body["kind"] == "external"


async def test_http_wait_on_internal_events_and_patterns(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    until = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
    waiting = await _wait_task(http, f"{unique_name}.*", until=until, kind="internal")
    await until_waiting(client)
    await client.send_custom_event(f"{unique_name}.one", {}, kind="internal")
    response = await waiting
    assert response.status_code == 200
    assert response.json()["name"] == f"{unique_name}.one"
    assert response.json()["kind"] == "internal"


async def test_http_wait_is_204_at_the_deadline(http: httpx.AsyncClient, unique_name: str) -> None:
    response = await http.get(f"/api/v1/events/{unique_name}/wait", params={"timeout": "0.2"})
    assert response.status_code == 204
    assert response.content == b""


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, "either timeout= (30s, 5m) or until="),
        ({"timeout": "1s", "until": "2030-01-01T00:00:00Z"}, "either"),
        ({"timeout": "soon"}, "timeout 'soon' is neither"),
        ({"until": "2030-01-01T00:00:00"}, "no time zone"),
        ({"timeout": "2h"}, "http.max_wait"),
        ({"timeout": "1s", "wait_id": "bad id"}, "wait_id"),
        ({"timeout": "1s", "kind": "other"}, "kind"),
    ],
)
async def test_http_wait_bad_parameters_are_400(
    http: httpx.AsyncClient, unique_name: str, params: dict[str, str], words: str
) -> None:
    response = await http.get(f"/api/v1/events/{unique_name}/wait", params=params)
    assert response.status_code == 400
    assert words in response.json()["detail"]


async def test_resumable_http_wait_gets_what_came_while_away(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    first = await http.get(
        f"/api/v1/events/{unique_name}/wait", params={"timeout": "0.3s", "wait_id": unique_name}
    )
    assert first.status_code == 204
    waiting = await _wait_task(http, unique_name, timeout="10s", wait_id=unique_name)
    await until_waiting(client)
    await client.send_custom_event(unique_name, {"n": "1"}, kind="external")
    assert (await waiting).json()["properties"] == {"n": "1"}


async def test_health_readiness_metrics_and_openapi(
    http: httpx.AsyncClient, unique_name: str
) -> None:
    await http.post(f"/vco/api/customevent/{unique_name}")
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metrics = (await http.get("/metrics")).text
    assert 'customevent_sends_total{ingress="rest",outcome="ok"}' in metrics
    assert "customevent_publish_seconds_bucket" in metrics
    assert "customevent_http_waits_active" in metrics
    openapi = (await http.get("/openapi.json")).json()
    assert "/vco/api/customevent/{eventName}" in openapi["paths"]
    assert "/api/v1/events/{name}/wait" in openapi["paths"]
    assert openapi["components"]["securitySchemes"]["basic"]["scheme"] == "basic"


class _DownBus(MemoryBus):
    """The in-process bus as a broker that cannot confirm."""

    @property
    def connected(self) -> bool:
        return False

    async def publish(self, event: Event) -> bool:
        raise BusUnavailable("RabbitMQ is not connected; the event was not sent")


async def test_unconfirmed_send_is_503_and_never_a_success(unique_name: str) -> None:
    settings = make_settings()
    async with Client(settings, bus=_DownBus()) as client, asgi_client(client, settings) as http:
        http.headers.update(HEADERS)
        rest = await http.post(f"/vco/api/customevent/{unique_name}", params={"properties": "a=1"})
        api = await http.post(f"/api/v1/events/{unique_name}", json={})
        ready = await http.get("/readyz")
    for response in (rest, api, ready):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
    assert "not connected" in rest.json()["detail"]


@pytest.mark.rabbitmq
async def test_broker_loss_is_503_then_recovers(amqp_url: str, unique_name: str) -> None:

    from tests.support.proxy import Proxy

    async with Proxy.in_front_of(amqp_url) as proxy:
        url = proxy.url()
        settings = make_settings(url, amqp={"reconnect_interval": 0.2, "publish_timeout": 2.0})
        async with Client(settings) as client, asgi_client(client, settings) as http:
            http.headers.update(HEADERS)
            path = f"/vco/api/customevent/{unique_name}"
            assert (await http.post(path)).status_code == 200
            proxy.refuse()
            down = await http.post(path)
            assert down.status_code == 503
            assert (await http.get("/readyz")).status_code == 503
            proxy.restore()
            # Channels come back a moment after the connection: until then sends keep
            # answering 503 (as a caller honouring Retry-After would see), never a success.
            async with asyncio.timeout(30):
                while (status := (await http.post(path)).status_code) != 200:
                    assert status == 503
                    await asyncio.sleep(0.05)


async def test_open_waits_are_capped_per_caller_and_per_daemon(
    client: Client, unique_name: str
) -> None:
    settings = make_settings(http={"max_waits": 3, "max_waits_per_caller": 2})
    async with asgi_client(client, settings) as http:
        http.headers.update(HEADERS)
        held = [await _wait_task(http, unique_name, timeout="20s") for _ in range(2)]
        await until_waiting(client, 2)
        refused = await http.get(f"/api/v1/events/{unique_name}/wait", params={"timeout": "5s"})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert "limit is 2 (http.max_waits_per_caller)" in refused.json()["detail"]
        # Another caller still has room, up to the daemon's bound.
        limited = basic(*LIMITED)
        other = asyncio.create_task(
            http.get("/api/v1/events/t.limited.x/wait?timeout=20s", headers=limited)
        )
        await until_waiting(client, 3)
        full = await http.get("/api/v1/events/t.limited.y/wait?timeout=5s", headers=limited)
        assert full.status_code == 429
        assert "(http.max_waits)" in full.json()["detail"]
        await client.send_custom_event(unique_name, kind="external")
        assert [(await task).status_code for task in held] == [200, 200]
        again = await http.get(f"/api/v1/events/{unique_name}/wait", params={"timeout": "0.1s"})
        assert again.status_code == 204
        await client.send_custom_event("t.limited.x", kind="external")
        assert (await other).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "words"),
    [
        ("POST", "/api/v1/events/t.%ff", "not valid UTF-8 once percent-decoded"),
        ("POST", "/vco/api/customevent/t.%c3%28", "not valid UTF-8 once percent-decoded"),
        ("GET", "/api/v1/events/t.%ff/wait?timeout=1s", "not valid UTF-8 once percent-decoded"),
        ("POST", "/api/v1/events/t.a/b", "must not contain '/'"),
        ("POST", "/vco/api/customevent/t.a%2Fb", "must not contain '/'"),
        ("GET", "/api/v1/events/t.a%2Fb/wait?timeout=1s", "must not contain '/'"),
        ("GET", "/api/v1/events/t.x/wait?timeout=999999999999s", "too far in the future"),
        ("GET", "/api/v1/events/t.x/wait?timeout=-5s", "negative"),
    ],
)
async def test_odd_paths_and_deadlines_are_400_naming_the_rule(
    http: httpx.AsyncClient, method: str, path: str, words: str
) -> None:
    # These were a send to a name with U+FFFD in it, a bare 404, and a 500 with a traceback.
    response = await http.request(method, path)
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"]


async def test_two_authorization_headers_are_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/vco/api/customevent/t.x",
        headers=[("authorization", HEADERS["Authorization"]), ("authorization", "Bearer x")],
    )
    assert response.status_code == 400
    assert "give one Authorization header, not 2" in response.json()["detail"]


@pytest.mark.parametrize("bus_kind", ["memory"], indirect=True)
async def test_the_access_log_records_what_a_streamed_wait_answered(
    client: Client, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="adapter.http.access")
    settings = make_settings(None)
    app = create_app(settings, client)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://daemon.test", headers=HEADERS
    ) as http:
        path = f"/api/v1/events/{unique_name}/wait"
        deadline = await http.get(path, params={"timeout": "0.2s", "stream": "true"})
        waiting = asyncio.create_task(http.get(path, params={"timeout": "30s", "stream": "true"}))
        await until_waiting(client)
        app.state.gateway.stopping.set()  # the daemon stops: the outcome is 503
        streamed = await waiting
        plain = await http.get(path, params={"timeout": "30s"})  # refused at once: 503
    assert (deadline.status_code, json.loads(deadline.content)["status"]) == (200, 204)
    assert (streamed.status_code, json.loads(streamed.content)["status"]) == (200, 503)
    lines = [r for r in caplog.records if r.name == "adapter.http.access"]
    seen = [(r.status, getattr(r, "status_line", None)) for r in lines]  # type: ignore[attr-defined]
    assert seen == [(204, 200), (503, 200), (503, None)]
    assert plain.status_code == 503
    assert lines[1].getMessage() == f"GET {path} 503 (streamed; status line 200)"
    assert lines[2].getMessage() == f"GET {path} 503"
