"""SOAP clients built by zeep against a real daemon: from the WSDL the daemon serves, and from a
vCO server's WSDL (a fixture shaped like the real ones) with its address pointed at the daemon.

CI also runs scripts/check_vco_wsdls.py against real vCO servers' WSDLs when it has them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import zeep
import zeep.exceptions
from zeep.transports import Transport

from tests.support.http import AUTH, ThreadedDaemon, bound_wait, daemon_settings

VCO_WSDL = Path(__file__).resolve().parent / "fixtures" / "vco-webcontrol.wsdl"
NAMESPACE = "http://webservice.vso.dunes.ch"


@pytest.fixture
def daemon(bus_kind: str, request: pytest.FixtureRequest) -> Iterator[ThreadedDaemon]:
    url = request.getfixturevalue("amqp_url") if bus_kind == "rabbitmq" else None
    with ThreadedDaemon(daemon_settings(bus_kind, url)) as running:
        yield running


def _transport() -> Transport:
    session = requests.Session()
    session.auth = AUTH
    return Transport(session=session, timeout=30, operation_timeout=30)


@pytest.mark.parametrize(
    "path", ["/vmware-vmo-webcontrol/webservice", "/vco/vmware-vmo-webcontrol/webservice"]
)
def test_zeep_from_the_served_wsdl(daemon: ThreadedDaemon, unique_name: str, path: str) -> None:
    client = zeep.Client(f"{daemon.url}{path}?wsdl", transport=_transport())
    assert client.service._binding_options["address"] == f"{daemon.url}{path}"
    with bound_wait(daemon.url, unique_name) as outcome:
        result = client.service.sendCustomEvent(
            eventName=unique_name, serializedProperties="vm=web-01\nstate=on"
        )
        received = outcome()
    assert result is None
    assert received["status"] == 200
    assert received["event"]["properties"] == {"vm": "web-01", "state": "on"}
    assert received["event"]["source"] == "soap"
    assert received["event"]["principal"] == "ops"


def test_zeep_without_properties(daemon: ThreadedDaemon, unique_name: str) -> None:
    client = zeep.Client(
        f"{daemon.url}/vmware-vmo-webcontrol/webservice?wsdl", transport=_transport()
    )
    with bound_wait(daemon.url, unique_name) as outcome:
        client.service.sendCustomEvent(eventName=unique_name, serializedProperties=None)
        assert outcome()["event"]["properties"] == {}


def test_zeep_sees_faults(daemon: ThreadedDaemon) -> None:
    client = zeep.Client(
        f"{daemon.url}/vmware-vmo-webcontrol/webservice?wsdl", transport=_transport()
    )
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client.service.sendCustomEvent(eventName="t.bad..name", serializedProperties="a=1")
    assert fault.value.code == "soapenv:Client"
    assert "empty word" in fault.value.message
    with pytest.raises(zeep.exceptions.Fault) as fault:
        client.service.sendCustomEvent(eventName="t.ok", serializedProperties="no-equals")
    assert "line 1" in fault.value.message


def test_zeep_without_credentials_gets_401(daemon: ThreadedDaemon) -> None:
    client = zeep.Client(f"{daemon.url}/vmware-vmo-webcontrol/webservice?wsdl")
    with pytest.raises((zeep.exceptions.Fault, zeep.exceptions.TransportError)) as refused:
        client.service.sendCustomEvent(eventName="t.ok", serializedProperties="")
    assert "credentials required" in str(refused.value.message)


def test_the_fixture_has_the_shape_of_a_vco_wsdl() -> None:
    """What the test below relies on: a client built from this file is a vCO client, not one
    built from the daemon's own WSDL."""
    client = zeep.Client(str(VCO_WSDL))
    service = client.wsdl.services["VSOWebControlService"]
    port = service.ports["webservice"]
    assert port.binding.name.text == f"{{{NAMESPACE}}}WebService"
    assert port.binding.port_type.name.text == f"{{{NAMESPACE}}}VSOWebControl"
    assert set(port.binding.port_type.operations) == {"echo", "sendCustomEvent"}
    assert port.binding_options["address"].startswith("http://vco.example.invalid:8280/")
    request = client.get_element(f"{{{NAMESPACE}}}sendCustomEvent")
    assert [name for name, _ in request.type.elements] == ["eventName", "serializedProperties"]
    assert not request.type.elements[1][1].is_optional  # required, unlike the daemon's WSDL


def test_zeep_from_a_vco_wsdl(daemon: ThreadedDaemon, unique_name: str) -> None:
    client = zeep.Client(str(VCO_WSDL), transport=_transport())
    service = client.create_service(
        f"{{{NAMESPACE}}}WebService", f"{daemon.url}/vmware-vmo-webcontrol/webservice"
    )
    with bound_wait(daemon.url, unique_name) as outcome:
        service.sendCustomEvent(eventName=unique_name, serializedProperties="a=1\nb=two words")
        received = outcome()
    assert received["event"]["properties"] == {"a": "1", "b": "two words"}
    assert received["event"]["kind"] == "external"
    assert received["event"]["source"] == "soap"
    # The other vCO operations are not the bridge's: a fault that says so.
    with pytest.raises(zeep.exceptions.Fault) as fault:
        service.echo(message="hello")
    assert fault.value.code == "soapenv:Client"
    assert "echo" in fault.value.message
