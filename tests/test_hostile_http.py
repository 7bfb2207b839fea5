"""The HTTP edges (vRO REST, SOAP, JSON, CloudEvents) against a hostile client. Classes of abuse
and their bounds:

- slow: a request body dripped a byte at a time is cut at ``http.body_timeout`` (408, closed);
  a request answered before its body arrived (401, 403, 413) is closed at once, so a dripping
  client without credentials holds no slot; everyone else is served meanwhile;
- forged headers: ``X-Forwarded-For`` is believed only from ``http.trusted_proxies`` (default
  none), so it cannot dodge the per-address failure limit;
- huge: a CloudEvents batch past ``http.max_batch`` is refused (413) after one JSON decode,
  before any of its items is decoded as a CloudEvent;
- deep: JSON nested deeper than 64 levels is 400 on every JSON edge (and a dead letter on MQTT
  and the bus, through the same function);
- malformed: deadlines and CloudEvent times that UTC cannot hold are 400 (CLI: exit 64), never
  a 500.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx

from adapter.testing import BridgeDaemon
from tests.support.http import HEADERS, TOKEN, make_settings

HEAD = (
    "POST /api/v1/events/t.slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    "Content-Length: 100000\r\n{auth}\r\n"
)


def _drip(port: int, auth: str = "") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(HEAD.format(auth=auth).encode() + b"{")
    return sock


def _status(sock: socket.socket) -> str:
    try:
        data = sock.recv(200)
    except (TimeoutError, OSError):
        return "none"
    return data.split(b" ")[1].decode() if data.count(b" ") >= 2 else "closed"


def test_dripping_bodies_do_not_starve_other_principals() -> None:
    settings = make_settings(http={"max_connections": 100, "body_timeout": 1.0})
    with BridgeDaemon(settings) as daemon:
        port = int(daemon.url.rsplit(":", 1)[1])
        # Without credentials: answered 401 and closed at once, however slowly the body comes.
        # Three rounds of 50 through 100 slots, none closed by the client: only slots the daemon
        # freed at once make room for the third.
        held: list[socket.socket] = []
        for _ in range(3):
            anonymous = [_drip(port) for _ in range(50)]
            held.extend(anonymous)
            assert {_status(sock) for sock in anonymous} == {"401"}
        for sock in held:
            sock.close()
        # With credentials: each holds a slot until http.body_timeout, then 408 and closed.
        auth = "Authorization: Bearer " + TOKEN + "\r\n"
        slow = [_drip(port, auth) for _ in range(60)]
        try:
            with httpx.Client(base_url=daemon.url, timeout=10) as http:
                for _ in range(10):
                    sent = http.post("/api/v1/events/t.ok", json={}, headers=HEADERS)
                    assert sent.status_code == 202, sent.text
            started = time.monotonic()
            assert {_status(sock) for sock in slow} == {"408"}
            assert time.monotonic() - started < 10
        finally:
            for sock in slow:
                sock.close()


def test_forwarded_for_is_not_believed_by_default() -> None:
    auth = {"failure_burst": 3, "failure_rate": 0.01}
    for trusted, statuses_after_burst in (([], {429}), (["127.0.0.1"], {401})):
        settings = make_settings(auth=auth, http={"trusted_proxies": trusted})
        with (
            BridgeDaemon(settings) as daemon,
            httpx.Client(base_url=daemon.url, timeout=10) as http,
        ):
            statuses = set()
            for i in range(8):
                forged = {
                    "Authorization": f"Bearer not-a-token-of-anyone-{i:032d}",
                    "X-Forwarded-For": f"198.51.100.{i}",
                }
                answer = http.post("/api/v1/events/t.x", json={}, headers=forged)
                if i >= 3:
                    statuses.add(answer.status_code)
            assert statuses == statuses_after_burst


def test_an_oversized_batch_is_refused_before_its_items_are_decoded() -> None:
    settings = make_settings(http={"max_batch": 100, "max_body_bytes": 2 * 1024 * 1024})
    item = '{"specversion":"1.0","id":"i","type":"t.b","source":"/s"}'
    # The last item is no CloudEvent: decoding the items would answer 400 for it, not 413.
    body = "[" + ",".join([item] * 19_063 + ['{"specversion":"0.3"}']) + "]"
    with BridgeDaemon(settings) as daemon, httpx.Client(base_url=daemon.url, timeout=30) as http:
        answer = http.post(
            "/api/v1/cloudevents",
            content=body,
            headers={**HEADERS, "Content-Type": "application/cloudevents-batch+json"},
        )
        assert answer.status_code == 413, answer.text
        assert "max_batch" in answer.json()["detail"]


def test_deep_json_and_times_utc_cannot_hold_are_400() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with BridgeDaemon(make_settings()) as daemon, httpx.Client(base_url=daemon.url) as http:
        json_send = http.post(
            "/api/v1/events/t.deep",
            content='{"properties": ' + deep + "}",
            headers={**HEADERS, "Content-Type": "application/json"},
        )
        assert json_send.status_code == 400, json_send.text
        assert "64" in json_send.json()["detail"]
        structured = http.post(
            "/api/v1/cloudevents",
            content='{"specversion": "1.0", "id": "1", "type": "t.d", "source": "/s", "data": '
            + deep
            + "}",
            headers={**HEADERS, "Content-Type": "application/cloudevents+json"},
        )
        assert structured.status_code == 400, structured.text
        for until in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
            wait = http.get("/api/v1/events/t.u/wait", params={"until": until}, headers=HEADERS)
            assert wait.status_code == 400, wait.text
        late = http.post(
            "/api/v1/cloudevents",
            json={
                "specversion": "1.0",
                "id": "1",
                "type": "t.d",
                "source": "/s",
                "time": "9999-12-31T23:59:59-14:00",
            },
            headers={**HEADERS, "Content-Type": "application/cloudevents+json"},
        )
        assert late.status_code == 400, late.text


async def test_the_cli_refuses_a_deadline_utc_cannot_hold() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "adapter._cli",
            "wait",
            "t.x",
            "--until",
            "9999-12-31T23:59:59-14:00",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 64, result.stderr
    assert "Traceback" not in result.stderr and "UTC" in result.stderr
