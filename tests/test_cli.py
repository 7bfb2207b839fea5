"""The customevent command, run as a real process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import adapter
from adapter import _cli
from adapter._cli import parse_until
from adapter._exceptions import InvalidInput
from adapter._secrets import verify_secret


def run(
    args: Sequence[str], *, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter._cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), **(env or {})},
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}


def test_help_lists_every_command() -> None:
    out = run(["--help"]).stdout
    for command in ("serve", "send", "wait", "listen", "group", "dead", "hash-secret"):
        assert command in out


def test_hash_secret_prints_a_verifiable_hash() -> None:
    result = run(["hash-secret"], stdin="s3cret\n")
    assert result.returncode == 0
    hashed = result.stdout.strip()
    assert "s3cret" not in hashed
    assert verify_secret("s3cret", hashed)
    assert not verify_secret("s3cret\n", hashed)
    # The CLI's cost is scrypt's 2**14, whatever lower one the tests' principals use.
    assert hashed.startswith("scrypt$14$8$1$")


def test_hash_secret_refuses_nothing() -> None:
    result = run(["hash-secret"], stdin="")
    assert result.returncode == 64
    assert "nothing to hash" in result.stderr


def test_parse_until() -> None:
    now = datetime.now(UTC)
    assert abs((parse_until("30s") - now - timedelta(seconds=30)).total_seconds()) < 2
    assert abs((parse_until("1h30m") - now - timedelta(minutes=90)).total_seconds()) < 2
    assert parse_until("2030-01-02T03:04:05Z") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    for bad, words in [("soon", "neither a duration"), ("2030-01-02T03:04:05", "time zone")]:
        with pytest.raises(InvalidInput, match=words):
            parse_until(bad)


@pytest.mark.rabbitmq
def test_send_and_wait_across_processes(amqp_url: str, unique_name: str, tmp_path: Path) -> None:
    env = {"CUSTOMEVENT_AMQP__URL": amqp_url}
    waiter = subprocess.Popen(
        [sys.executable, "-m", "adapter._cli", "wait", unique_name, "--until", "30s", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_env(), **env},
    )
    props = tmp_path / "props.txt"
    props.write_text("from=file\nline=2\n")
    try:
        for _ in range(100):
            sent = run(
                [
                    "send",
                    unique_name,
                    "-p",
                    "a=b",
                    "-p",
                    "c=x=y",
                    "--properties-file",
                    str(props),
                    "--json",
                ],
                env=env,
            )
            assert sent.returncode == 0, sent.stderr
            if json.loads(sent.stdout)["routed"]:
                break
            time.sleep(0.2)
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert err == ""  # --json prints nothing extra
    event = json.loads(out)
    assert event["properties"] == {"from": "file", "line": "2", "a": "b", "c": "x=y"}
    assert event["name"] == unique_name and event["kind"] == "internal"
    assert event["source"] == "cli"


@pytest.mark.rabbitmq
def test_plain_wait_prints_key_value_lines(amqp_url: str, unique_name: str) -> None:
    env = {"CUSTOMEVENT_AMQP__URL": amqp_url}
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapter._cli",
            "wait",
            unique_name,
            "--until",
            "30s",
            "--kind",
            "external",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_clean_env(), **env},
    )
    try:
        for _ in range(100):
            sent = run(
                ["send", unique_name, "--kind", "external", "--properties-file", "-"],
                env=env,
                stdin="k=v\nx=1=2\n",
            )
            assert sent.returncode == 0, sent.stderr
            if "a waiter was bound" in sent.stdout:
                break
            time.sleep(0.2)
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0, err
    assert out == "k=v\nx=1=2\n"
    # One line says which bus and kind it waits on (never the password); piped: no countdown.
    assert err.count("\n") == 1, err
    assert f"for an external event named {unique_name!r} on RabbitMQ at amqp://" in err
    assert "(set by CUSTOMEVENT_AMQP__URL)" in err
    password = urlsplit(amqp_url).password
    assert password and f":{password}@" not in err


@pytest.mark.rabbitmq
def test_wait_exits_2_at_the_deadline(amqp_url: str, unique_name: str) -> None:
    result = run(["wait", unique_name, "--until", "1s"], env={"CUSTOMEVENT_AMQP__URL": amqp_url})
    assert result.returncode == 2
    assert result.stdout == ""
    assert "before the deadline" in result.stderr


@pytest.mark.rabbitmq
def test_send_reports_when_nobody_waits(amqp_url: str, unique_name: str) -> None:
    result = run(["send", unique_name], env={"CUSTOMEVENT_AMQP__URL": amqp_url})
    assert result.returncode == 0
    assert "no waiter was bound" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["send", "a..b"], 64, "empty word"),
        (["send", "ok", "-p", "novalue"], 64, "expected KEY=VALUE"),
        (["send", "ok", "-p", "a=1", "-p", "a=2"], 64, "given twice"),
        (["send", "ok", "-p", "note=hi\napproved=true"], 64, "value of property 'note'"),
        (["send", "ok", "-p", "a\tb=1"], 64, "control character"),
        (["send", "ok", "--properties-file", "/nonexistent/p"], 64, "cannot read"),
        (["wait", "ok", "--until", "whenever"], 64, "neither a duration"),
        (["wait", "ok"], 64, "--until"),
        (["send", "ok", "--kind", "public"], 64, "invalid choice"),
        (["send", "ok", "--url", "ftp://x"], 78, "--url must be"),
        (["send", "ok", "--config", "/nonexistent.toml"], 78, "does not exist"),
    ],
)
def test_bad_input_exits_non_zero_with_a_message(args: list[str], code: int, words: str) -> None:
    result = run(args, env={"CUSTOMEVENT_AMQP__URL": "amqp://guest:guest@127.0.0.1:1/"})
    assert result.returncode == code, result.stderr
    assert words in result.stderr


def test_unreachable_broker_exits_69_after_bounded_retries() -> None:
    env = {
        "CUSTOMEVENT_AMQP__URL": "amqp://guest:pw-not-shown@127.0.0.1:1/",
        "CUSTOMEVENT_AMQP__CONNECT_ATTEMPTS": "2",
        "CUSTOMEVENT_AMQP__CONNECT_BACKOFF_MAX": "0.2",
    }
    result = run(["send", "x"], env=env)
    assert result.returncode == 69
    assert "cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:1/ after 2 attempts" in (
        result.stderr
    )
    assert "attempt 1 of 2 failed" in result.stderr
    assert "pw-not-shown" not in result.stderr
    # Only the CLI's own lines: aiormq's "error when creating transport" never shows.
    assert all(line.startswith("customevent: ") for line in result.stderr.splitlines())


@pytest.mark.rabbitmq
def test_refused_credentials_exit_77(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest", "guest:nope")
    result = run(["send", "x"], env={"CUSTOMEVENT_AMQP__URL": bad})
    assert result.returncode == 77
    assert "refused the credentials" in result.stderr


def test_version_is_the_installed_package_version() -> None:
    installed = importlib.metadata.version("customevent-bridge")
    result = run(["--version"])
    assert result.returncode == 0
    assert result.stdout == f"customevent {installed}\n"
    assert adapter.__version__ == installed


@pytest.mark.parametrize("until", ["-5s", "-5", "-1h30m"])
def test_a_negative_until_is_refused_in_the_cli_s_own_words(until: str) -> None:
    result = run(["wait", "x", "--until", until])
    assert result.returncode == 64, result.stderr
    assert f"--until {until!r}: a deadline cannot be negative" in result.stderr
    assert "expected one argument" not in result.stderr


def test_values_that_start_with_a_dash_reach_their_option() -> None:
    # `-p -flag=1` is a property named "-flag"; the send then fails only for want of a daemon.
    result = run(["send", "x", "-p", "-flag=1", "--url", f"http://127.0.0.1:{_free_port()}"])
    assert result.returncode == 69, result.stderr
    assert "is 'customevent serve' running there?" in result.stderr
    # An option after an option that takes a value is still an option.
    result = run(["wait", "x", "--until", "--json"])
    assert result.returncode == 64
    assert "expected one argument" in result.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_busy_port_exits_78_saying_how_to_choose_another() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            ["serve"],
            env={"CUSTOMEVENT_HTTP__PORT": str(port), "CUSTOMEVENT_AUTH__ANONYMOUS": "true"},
        )
    assert result.returncode == 78, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in result.stderr
    assert "http.port" in result.stderr and "CUSTOMEVENT_HTTP__PORT=" in result.stderr
    assert "Errno" not in result.stderr  # uvicorn's raw message is not what the user reads


def test_wait_says_which_bus_and_kind_before_it_waits() -> None:
    port = _free_port()  # nobody listens: the line comes first, then the error
    result = run(
        ["wait", "demo.hello", "--until", "60s"], env={"CUSTOMEVENT_HTTP__PORT": str(port)}
    )
    assert result.returncode == 69
    first, *rest = result.stderr.splitlines()
    assert first.startswith("customevent: waiting up to 60s (until ")
    assert first.endswith(
        f"for an external event named 'demo.hello' on the bridge daemon at "
        f"http://127.0.0.1:{port} (no amqp.url is set)"
    )
    assert rest and "is 'customevent serve' running there?" in rest[-1]
    quiet = run(
        ["wait", "demo.hello", "--until", "60s", "--json"],
        env={"CUSTOMEVENT_HTTP__PORT": str(port)},
    )
    assert quiet.returncode == 69
    assert "waiting" not in quiet.stderr


def test_library_log_records_never_reach_the_terminal() -> None:
    script = (
        "import logging; from adapter._cli import _configure_logging; _configure_logging()\n"
        "for name in ('aiormq.connection', 'aio_pika.robust_connection', 'asyncio', 'httpx'):\n"
        "    logging.getLogger(name).error('error when creating transport: <Error>')\n"
        "logging.getLogger('adapter.amqp').warning('our own words')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "customevent: our own words\n"


def test_every_exit_code_is_in_the_reference_table() -> None:
    from tests.support.docs import docs_hooks

    documented = {code for code, _ in docs_hooks().exit_codes()}
    returned = {value for name, value in vars(_cli).items() if name.startswith("EXIT_")}
    assert returned == documented
    assert 78 in documented and 130 in documented


EXAMPLE = Path(__file__).parents[1] / "docs" / "examples" / "send_and_wait.py"


@pytest.mark.rabbitmq
def test_no_raw_library_line_reaches_stderr_of_the_example_or_the_cli(
    amqp_url: str, unique_name: str
) -> None:
    # Before: aio-pika's "Closing channel ... because RPC call ... cancelled" in about half of
    # the example's runs (the retained-events reader was cancelled mid-RPC on close).
    env = {**_clean_env(), "CUSTOMEVENT_AMQP__URL": amqp_url}
    for n in range(6):
        example = subprocess.run(
            [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, env=env
        )
        assert example.returncode == 0, example.stderr
        assert example.stderr == "", f"run {n}: {example.stderr}"
        waited = run(["wait", f"{unique_name}.{n}", "--until", "0.3s", "--json"], env=env)
        assert (waited.returncode, waited.stderr) == (2, ""), f"run {n}"
