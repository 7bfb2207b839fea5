"""The daemon's HTTP edge against hostile clients, on a real `customevent serve` process: request
heads bounded in bytes and in time, connections bounded, and the file descriptors and memory of
the daemon flat whatever the clients do."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import Daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with Daemon(
        "http-edge",
        CUSTOMEVENT_HTTP__MAX_CONNECTIONS="20",
        CUSTOMEVENT_HTTP__HEADER_TIMEOUT="1",
        CUSTOMEVENT_HTTP__MAX_HEADER_BYTES="16384",
        CUSTOMEVENT_AUTH__ANONYMOUS="false",
        CUSTOMEVENT_LOG__LEVEL="WARNING",
    ) as running:
        yield running


def _status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # kB
    raise AssertionError(f"no {field} for {pid}")


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_huge_headers_are_refused_with_431_before_they_are_read(daemon: Daemon) -> None:
    # Four 16 MiB Authorization headers once took the daemon's peak RSS from 58 to 330 MiB
    # before it answered 401.
    assert daemon.process is not None
    pid = daemon.process.pid
    peak_before = _vm(pid, "VmHWM")
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
            sock.sendall(b"POST /vco/api/customevent/x HTTP/1.1\r\nHost: x\r\nAuthorization: ")
            try:
                for _ in range(16 * 16):  # 16 MiB, unless the daemon closes first
                    sock.sendall(b"A" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            answer = _answer(sock)
        assert _status(answer) == 431
        assert b"request headers are larger than 16384 bytes (http.max_header_bytes)" in answer
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
        answer = _answer(sock)
    assert _status(answer) == 431
    assert b"request line is larger" in answer
    assert (_vm(pid, "VmHWM") - peak_before) < 20 * 1024
    assert httpx.get(daemon.url + "/healthz").status_code == 200


def test_a_head_that_does_not_arrive_in_time_is_408(daemon: Daemon) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        answer = _answer(sock)
    assert _status(answer) == 408
    assert b"http.header_timeout" in answer
    assert time.monotonic() - started < 8
    with socket.create_connection(("127.0.0.1", daemon.port)) as idle:
        assert _status(_answer(idle)) == 408  # a connection that never says anything


def test_connections_past_the_bound_are_refused_and_do_not_hold_files(daemon: Daemon) -> None:
    assert daemon.process is not None
    pid = daemon.process.pid
    files_before = _open_files(pid)
    held = [socket.create_connection(("127.0.0.1", daemon.port)) for _ in range(20)]
    try:
        time.sleep(0.3)
        refused = []
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", daemon.port)) as extra:
                refused.append(_answer(extra))
        assert all(_status(answer) == 503 for answer in refused)
        assert b"http.max_connections = 20" in refused[0]
        assert b"retry-after: 1" in refused[0]
        assert _open_files(pid) <= files_before + 20 + 2
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(daemon.url + "/healthz").status_code == 200
    assert _open_files(pid) <= files_before + 2


def test_a_body_larger_than_the_head_bound_still_goes_through(daemon: Daemon) -> None:
    # The head bound counts the head only: a body in the same packets is not part of it.
    body = "big=" + "x" * 60000
    response = httpx.post(
        daemon.url + "/vco/api/customevent/edge.big",
        content=body,
        headers={"content-type": "text/plain", "authorization": "Basic bm9ib2R5Ong="},
    )
    assert response.status_code == 401  # past the head: authentication answered
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        # Two requests in one write, the second a large body: both answered.
        first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        second = (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Length: 40000\r\n\r\n" + b"y" * 40000
        )
        sock.sendall(first + second)
        answer = _answer(sock)
    assert answer.count(b"HTTP/1.1 ") == 2
    assert _status(answer) == 200
