"""Retained events across processes and replicas on RabbitMQ: the CLI in two processes (the
issue's "done when"), and two bridge daemons sharing one broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest

from adapter import Client
from tests.support.http import HEADERS, ThreadedDaemon, make_settings, url_with_credentials

pytestmark = pytest.mark.rabbitmq


def _customevent(*args: str, amqp_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CUSTOMEVENT_AMQP__URL": amqp_url},
        check=False,
    )


def test_a_retained_send_reaches_a_wait_in_another_process(amqp_url: str, unique_name: str) -> None:
    sent = _customevent("send", unique_name, "-p", "ok=1", "--retain", "60s", amqp_url=amqp_url)
    assert sent.returncode == 0, sent.stderr
    # Not "nobody received it": the wait below does.
    assert "no waiter was bound yet; retained for 60s" in sent.stdout
    waited = _customevent("wait", unique_name, "--until", "5s", amqp_url=amqp_url)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout == "ok=1\n"


def test_the_cli_checks_retain(amqp_url: str, unique_name: str) -> None:
    for value, words in (("soon", "not a duration"), ("2h", "amqp.max_retain"), ("0s", "positive")):
        sent = _customevent("send", unique_name, "--retain", value, amqp_url=amqp_url)
        assert sent.returncode == 64
        assert words in sent.stderr


def test_two_daemons_share_the_retained_events(amqp_url: str, unique_name: str) -> None:
    settings = make_settings(amqp_url)
    with ThreadedDaemon(settings) as first, ThreadedDaemon(settings) as second:
        with httpx.Client(headers=HEADERS, timeout=30) as http:
            sent = http.post(
                f"{first.url}/vco/api/customevent/{unique_name}",
                params={"properties": "ok=1", "retain": "30s"},
            )
            assert sent.status_code == 200, sent.text
            waited = http.get(
                f"{second.url}/api/v1/events/{unique_name}/wait", params={"timeout": "5s"}
            )
            assert waited.status_code == 200, waited.text
            assert waited.json()["properties"] == {"ok": "1"}
            assert waited.json()["event_id"] == sent.headers["x-event-id"]
            # And the JSON API's retain, read back through the other daemon by the library.
            again = http.post(
                f"{second.url}/api/v1/events/{unique_name}",
                json={"properties": {"ok": "2"}, "retain": "30s"},
            )
            assert again.status_code == 202, again.text

        async def library_wait() -> dict[str, str] | None:
            async with Client(url_with_credentials(first)) as client:
                event = await client.wait_custom_event_until(
                    "external", unique_name, timedelta(seconds=5)
                )
            return None if event is None else event.properties

        assert asyncio.run(library_wait()) == {"ok": "2"}


def test_a_bad_retain_over_http_is_400(amqp_url: str, unique_name: str) -> None:
    with ThreadedDaemon(make_settings(amqp_url)) as daemon:
        with httpx.Client(base_url=daemon.url, headers=HEADERS, timeout=30) as http:
            for params, words in (
                ({"retain": "forever"}, "retain 'forever' is not a duration"),
                ({"retain": "2h"}, "amqp.max_retain"),
                ({"retain": ["1s", "2s"]}, "retain more than once"),
            ):
                answer = http.post(f"/vco/api/customevent/{unique_name}", params=params)
                assert answer.status_code == 400, answer.text
                assert words in answer.json()["detail"]
            answer = http.post(f"/api/v1/events/{unique_name}", json={"retain": 30})
            assert answer.status_code == 400
            assert "retain" in answer.json()["detail"]
