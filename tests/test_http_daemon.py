"""``customevent serve`` as a real process: a curl-like send reaches a ``customevent wait --url
http://...`` process, open waits end with 503 on SIGTERM, and the daemon exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.http import HEADERS, PASSWORD, _hashes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "adapter._cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _active_waits(base: str) -> float:
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("customevent_http_waits_active "):
            return float(line.split()[1])
    return 0.0


def _until(condition: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if callable(condition) and condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def daemon(
    bus_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    password_hash, _, _ = _hashes()
    amqp = ""
    if bus_kind == "rabbitmq":
        amqp = f'[amqp]\nurl = "{request.getfixturevalue("amqp_url")}"\n'
    config = tmp_path / "customevent.toml"
    config.write_text(
        f"{amqp}[http]\nport = {port}\ndrain_seconds = 5\n"
        f'[[auth.principals]]\nname = "ops"\npassword_hash = "{password_hash}"\n'
        'allow = ["t.#"]\n'
    )
    process = _cli("serve", "--config", str(config))
    base = f"http://127.0.0.1:{port}"
    try:
        _until(lambda: httpx.get(f"{base}/readyz").status_code == 200, "the daemon")
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


def test_curl_send_reaches_a_cli_waiter_and_sigterm_exits_0(
    daemon: tuple[subprocess.Popen[str], str], unique_name: str, bus_kind: str
) -> None:
    process, base = daemon
    url = base.replace("http://", f"http://ops:{PASSWORD.replace(' ', '%20')}@")
    waiter = _cli("wait", unique_name, "--until", "30s", "--url", url, "--json")
    _until(lambda: _active_waits(base) == 1, "the CLI wait to be bound")
    sent = httpx.post(
        f"{base}/vco/api/customevent/{unique_name}",
        params={"properties": "vm=web-01\nstate=on"},
        headers=HEADERS,
    )
    assert sent.status_code == 200
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    event = json.loads(out)
    assert event["properties"] == {"vm": "web-01", "state": "on"}
    assert (event["kind"], event["source"], event["principal"]) == ("external", "http", "ops")

    # An open wait when SIGTERM comes: answered 503 (not a false "deadline"), exit 0.
    answers: list[httpx.Response] = []
    open_wait = threading.Thread(
        target=lambda: answers.append(
            httpx.get(
                f"{base}/api/v1/events/{unique_name}/wait",
                params={"timeout": "60s"},
                headers=HEADERS,
                timeout=60,
            )
        )
    )
    open_wait.start()
    _until(lambda: _active_waits(base) == 1, "the open wait to be bound")
    process.send_signal(signal.SIGTERM)
    open_wait.join(30)
    assert answers[0].status_code == 503
    assert "shutting down" in answers[0].json()["detail"]
    assert process.wait(30) == 0
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
    messages = [entry["message"] for entry in logs]
    if bus_kind == "memory":
        assert any("running on the in-process bus" in m for m in messages)
    access = [e for e in logs if e["logger"] == "adapter.http.access"]
    assert access and all(e["request_id"] for e in access)
    assert all("authorization" not in json.dumps(e).lower() for e in logs)


def test_serves_https_with_the_configured_certificate(tmp_path: Path) -> None:
    import ssl

    import trustme

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    port = _free_port()
    process = _cli(
        "serve",
        env={
            "CUSTOMEVENT_HTTP__PORT": str(port),
            "CUSTOMEVENT_HTTP__TLS_CERT_FILE": str(cert_file),
            "CUSTOMEVENT_HTTP__TLS_KEY_FILE": str(key_file),
            "CUSTOMEVENT_AUTH__ANONYMOUS": "true",
        },
    )
    context = ssl.create_default_context()
    authority.configure_trust(context)
    base = f"https://127.0.0.1:{port}"
    try:
        _until(lambda: httpx.get(f"{base}/readyz", verify=context).status_code == 200, "HTTPS")
        sent = httpx.post(f"{base}/vco/api/customevent/t.tls", verify=context)
        assert sent.status_code == 200
        wsdl = httpx.get(f"{base}/vmware-vmo-webcontrol/webservice?wsdl", verify=context).text
        assert f'location="{base}/vmware-vmo-webcontrol/webservice"' in wsdl
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    warnings = [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
    assert any("auth.anonymous is on" in entry["message"] for entry in warnings)
