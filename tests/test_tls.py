"""TLS to RabbitMQ (amqps://) with a CA the test generates, including client certificates.

A TLS-terminating proxy in front of the broker checks the client's certificate, so the client's
TLS settings (CA bundle, client certificate and key, host name check) are exercised for real.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import trustme

from adapter import BusUnavailable, Client, ConfigurationError, load_settings
from tests.support.proxy import Proxy

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_files(ca: trustme.CA, tmp_path: Path) -> Iterator[dict[str, Path]]:
    client_cert = ca.issue_cert("bridge@customevent.test")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem", "key": tmp_path / "c.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client_cert.private_key_pem.write_to_path(str(files["key"]))
    for blob in client_cert.cert_chain_pems:
        blob.write_to_path(str(files["cert"]), append=True)
    yield files


def _server_context(ca: trustme.CA, *, require_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


async def test_amqps_with_a_client_certificate(
    amqp_url: str, ca: trustme.CA, tls_files: dict[str, Path], unique_name: str
) -> None:
    async with Proxy.in_front_of(
        amqp_url, server_ssl=_server_context(ca, require_client_cert=True)
    ) as proxy:
        settings = load_settings(
            amqp={
                "url": proxy.url(scheme="amqps"),
                "ca_file": tls_files["ca"],
                "cert_file": tls_files["cert"],
                "key_file": tls_files["key"],
            }
        )
        async with Client(settings) as client:
            async with client.expect("internal", unique_name, until=timedelta(seconds=10)) as w:
                assert (await client.send_custom_event(unique_name, {"over": "tls"})).routed
                event = await w
    assert event is not None and event.properties == {"over": "tls"}
    assert proxy.connections_seen >= 1


async def test_amqps_refuses_a_server_it_does_not_trust(amqp_url: str, ca: trustme.CA) -> None:
    async with Proxy.in_front_of(
        amqp_url, server_ssl=_server_context(ca, require_client_cert=False)
    ) as proxy:
        settings = load_settings(
            amqp={
                "url": proxy.url(scheme="amqps"),
                "connect_attempts": 1,
            }
        )
        with pytest.raises(BusUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
            async with Client(settings):
                pass


async def test_unreadable_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    settings = load_settings(
        amqp={"url": "amqps://guest:guest@127.0.0.1:5671/", "ca_file": tmp_path / "missing.pem"}
    )
    with pytest.raises(ConfigurationError, match="TLS files"):
        async with Client(settings):
            pass
