"""SOAP clients built by zeep against a real daemon: from the WSDL the daemon serves, and from a
real vCO server's WSDL with its address pointed at the daemon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import zeep
import zeep.exceptions
from zeep.transports import Transport

from tests.test_http_support import AUTH, ThreadedDaemon, bound_wait, daemon_settings

VRO_WSDL = Path(__file__).resolve().parents[2] / "shared" / "vro-wsdl" / "vco-gae_vmo.wsdl"


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


def test_zeep_from_a_real_vco_wsdl(daemon: ThreadedDaemon, unique_name: str) -> None:
    client = zeep.Client(str(VRO_WSDL), transport=_transport())
    service = client.create_service(
        "{http://webservice.vso.dunes.ch}WebService",
        f"{daemon.url}/vmware-vmo-webcontrol/webservice",
    )
    with bound_wait(daemon.url, unique_name) as outcome:
        service.sendCustomEvent(eventName=unique_name, serializedProperties="a=1\nb=two words")
        received = outcome()
    assert received["event"]["properties"] == {"a": "1", "b": "two words"}
    assert received["event"]["kind"] == "external"
