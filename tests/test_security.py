"""Security properties, each a test: no edge makes an internal event, allow lists cannot be
escaped, secrets are compared in constant time, and MQTT over TLS with client certificates."""

from __future__ import annotations

import hmac
import os
import re
import socket
import ssl
import tempfile
import urllib.parse
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapter import Client, Settings, pattern_matches
from adapter._mqtt._testing import PrivateMosquitto, free_port
from adapter._names import validate_name
from adapter._secrets import hash_secret, verify_secret
from tests.support.http import HEADERS, LIMITED, asgi_client, basic, make_settings
from tests.support.mqtt import (
    Device,
    bridge_settings,
    private_exchange,
    running_bridge,
    unique_prefix,
)

SOAP = """<?xml version="1.0"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
  xmlns:vco="http://webservice.vso.dunes.ch">
 <soapenv:Body><vco:sendCustomEvent>
  <vco:eventName>{name}</vco:eventName><vco:serializedProperties>kind=internal</vco:serializedProperties>
  <vco:kind>internal</vco:kind>
 </vco:sendCustomEvent></soapenv:Body></soapenv:Envelope>"""


@pytest.fixture
async def memory_client() -> AsyncIterator[Client]:
    async with Client("memory://") as opened:
        yield opened


async def test_no_http_edge_can_produce_an_internal_event(
    memory_client: Client, unique_name: str
) -> None:
    """Every HTTP ingress, even asked for 'internal' every way we can think of, sends external."""
    name = quote = urllib.parse.quote(unique_name)  # names in these tests need no escaping
    async with (
        asgi_client(memory_client, make_settings()) as http,
        # Nothing internal may arrive: this wait must reach its deadline empty.
        memory_client.expect("internal", "#", until=timedelta(seconds=3)) as internal,
        memory_client.expect("external", f"{unique_name}.#", until=timedelta(seconds=10)),
    ):
        attempts = [
            await http.post(
                f"/vco/api/customevent/{name}?kind=internal&properties=a%3D1", headers=HEADERS
            ),
            await http.post(
                f"/vco/api/customevent/{quote}",
                headers={**HEADERS, "x-event-kind": "internal", "content-type": "text/plain"},
                content=b"kind=internal",
            ),
            await http.post(
                f"/api/v1/events/{name}?kind=internal",
                headers=HEADERS,
                json={"properties": {"kind": "internal"}},
            ),
            await http.post(
                f"/api/v1/events/{name}",
                headers=HEADERS,
                json={"properties": {}, "kind": "internal"},
            ),
            await http.post(
                "/vmware-vmo-webcontrol/webservice",
                headers={**HEADERS, "content-type": "text/xml"},
                content=SOAP.format(name=unique_name),
            ),
            await http.post(f"/vco/api/customevent/internal.{name}", headers=HEADERS),
        ]
        statuses = [r.status_code for r in attempts]
        # Sent as external, or refused; never internal.
        assert all(code in (200, 202, 400, 403, 500) for code in statuses), statuses
        assert any(code in (200, 202) for code in statuses)
        assert await internal is None


@pytest.mark.rabbitmq
@pytest.mark.mosquitto
async def test_no_mqtt_topic_can_produce_an_internal_event(amqp_url: str, mqtt_url: str) -> None:
    prefix = unique_prefix()
    settings = bridge_settings(amqp_url, mqtt_url, prefix)
    port = int(mqtt_url.rsplit(":", 1)[1])
    # A private exchange: the '#' waits below see this test's events only.
    async with private_exchange(amqp_url, prefix) as exchange:
        settings = settings.model_copy(
            update={"amqp": settings.amqp.model_copy(update={"exchange": exchange})}
        )
        await _no_internal_from_mqtt(settings, prefix, port)


async def _no_internal_from_mqtt(settings: Settings, prefix: str, port: int) -> None:
    async with running_bridge(settings) as (client, _bridge):
        async with (
            client.expect("internal", "#", until=timedelta(seconds=8)) as internal,
            client.expect("external", "#", until=timedelta(seconds=20)) as external,
        ):
            device = Device(port)
            try:
                for topic in (
                    f"{prefix}/internal/x",
                    f"{prefix}/internal",
                    f"{prefix}/x/internal",
                    f"{prefix}/external/../internal/x",
                ):
                    device.publish(topic, b"a=1")
                device.publish(f"{prefix}/external/internal/x", b"a=2")
                await device.wait_acked(5)
                event = await external
            finally:
                device.close()
            assert event is not None and event.kind == "external"
            assert event.name == "internal.x" and event.properties == {"a": "2"}
            assert await internal is None


# Names a principal allowed only 'vm.*' might try: separators, wildcards, encodings, controls.
tricky = st.one_of(
    st.sampled_from(
        [
            "vm",
            "vm.",
            "vm.*",
            "vm.#",
            "vm..a",
            "vm.a.b",
            "vm/a",
            "vm.a/b",
            "vm.+",
            "vm.a\x00",
            "vm.%2A",
            "Vm.a",
            "vm .a",
            " vm.a",
            "vm.a#",
            "vm.\u2024a",
            "vm.a.",
            "*.a",
            "#",
            "vm.a",
        ]
    ),
    st.builds(lambda w: "vm." + w, st.text(max_size=8)),
    st.text(max_size=12),
)


@pytest.fixture
def settings_once() -> Settings:
    return make_settings()


@settings(
    max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(name=tricky)
async def test_the_allow_list_cannot_be_escaped(
    memory_client: Client, settings_once: Settings, name: str
) -> None:
    """A principal allowed ``t.limited.#`` gets 2xx only for names that pattern covers."""
    # A fresh app for each example (no rate or failure count carried over), on settings read once.
    async with asgi_client(memory_client, settings_once) as http:
        path = "t.limited." + name if name.startswith("vm") else name
        response = await http.post(
            "/api/v1/events/" + urllib.parse.quote(path, safe=""),
            json={"properties": {}},
            headers=basic(*LIMITED),
        )
    if response.status_code == 202:
        assert validate_name(path) == path
        assert pattern_matches("t.limited.#", path)
    else:
        # Refused one way or another (an empty name is a redirect to the collection), never
        # accepted, and never a server error.
        assert not 200 <= response.status_code < 300
        assert response.status_code < 500, response.text


def test_secrets_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    hashed = hash_secret("pw")
    assert verify_secret("pw", hashed) and not verify_secret("px", hashed)
    assert len(calls) == 2  # every comparison goes through hmac.compare_digest


def test_a_hash_records_its_cost_and_verifies_at_it() -> None:
    cheap = hash_secret("pw", log2_n=8)
    assert cheap.startswith("scrypt$8$8$1$")
    assert verify_secret("pw", cheap) and not verify_secret("px", cheap)
    # The cost is part of what is checked: the same digest claimed at another cost fails.
    assert not verify_secret("pw", cheap.replace("scrypt$8$", "scrypt$9$", 1))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.rabbitmq
@pytest.mark.mosquitto
async def test_mqtts_with_client_certificates(amqp_url: str, ca: trustme.CA) -> None:
    # Mosquitto drops to its own user: the files must be readable by it, outside pytest's 0700.
    tmp_path = Path(tempfile.mkdtemp(prefix="customevent-tls-"))
    os.chmod(tmp_path, 0o755)
    server = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("bridge@customevent.test")
    files = {
        name: tmp_path / f"{name}.pem"
        for name in ("ca", "server", "server_key", "client", "client_key")
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["server"]))
    server.private_key_pem.write_to_path(str(files["server_key"]))
    client_cert.cert_chain_pems[0].write_to_path(str(files["client"]))
    client_cert.private_key_pem.write_to_path(str(files["client_key"]))
    for path in files.values():
        path.chmod(0o644)
    tls_port = free_port()
    extra = (
        f"\nlistener {tls_port} 127.0.0.1\ncafile {files['ca']}\ncertfile {files['server']}\n"
        f"keyfile {files['server_key']}\nrequire_certificate true\n"
    )
    prefix = unique_prefix()
    with PrivateMosquitto(extra_config=extra) as broker:
        settings = bridge_settings(
            amqp_url,
            f"mqtts://127.0.0.1:{tls_port}",
            prefix,
            ca_file=files["ca"],
            cert_file=files["client"],
            key_file=files["client_key"],
        )
        async with running_bridge(settings) as (client, _bridge):
            async with client.expect("external", "tls.ok", until=timedelta(seconds=20)) as w:
                device = Device(broker.port)  # the device uses the plain listener
                try:
                    device.publish(f"{prefix}/external/tls/ok", b"over=tls")
                    event = await w
                finally:
                    device.close()
        assert event is not None and event.properties == {"over": "tls"}

        # Without a client certificate the TLS listener answers a CONNECT with nothing.
        context = ssl.create_default_context(cafile=str(files["ca"]))
        connect = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x"
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            try:
                tls.sendall(connect)
                answer = tls.recv(4)
            except (ssl.SSLError, ConnectionResetError):
                answer = b""
        assert answer == b"", "a client without a certificate got a CONNACK"


async def test_https_client_refuses_an_untrusted_daemon() -> None:
    async with httpx.AsyncClient(verify=True) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"https://127.0.0.1:{free_port()}/healthz")


def test_the_threat_model_names_tests_that_exist() -> None:
    """docs/security.md points at the tests that hold each defence: they must exist."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "security.md").read_text(encoding="utf-8")
    references = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(references) >= 10
    for path, name in references:
        source = (root / path).read_text(encoding="utf-8")
        if name:
            assert f"def {name}(" in source, f"{path}::{name} named in docs/security.md"
    for short in re.findall(r"`::(\w+)`", text):
        assert any(
            f"def {short}(" in (root / p).read_text(encoding="utf-8") for p, _ in references
        ), short
