"""Triggers of target ``vro``: each event starts a vRO workflow through the vRO REST API. Tested
against a stand-in that checks the documented request format (tests/support/vro.py), on both
buses and through the daemon: the parameters, Basic and bearer credentials, retries, dead
letters, and hostile answers (huge, dripping). None of it has met a live vRO."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from adapter._triggers import REPLY_BYTES
from tests.support.processes import Daemon
from tests.support.vro import (
    TOKEN,
    WORKFLOW_ID,
    Answer,
    VroStandIn,
    basic,
    serving,
    vro_trigger,
)
from tests.support.webhooks import delete_group_queues, running, until

MiB = 1024 * 1024


@pytest.fixture
def group() -> Iterator[str]:
    name = f"t-vro-{uuid.uuid4().hex[:10]}"
    yield name
    delete_group_queues(name)


def _amqp(bus_kind: str, request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None


async def test_an_event_starts_the_workflow_with_its_properties_as_string_parameters(
    bus_kind: str, request: pytest.FixtureRequest, group: str, unique_name: str
) -> None:
    attributes = {"id": "eventId", "name": "eventName", "principal": "sentBy", "kind": "kind"}
    async with serving(VroStandIn()) as vro:
        hook = vro_trigger(group, f"{unique_name}.*", vro.url, event_parameters=attributes)
        async with running(_amqp(bus_kind, request), hook) as client:
            await client.send_custom_event(
                f"{unique_name}.created",
                {"vm": "web-01", "note": "a=b, c  ", "empty": ""},
                event_id=f"{group}-1",
                principal="ops",
            )
            await until(lambda: len(vro.executions) == 1, "the workflow execution")
            await asyncio.sleep(0.5)  # acknowledged: nothing more comes
            dead = await client.dead_letters(group)
    assert vro.problems == []
    assert len(vro.requests) == 1 and dead == []
    (execution,) = vro.executions
    assert execution.workflow_id == WORKFLOW_ID
    assert execution.parameters == {
        "eventId": f"{group}-1",
        "eventName": f"{unique_name}.created",
        "sentBy": "ops",
        "kind": "internal",
        "vm": "web-01",
        "note": "a=b, c  ",
        "empty": "",
    }
    assert execution.headers["authorization"] == basic()
    assert execution.headers["webhook-id"] == f"{group}-1"
    assert "webhook-signature" not in execution.headers


@pytest.mark.rabbitmq
async def test_a_bearer_token_from_its_file_authenticates(
    amqp_url: str, group: str, unique_name: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    hook = vro_trigger(group, unique_name, "", token_file=str(token_file))
    del hook["username"], hook["password"]
    async with serving(VroStandIn(authorization=f"Bearer {TOKEN}")) as vro:
        hook["url"] = vro.url + "/"  # a trailing slash is the same address
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-b")
            await until(lambda: len(vro.executions) == 1, "the workflow execution")
    assert vro.problems == []
    assert vro.executions[0].parameters == {}  # no properties, no event_parameters
    assert vro.executions[0].headers["authorization"] == f"Bearer {TOKEN}"


@pytest.mark.rabbitmq
async def test_500_is_retried_then_202_acknowledges(
    amqp_url: str, group: str, unique_name: str
) -> None:
    def answer(n: int) -> Answer | None:
        return (500, {}, b"busy") if n == 1 else None

    async with serving(VroStandIn(answer=answer)) as vro:
        async with running(amqp_url, vro_trigger(group, unique_name, vro.url)) as client:
            await client.send_custom_event(unique_name, {"vm": "web-02"}, event_id=f"{group}-r")
            await until(lambda: len(vro.executions) == 2, "the retry")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
    assert dead == []
    assert [e.parameters for e in vro.executions] == [{"vm": "web-02"}] * 2
    assert vro.executions[1].at - vro.executions[0].at >= 0.15  # after the backoff
    assert vro.executions[0].headers["webhook-id"] == vro.executions[1].headers["webhook-id"]


@pytest.mark.rabbitmq
async def test_400_is_a_dead_letter_with_vros_reason(
    amqp_url: str, group: str, unique_name: str
) -> None:
    def answer(n: int) -> Answer | None:
        return 400, {"Content-Type": "application/json"}, b'{"message":"no such input vm"}'

    async with serving(VroStandIn(answer=answer)) as vro:
        async with running(amqp_url, vro_trigger(group, unique_name, vro.url)) as client:
            await client.send_custom_event(unique_name, {"vm": "x"}, event_id=f"{group}-400")
            await until(lambda: len(vro.requests) == 1, "the execution request")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
    assert len(vro.requests) == 1
    executions = f"{vro.url}/vco/api/workflows/{WORKFLOW_ID}/executions"
    assert [(d.event.event_id, d.reason, d.attempts) for d in dead] == [
        (f"{group}-400", f'{executions} answered 400: {{"message":"no such input vm"}}', 1)
    ]


@pytest.mark.rabbitmq
async def test_a_refused_credential_401_is_a_dead_letter_at_once(
    amqp_url: str, group: str, unique_name: str
) -> None:
    async with serving(VroStandIn(authorization=basic(password="another one"))) as vro:
        async with running(amqp_url, vro_trigger(group, unique_name, vro.url)) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-401")
            await until(lambda: len(vro.requests) == 1, "the execution request")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
    assert vro.executions == [] and len(vro.requests) == 1
    assert [d.reason for d in dead] == [
        f"{vro.url}/vco/api/workflows/{WORKFLOW_ID}/executions answered 401"
    ]


@pytest.mark.rabbitmq
async def test_a_property_cannot_pose_as_an_event_parameter(
    amqp_url: str, group: str, unique_name: str
) -> None:
    hook_settings = {"event_parameters": {"principal": "sentBy"}}
    async with serving(VroStandIn()) as vro:
        hook = vro_trigger(group, unique_name, vro.url, **hook_settings)
        async with running(amqp_url, hook) as client:
            forged = {"sentBy": "admin"}
            await client.send_custom_event(unique_name, forged, event_id=f"{group}-forged")
            await client.send_custom_event(unique_name, {"vm": "ok"}, event_id=f"{group}-ok")
            await until(lambda: len(vro.executions) == 1, "the honest event's execution")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
    assert len(vro.requests) == 1  # the forged one was never posted
    assert vro.executions[0].parameters == {"vm": "ok"}  # no principal known: left out
    ((event_id, reason),) = [(d.event.event_id, d.reason) for d in dead]
    assert event_id == f"{group}-forged"
    assert reason.endswith(
        "property 'sentBy' has the name of the parameter that carries the event's principal "
        "(event_parameters)"
    )


# -- hostile answers -------------------------------------------------------------------------------


async def _endless(chunk: bytes) -> AsyncIterator[bytes]:
    for _ in range(200 * MiB // len(chunk)):  # 200 MiB, if anyone read it all
        yield chunk


@pytest.mark.rabbitmq
@pytest.mark.parametrize("status", [202, 400])
async def test_a_huge_answer_is_read_to_its_bound_and_settled_by_its_status(
    amqp_url: str, group: str, unique_name: str, status: int
) -> None:
    def answer(n: int) -> Answer | None:
        return status, {"Content-Type": "text/plain"}, _endless(b"z" * 65536)

    async with serving(VroStandIn(answer=answer)) as vro:
        async with running(amqp_url, vro_trigger(group, unique_name, vro.url)) as client:
            started = time.monotonic()
            await client.send_custom_event(unique_name, event_id=f"{group}-huge")
            await until(lambda: len(vro.requests) == 1, "the execution request")
            await asyncio.sleep(1)
            dead = await client.dead_letters(group)
            settled = time.monotonic() - started
    assert len(vro.requests) == 1  # settled at once, neither retried nor left hanging
    assert settled < 10
    if status == 202:
        assert dead == []
    else:
        ((reason,),) = [(d.reason,) for d in dead]
        assert reason.startswith(
            f"{vro.url}/vco/api/workflows/{WORKFLOW_ID}/executions answered 400: zzz"
        )
        assert len(reason) < REPLY_BYTES


@pytest.mark.rabbitmq
async def test_a_dripping_answer_is_cut_at_the_timeout_and_retried(
    amqp_url: str, group: str, unique_name: str
) -> None:
    timeout = 1.5

    async def drip() -> AsyncIterator[bytes]:
        for _ in range(10):  # a byte a second: ten seconds for the whole answer
            yield b"."
            await asyncio.sleep(1)

    def answer(n: int) -> Answer | None:
        return (202, {"Content-Length": "10"}, drip()) if n == 1 else None

    async with serving(VroStandIn(answer=answer)) as vro:
        hook = vro_trigger(group, unique_name, vro.url, timeout=timeout)
        async with running(amqp_url, hook) as client:
            await client.send_custom_event(unique_name, event_id=f"{group}-drip")
            await until(lambda: len(vro.executions) == 2, "the retry after the cut", 20)
            dead = await client.dead_letters(group)
    assert dead == []
    gap = vro.executions[1].at - vro.executions[0].at
    assert timeout <= gap < timeout + 5  # cut at the timeout, not after the ten seconds


# -- through the daemon ----------------------------------------------------------------------------


@pytest.mark.rabbitmq
async def test_the_daemon_starts_a_workflow_for_an_event_sent_to_its_vro_rest_path(
    amqp_url: str, group: str, unique_name: str, tmp_path: Path
) -> None:
    password_file = tmp_path / "vro-password"
    password_file.write_text("pa:ss wörd\n")
    async with serving(VroStandIn()) as vro:
        hook = vro_trigger(group, unique_name, vro.url, kind="external")
        del hook["password"]
        hook["password_file"] = str(password_file)
        hook["event_parameters"] = {"id": "eventId"}
        daemon = Daemon(
            f"vro-{group}", CUSTOMEVENT_AMQP__URL=amqp_url, CUSTOMEVENT_TRIGGERS=json.dumps([hook])
        )
        with daemon:
            async with httpx.AsyncClient() as http:
                sent = await http.post(
                    f"{daemon.url}/vco/api/customevent/{unique_name}",
                    params={"properties": "vm=web-03\nowner=ops"},
                )
                assert sent.status_code == 200, sent.text
                await until(lambda: len(vro.executions) == 1, "the workflow execution")
                await asyncio.sleep(0.5)
                metrics = (await http.get(f"{daemon.url}/metrics")).text
    assert vro.problems == []
    parameters = vro.executions[0].parameters
    assert parameters.pop("eventId")  # the id the daemon gave the event
    assert parameters == {"vm": "web-03", "owner": "ops"}
    assert f'customevent_trigger_deliveries_total{{outcome="ok",trigger="{group}"}} 1.0' in metrics
