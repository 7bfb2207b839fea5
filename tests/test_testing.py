"""``adapter.testing``: the helpers and pytest fixtures users run the bridge in-process with."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from adapter import Client, MemoryBus
from adapter.testing import BridgeDaemon, memory_client

ROOT = Path(__file__).resolve().parent.parent
CONFTEST = 'pytest_plugins = ["adapter.testing"]'


async def test_memory_client_stays_in_process_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch, unique_name: str
) -> None:
    # A leftover URL must not send a unit test to a broker (here: to nothing at all).
    monkeypatch.setenv("CUSTOMEVENT_AMQP__URL", "amqp://guest:guest@127.0.0.1:1/")
    async with memory_client() as client, memory_client() as other:
        assert isinstance(client.bus, MemoryBus)
        async with client.expect("internal", unique_name, until=timedelta(seconds=5)) as waiter:
            assert not (await other.send_custom_event(unique_name)).routed  # a bus of its own
            assert (await client.send_custom_event(unique_name, {"a": "1"})).routed
            event = await waiter
    assert event is not None and event.properties == {"a": "1"}


async def test_bridge_daemon_runs_as_make_serve_does(unique_name: str) -> None:
    with BridgeDaemon() as daemon:
        assert daemon.url == f"http://127.0.0.1:{daemon.port}"
        async with (
            Client(daemon.url) as client,  # anonymous: the quick start's settings
            client.expect("external", unique_name, until=timedelta(seconds=20)) as waiter,
        ):
            async with httpx.AsyncClient() as http:
                sent = await http.post(
                    f"{daemon.url}/vco/api/customevent/{unique_name}?properties=a%3D1"
                )
            assert sent.status_code == 200
            event = await waiter
    assert event is not None and event.properties == {"a": "1"}
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"{daemon.url}/healthz")  # stopped on exit


def test_the_fixtures_work_in_a_project_of_its_own(tmp_path: Path) -> None:
    """The guide's conftest.py and its example test module, and a private Mosquitto, run by a
    pytest of their own in strict asyncio mode, as in a user's project."""
    guide = (ROOT / "docs" / "guides" / "testing.md").read_text()
    assert CONFTEST in guide
    (tmp_path / "conftest.py").write_text(CONFTEST + "\n")
    shutil.copy(ROOT / "docs" / "examples" / "test_my_service.py", tmp_path)
    (tmp_path / "test_mosquitto.py").write_text(
        textwrap.dedent(
            """
            import socket


            def test_mosquitto(private_mosquitto):
                private_mosquitto.restart()
                socket.create_connection(("127.0.0.1", private_mosquitto.port), timeout=5).close()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=strict",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
        ],
        cwd=tmp_path,
        env={**env, "CUSTOMEVENT_AMQP__URL": "amqp://x:y@127.0.0.1:1/"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout, run.stdout
