"""`customevent listen` and `customevent dead` as a user runs them: real processes, real RabbitMQ.

The acceptance of the triggers issue: `customevent listen 'vm.*' --group reload --
./reload-plugins.sh` runs the script once per event, across restarts and crashes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapter._bus.amqp._queues import dead_queue, group_queue, retry_queue
from tests.support.processes import clean_env, customevent

pytestmark = pytest.mark.rabbitmq

RECORD = """#!/bin/sh
# Records the event it is given, then behaves as $BEHAVIOUR says.
payload=$(cat)
printf '%s %s %s %s\\n' "$CUSTOMEVENT_NAME" "$CUSTOMEVENT_EVENT_ID" "$CUSTOMEVENT_ATTEMPT" \\
  "$(printf '%s' "$payload" | tr -d '\\n')" >> "$RECORDS"
case "$BEHAVIOUR" in
  fail) exit 3 ;;
  hang) sleep 60 ;;
  slow) sleep 2; echo done >> "$RECORDS.done" ;;
esac
exit 0
"""


@pytest.fixture
def group(amqp_url: str) -> Iterator[str]:
    name = f"t-listen-{uuid.uuid4().hex[:10]}"
    yield name
    for queue in (
        group_queue("customevents", name),
        dead_queue("customevents", name),
        *(retry_queue("customevents", name, ms) for ms in (200, 400)),
    ):
        subprocess.run(["rabbitmqctl", "-q", "delete_queue", queue], capture_output=True)


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "reload-plugins.sh"
    path.write_text(RECORD)
    path.chmod(0o755)
    return path


def _env(amqp_url: str, records: Path, behaviour: str = "ok", **extra: str) -> dict[str, str]:
    return clean_env(
        CUSTOMEVENT_AMQP__URL=amqp_url,
        CUSTOMEVENT_GROUPS__RETRY_INITIAL="0.2",
        CUSTOMEVENT_GROUPS__RETRY_MAX="0.4",
        RECORDS=str(records),
        BEHAVIOUR=behaviour,
        **extra,
    )


def _listener(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        customevent("listen", *args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(process: subprocess.Popen[str]) -> None:
    assert process.stderr is not None
    line = process.stderr.readline()
    assert "customevent: listening as group" in line, line


def _send(amqp_url: str, name: str, *extra: str) -> None:
    done = subprocess.run(
        customevent("send", name, *extra),
        env=clean_env(CUSTOMEVENT_AMQP__URL=amqp_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(" ", 3) for line in path.read_text().splitlines()]


def _stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    process.send_signal(sig)
    return process.wait(60)


def test_a_command_runs_once_per_event_across_restarts(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    env = _env(amqp_url, records)
    args = [f"{unique_name}.*", "--group", group, "--", str(script)]
    first = _listener(args, env)
    try:
        _listening(first)
        _send(amqp_url, f"{unique_name}.a", "-p", "n=1", "--event-id", f"{group}-1")
        _until(lambda: len(_lines(records)) == 1, "the first event")
    finally:
        assert _stop(first) == 0
    # Sent while no listener runs: the durable group keeps it for the next one.
    _send(amqp_url, f"{unique_name}.b", "-p", "n=2", "--event-id", f"{group}-2")
    second = _listener(args, env)
    try:
        _listening(second)
        _until(lambda: len(_lines(records)) == 2, "the event sent while it was down")
        time.sleep(1)
    finally:
        assert _stop(second) == 0
    rows = _lines(records)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (f"{unique_name}.a", f"{group}-1", "1"),
        (f"{unique_name}.b", f"{group}-2", "1"),
    ]
    event = json.loads(rows[0][3])
    assert event["properties"] == {"n": "1"} and event["kind"] == "internal"


def test_a_failing_command_is_retried_then_dead_lettered_and_can_be_replayed(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    env = _env(amqp_url, records, "fail", CUSTOMEVENT_GROUPS__MAX_ATTEMPTS="3")
    listener = _listener([unique_name, "--group", group, "--", str(script)], env)
    try:
        _listening(listener)
        _send(amqp_url, unique_name, "-p", "vm=web-1", "--event-id", f"{group}-f")
        _until(lambda: len(_lines(records)) == 3, "three attempts")
        time.sleep(1)
    finally:
        assert _stop(listener) == 0
    assert [r[2] for r in _lines(records)] == ["1", "2", "3"]
    assert listener.stderr is not None
    said = [line for line in listener.stderr.read().splitlines() if f"{group}-f" in line]
    assert [line.rsplit("; ", 1)[1] for line in said] == [
        "it will be retried",
        "it will be retried",
        "that was the last attempt: it became a dead letter",
    ]
    listing = subprocess.run(
        customevent("dead", "list", group, "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    dead = [json.loads(line) for line in listing.stdout.splitlines()]
    assert len(dead) == 1
    assert dead[0]["event"]["event_id"] == f"{group}-f"
    assert dead[0]["reason"] == "the command exited 3 (attempt 3 of 3)"
    assert dead[0]["attempts"] == 3
    assert dead[0]["first_failure"] and dead[0]["last_failure"]
    replay = subprocess.run(
        customevent("dead", "replay", group, "--event-id", f"{group}-f"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 dead letter(s)" in replay.stdout
    # The group keeps the options it was made with: the same max_attempts, now succeeding.
    ok_env = _env(amqp_url, records, CUSTOMEVENT_GROUPS__MAX_ATTEMPTS="3")
    ok = _listener([unique_name, "--group", group, "--", str(script)], ok_env)
    try:
        _listening(ok)
        _until(lambda: len(_lines(records)) == 4, "the replayed event")
    finally:
        assert _stop(ok) == 0
    assert _lines(records)[3][2] == "1"  # a replay is a first attempt


def test_a_hung_command_is_stopped_at_its_timeout_and_retried(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    listener = _listener(
        [unique_name, "--group", group, "--timeout", "1s", "--", str(script)],
        _env(amqp_url, records, "hang"),
    )
    try:
        _listening(listener)
        _send(amqp_url, unique_name, "--event-id", f"{group}-h")
        _until(lambda: len(_lines(records)) >= 2, "the retry after the timeout", 30)
    finally:
        _stop(listener)
    assert [r[2] for r in _lines(records)][:2] == ["1", "2"]
    assert listener.stderr is not None
    assert "was still running after 1s and was stopped" in listener.stderr.read()


def test_sigterm_lets_the_running_command_finish_and_loses_nothing(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    args = [unique_name, "--group", group, "--", str(script)]
    listener = _listener(args, _env(amqp_url, records, "slow"))
    _listening(listener)
    _send(amqp_url, unique_name, "--event-id", f"{group}-s")
    _until(lambda: len(_lines(records)) == 1, "the command to start")
    assert _stop(listener) == 0
    assert (tmp_path / "records.done").read_text() == "done\n"  # it ran to its end
    again = _listener(args, _env(amqp_url, records))
    try:
        _listening(again)
        time.sleep(2)
    finally:
        _stop(again)
    assert len(_lines(records)) == 1  # acknowledged once: not delivered again


def test_a_killed_listener_loses_nothing(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    args = [unique_name, "--group", group, "--", str(script)]
    victim = _listener(args, _env(amqp_url, records, "slow"))
    _listening(victim)
    _send(amqp_url, unique_name, "--event-id", f"{group}-k")
    _until(lambda: len(_lines(records)) == 1, "the command to start")
    victim.kill()  # SIGKILL mid-command: its delivery was never settled
    victim.wait(30)
    survivor = _listener(args, _env(amqp_url, records))
    try:
        _listening(survivor)
        _until(lambda: len(_lines(records)) == 2, "the redelivery")
    finally:
        assert _stop(survivor) == 0
    assert [(r[1], r[2]) for r in _lines(records)] == [(f"{group}-k", "1"), (f"{group}-k", "2")]


def test_two_listeners_compete_and_each_event_is_handled_once(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    env = _env(amqp_url, records, CUSTOMEVENT_GROUPS__DEDUP_WINDOW="0")
    args = [unique_name, "--group", group, "--", str(script)]
    listeners = [_listener(args, env), _listener(args, env)]
    try:
        for listener in listeners:
            _listening(listener)
        for n in range(12):
            _send(amqp_url, unique_name, "-p", f"n={n}", "--event-id", f"{group}-{n}")
        _until(lambda: len(_lines(records)) == 12, "twelve events")
        time.sleep(1)
    finally:
        for listener in listeners:
            assert _stop(listener) == 0
    ids = [r[1] for r in _lines(records)]
    assert sorted(ids) == sorted(f"{group}-{n}" for n in range(12))


def test_an_id_sent_four_times_runs_the_command_once_across_two_listeners(
    amqp_url: str, group: str, script: Path, tmp_path: Path, unique_name: str
) -> None:
    records = tmp_path / "records"
    env = _env(amqp_url, records)
    args = [unique_name, "--group", group, "--", str(script)]
    listeners = [_listener(args, env), _listener(args, env)]
    try:
        for listener in listeners:
            _listening(listener)
        for _ in range(4):
            _send(amqp_url, unique_name, "--event-id", f"{group}-dup")
        _until(lambda: len(_lines(records)) >= 1, "the event")
        time.sleep(2)
    finally:
        for listener in listeners:
            assert _stop(listener) == 0
    assert [r[1] for r in _lines(records)] == [f"{group}-dup"]


def test_without_a_command_listen_prints_json_lines(
    amqp_url: str, group: str, tmp_path: Path, unique_name: str
) -> None:
    listener = _listener(
        [unique_name, "--group", group, "--json"], _env(amqp_url, tmp_path / "unused")
    )
    try:
        time.sleep(1.5)  # joined (with --json it says nothing on stderr)
        _send(amqp_url, unique_name, "-p", "a=1", "--event-id", f"{group}-p1")
        _send(amqp_url, unique_name, "-p", "a=2", "--event-id", f"{group}-p2")
        assert listener.stdout is not None
        lines = [json.loads(listener.stdout.readline()) for _ in range(2)]
    finally:
        assert _stop(listener) == 0
    assert [(e["event_id"], e["properties"]) for e in lines] == [
        (f"{group}-p1", {"a": "1"}),
        (f"{group}-p2", {"a": "2"}),
    ]


def test_listen_needs_a_broker_and_says_so(tmp_path: Path) -> None:
    done = subprocess.run(
        customevent("listen", "t.x", "--group", "g"),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78
    assert "groups need RabbitMQ" in done.stderr
