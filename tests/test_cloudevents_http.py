"""CloudEvents over HTTP, with the CloudEvents SDK as the client: ``POST /api/v1/cloudevents`` in
binary, structured and batch mode, the wait answering a structured CloudEvent, and
``customevent wait --cloudevent`` printing a posted CloudEvent back exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from adapter import Client
from tests.support.http import (
    HEADERS,
    LIMITED,
    ThreadedDaemon,
    asgi_client,
    basic,
    make_settings,
    url_with_credentials,
)

STRUCTURED = {"Accept": "application/cloudevents+json"}


def _cloudevent(name: str, **attributes: object) -> CloudEvent:
    base: dict[str, object] = {
        "type": name,
        "source": "https://devices.example.com/plant-3/press-7",
        "time": datetime(2026, 7, 8, 9, 10, 11, 121314, tzinfo=UTC),
        "datacontenttype": "application/json",
        "subject": "cycle-42",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    base.update(attributes)
    return CloudEvent(base, {"ok": "1", "press": "7"})


def _post(cloudevent: CloudEvent, mode: str) -> sdk_http.HTTPMessage:
    write = sdk_http.to_binary if mode == "binary" else sdk_http.to_structured
    return write(cloudevent, JSONFormat())


def _expected(cloudevent: CloudEvent, principal: str = "ops") -> dict[str, object]:
    """What the bridge gives back: everything the sender gave, and what only it may say."""
    return {**cloudevent.get_attributes(), "eventkind": "external", "principal": principal}


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(http={"max_batch": 3, "rate_limit": 100.0, "rate_burst": 5})
    async with asgi_client(client, settings) as opened:
        opened.headers.update(HEADERS)
        yield opened


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_a_posted_cloudevent_comes_back_as_the_same_cloudevent(
    http: httpx.AsyncClient, unique_name: str, mode: str
) -> None:
    original = _cloudevent(unique_name)
    message = _post(original, mode)
    sent = await http.post(
        "/api/v1/cloudevents",
        params={"retain": "60s"},
        headers=message.headers,
        content=message.body,
    )
    assert sent.status_code == 202, sent.text
    assert sent.json() == {
        "event_id": original.get_id(),
        "routed": False,
        "retained": True,
        "outcome": "retained",
    }
    # Retained, so a wait that starts now still gets it: as a structured CloudEvent...
    waited = await http.get(
        f"/api/v1/events/{unique_name}/wait", params={"timeout": "5s"}, headers=STRUCTURED
    )
    assert waited.status_code == 200, waited.text
    assert waited.headers["content-type"] == "application/cloudevents+json"
    back = sdk_http.from_http(
        sdk_http.HTTPMessage(dict(waited.headers), waited.content), JSONFormat(), CloudEvent
    )
    assert back.get_attributes() == _expected(original)
    assert back.get_data() == original.get_data()
    # ...and as the event, which keeps what the mapping does not give.
    plain = await http.get(f"/api/v1/events/{unique_name}/wait", params={"timeout": "5s"})
    event = plain.json()
    assert event["name"] == unique_name
    assert event["kind"] == "external"
    assert event["source"] == "http"
    assert event["cloudevent_attributes"]["source"] == original.get_source()
    # Stream mode carries the CloudEvent in its outcome.
    streamed = await http.get(
        f"/api/v1/events/{unique_name}/wait",
        params={"timeout": "5s", "stream": "true"},
        headers=STRUCTURED,
    )
    outcome = json.loads(streamed.content)
    assert outcome["status"] == 200
    assert outcome["cloudevent"]["id"] == original.get_id()


async def test_a_batch_is_sent_in_order_with_a_result_each(
    http: httpx.AsyncClient, unique_name: str
) -> None:
    batch = [_cloudevent(f"{unique_name}.{i}", id=f"b{i}") for i in range(3)]
    body = json.dumps([json.loads(JSONFormat().write(e)) for e in batch])
    sent = await http.post(
        "/api/v1/cloudevents",
        params={"retain": "60s"},
        headers={"Content-Type": "application/cloudevents-batch+json"},
        content=body,
    )
    assert sent.status_code == 202, sent.text
    kept = {"routed": False, "retained": True, "outcome": "retained"}
    assert sent.json() == {"results": [{"event_id": f"b{i}", **kept} for i in range(3)]}
    for i in range(3):
        waited = await http.get(f"/api/v1/events/{unique_name}.{i}/wait", params={"timeout": "5s"})
        assert waited.json()["event_id"] == f"b{i}"


@pytest.mark.parametrize(
    ("second", "status", "words"),
    [
        ({"type": "t.bad/name"}, 400, "CloudEvent 2 of 2 in the batch: invalid event name"),
        ({"type": "vm.x.y"}, 403, "CloudEvent 2 of 2 in the batch: 'ops' may not use"),
        ({"eventkind": "internal"}, 400, "CloudEvent 2 of 2 in the batch: CloudEvent eventkind"),
        ({"principal": "root"}, 400, "principal 'root' does not match"),
    ],
)
async def test_a_batch_is_checked_whole_before_anything_is_sent(
    http: httpx.AsyncClient,
    unique_name: str,
    second: dict[str, object],
    status: int,
    words: str,
) -> None:
    good = json.loads(JSONFormat().write(_cloudevent(unique_name)))
    bad = {**json.loads(JSONFormat().write(_cloudevent(unique_name))), **second}
    sent = await http.post(
        "/api/v1/cloudevents",
        params={"retain": "60s"},
        headers={"Content-Type": "application/cloudevents-batch+json"},
        content=json.dumps([good, bad]),
    )
    assert sent.status_code == status, sent.text
    assert words in sent.json()["detail"]
    # The good one was not sent either (it would have been retained).
    waited = await http.get(f"/api/v1/events/{unique_name}/wait", params={"timeout": "300ms"})
    assert waited.status_code == 204


async def test_cloudevents_share_the_sends_rules(http: httpx.AsyncClient, unique_name: str) -> None:
    message = _post(_cloudevent(unique_name), "binary")
    post = "/api/v1/cloudevents"
    anonymous = await http.post(
        post, headers={**message.headers, "Authorization": ""}, content=message.body
    )
    assert anonymous.status_code == 401
    limited = await http.post(
        post, headers={**message.headers, **basic(*LIMITED)}, content=message.body
    )
    assert limited.status_code == 403
    four = [json.loads(JSONFormat().write(_cloudevent(unique_name))) for _ in range(4)]
    batch = {"Content-Type": "application/cloudevents-batch+json"}
    too_many = await http.post(post, headers=batch, content=json.dumps(four))
    assert too_many.status_code == 413
    assert "http.max_batch (3)" in too_many.json()["detail"]
    not_one = await http.post(post, headers={"Content-Type": "application/json"}, content=b"{}")
    assert not_one.status_code == 400
    assert "not a CloudEvent" in not_one.json()["detail"]


async def test_the_rate_counts_each_cloudevent_of_a_batch(client: Client, unique_name: str) -> None:
    # 3 + 3 pass a burst of 5 only in part. The bucket refills so slowly here that the time the
    # first batch takes (a loaded machine, a broker's confirms) cannot refill it.
    settings = make_settings(http={"max_batch": 3, "rate_limit": 0.01, "rate_burst": 5})
    four = [json.loads(JSONFormat().write(_cloudevent(unique_name))) for _ in range(4)]
    batch = {"Content-Type": "application/cloudevents-batch+json"}
    three = json.dumps(four[:3])
    async with asgi_client(client, settings) as http:
        http.headers.update(HEADERS)
        post = "/api/v1/cloudevents"
        assert (await http.post(post, headers=batch, content=three)).status_code == 202
        limited_rate = await http.post(post, headers=batch, content=three)
    assert limited_rate.status_code == 429
    assert "retry-after" in limited_rate.headers


async def test_the_openapi_document_describes_cloudevents(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    operation = document["paths"]["/api/v1/cloudevents"]["post"]
    content = operation["requestBody"]["content"]
    assert {"application/cloudevents+json", "application/cloudevents-batch+json"} <= set(content)
    assert {"202", "400", "401", "403", "413", "429", "503"} <= set(operation["responses"])
    wait = document["paths"]["/api/v1/events/{name}/wait"]["get"]["responses"]["200"]
    assert "application/cloudevents+json" in wait["content"]
    send = document["paths"]["/api/v1/events/{name}"]["post"]
    assert "retain" in send["requestBody"]["content"]["application/json"]["schema"]["properties"]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_customevent_wait_prints_a_posted_cloudevent_back_exactly(
    unique_name: str, mode: str
) -> None:
    original = _cloudevent(unique_name, id=f"{mode}-1")
    message = _post(original, mode)
    with ThreadedDaemon(make_settings()) as daemon:
        sent = httpx.post(
            f"{daemon.url}/api/v1/cloudevents",
            params={"retain": "60s"},
            headers={**message.headers, **HEADERS},
            content=message.body,
        )
        assert sent.status_code == 202, sent.text
        waited = subprocess.run(
            [
                *(sys.executable, "-m", "adapter._cli", "wait", unique_name, "--until", "5s"),
                *("--cloudevent", "--url", url_with_credentials(daemon)),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")},
            check=False,
        )
    assert waited.returncode == 0, waited.stderr
    assert waited.stderr == ""
    printed = JSONFormat().read(CloudEvent, waited.stdout)
    assert printed.get_attributes() == _expected(original)
    assert printed.get_data() == original.get_data()
