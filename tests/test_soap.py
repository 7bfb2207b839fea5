"""vRO's SOAP operation: hand-written envelopes in many styles, faults, hostile XML, the WSDL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest

from adapter import Client
from adapter._http._soap import parse_request
from tests.support.http import HEADERS, asgi_client, make_settings

SOAP_PATHS = ["/vco/vmware-vmo-webcontrol/webservice", "/vmware-vmo-webcontrol/webservice"]
VSO = "http://webservice.vso.dunes.ch"
ENV = "http://schemas.xmlsoap.org/soap/envelope/"


@pytest.fixture
async def http(client: Client) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(client, make_settings()) as opened:
        opened.headers.update(HEADERS)
        yield opened


def _styles(name: str, props: str) -> dict[str, str]:
    """The same call written the ways real clients write it."""
    return {
        "soapenv-prefix": (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f'<soapenv:Envelope xmlns:soapenv="{ENV}" xmlns:web="{VSO}"><soapenv:Header/>'
            f"<soapenv:Body><web:sendCustomEvent><web:eventName>{name}</web:eventName>"
            f"<web:serializedProperties>{props}</web:serializedProperties>"
            "</web:sendCustomEvent></soapenv:Body></soapenv:Envelope>"
        ),
        "SOAP-ENV-prefix-no-declaration": (
            f'<SOAP-ENV:Envelope xmlns:SOAP-ENV="{ENV}" xmlns:ns1="{VSO}"><SOAP-ENV:Body>'
            f"<ns1:sendCustomEvent><ns1:eventName>{name}</ns1:eventName>"
            f"<ns1:serializedProperties>{props}</ns1:serializedProperties>"
            "</ns1:sendCustomEvent></SOAP-ENV:Body></SOAP-ENV:Envelope>"
        ),
        "default-namespaces": (
            f'<?xml version="1.0"?>\n<Envelope xmlns="{ENV}">\n  <Body>\n'
            f'    <sendCustomEvent xmlns="{VSO}">\n      <eventName>{name}</eventName>\n'
            f"      <serializedProperties>{props}</serializedProperties>\n"
            "    </sendCustomEvent>\n  </Body>\n</Envelope>\n"
        ),
        "unqualified-parameters": (
            f'<s:Envelope xmlns:s="{ENV}"><s:Body><v:sendCustomEvent xmlns:v="{VSO}">'
            f"<eventName>{name}</eventName><serializedProperties>{props}</serializedProperties>"
            "</v:sendCustomEvent></s:Body></s:Envelope>"
        ),
    }


@pytest.mark.parametrize("path", SOAP_PATHS)
@pytest.mark.parametrize(
    "style",
    [
        "soapenv-prefix",
        "SOAP-ENV-prefix-no-declaration",
        "default-namespaces",
        "unqualified-parameters",
    ],
)
@pytest.mark.parametrize("soap_action", [None, "", '""', '"urn:sendCustomEvent"'])
async def test_envelope_styles_send_the_event(
    client: Client,
    http: httpx.AsyncClient,
    unique_name: str,
    path: str,
    style: str,
    soap_action: str | None,
) -> None:
    body = _styles(unique_name, "vm=web-01\nnote=a &amp; b &lt;c&gt;")[style]
    headers = {"content-type": "text/xml; charset=utf-8"}
    if soap_action is not None:
        headers["SOAPAction"] = soap_action
    async with client.expect("external", unique_name, until=timedelta(seconds=10)) as waiter:
        response = await http.post(path, content=body.encode(), headers=headers)
        event = await waiter
    assert response.status_code == 200, response.text
    assert "sendCustomEventResponse" in response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert event is not None
    assert event.properties == {"vm": "web-01", "note": "a & b <c>"}
    assert (event.kind, event.source, event.principal) == ("external", "soap", "ops")


@pytest.mark.parametrize(
    "parameter",
    [
        "",
        "<web:serializedProperties/>",
        '<web:serializedProperties xsi:nil="true"/>',
        '<web:serializedProperties xsi:nil="1"></web:serializedProperties>',
    ],
    ids=["missing", "empty", "nil", "nil-1"],
)
async def test_absent_or_nil_properties_mean_none(
    client: Client, http: httpx.AsyncClient, unique_name: str, parameter: str
) -> None:
    body = (
        f'<soapenv:Envelope xmlns:soapenv="{ENV}" xmlns:web="{VSO}" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>'
        f"<web:sendCustomEvent><web:eventName>{unique_name}</web:eventName>{parameter}"
        "</web:sendCustomEvent></soapenv:Body></soapenv:Envelope>"
    )
    async with client.expect("external", unique_name, until=timedelta(seconds=10)) as waiter:
        response = await http.post(SOAP_PATHS[1], content=body)
        event = await waiter
    assert response.status_code == 200, response.text
    assert event is not None
    assert event.properties == {}


def _call(name: str, props: str = "", *, extra: str = "", op: str = "sendCustomEvent") -> bytes:
    return (
        f'<e:Envelope xmlns:e="{ENV}" xmlns:v="{VSO}"><e:Body><v:{op}>'
        f"<v:eventName>{name}</v:eventName><v:serializedProperties>{props}"
        f"</v:serializedProperties>{extra}</v:{op}></e:Body></e:Envelope>"
    ).encode()


@pytest.mark.parametrize(
    ("body", "status", "code", "words"),
    [
        (_call("t.a..b"), 500, "soapenv:Client", "must not contain an empty word"),
        (_call("t.ok", "nope"), 500, "soapenv:Client", "line 1: no '='"),
        (_call("t.ok", extra="<v:other>1</v:other>"), 500, "soapenv:Client", "no parameter"),
        (_call("t.ok", op="executeWorkflow"), 500, "soapenv:Client", "not offered here"),
        (
            f'<e:Envelope xmlns:e="{ENV}"><e:Body><v:sendCustomEvent xmlns:v="{VSO}"/>'
            "</e:Body></e:Envelope>".encode(),
            500,
            "soapenv:Client",
            "needs an eventName",
        ),
        (
            f'<e:Envelope xmlns:e="{ENV}"><e:Header><h:Auth xmlns:h="urn:x" '
            'e:mustUnderstand="1"/></e:Header><e:Body/></e:Envelope>'.encode(),
            500,
            "soapenv:MustUnderstand",
            "mustUnderstand",
        ),
        (b"this is not xml", 400, "soapenv:Client", "not well-formed XML"),
        (b"<a>unclosed", 400, "soapenv:Client", "not well-formed XML"),
        (b"<notsoap/>", 400, "soapenv:Client", "not a SOAP envelope"),
        (
            b'<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Body/></e:Envelope>',
            400,
            "soapenv:VersionMismatch",
            "SOAP 1.1",
        ),
    ],
)
async def test_bad_requests_get_a_fault_with_the_reason(
    http: httpx.AsyncClient, body: bytes, status: int, code: str, words: str
) -> None:
    response = await http.post(SOAP_PATHS[0], content=body)
    assert response.status_code == status
    assert f"<faultcode>{code}</faultcode>" in response.text
    assert words in response.text


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>
<v:sendCustomEvent xmlns:v="http://webservice.vso.dunes.ch"><v:eventName>t.x</v:eventName>
<v:serializedProperties>a=&lol9;</v:serializedProperties></v:sendCustomEvent></e:Body></e:Envelope>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE e [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>
<v:sendCustomEvent xmlns:v="http://webservice.vso.dunes.ch"><v:eventName>t.x</v:eventName>
<v:serializedProperties>a=&xxe;</v:serializedProperties></v:sendCustomEvent></e:Body></e:Envelope>
"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE e SYSTEM "http://127.0.0.1:9/evil.dtd">
<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body/></e:Envelope>
"""


@pytest.mark.parametrize(
    "hostile", [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD], ids=["laughs", "xxe", "dtd"]
)
async def test_hostile_xml_is_refused_and_the_daemon_keeps_serving(
    client: Client, http: httpx.AsyncClient, unique_name: str, hostile: bytes
) -> None:
    refused = await http.post(SOAP_PATHS[1], content=hostile)
    assert refused.status_code == 400
    assert "DTDForbidden" in refused.text
    assert "root:" not in refused.text
    async with client.expect("external", unique_name, until=timedelta(seconds=10)) as waiter:
        ok = await http.post(SOAP_PATHS[1], content=_call(unique_name, "a=1"))
        assert await waiter is not None
    assert ok.status_code == 200


async def test_ten_megabytes_is_413_and_the_daemon_keeps_serving(
    client: Client, http: httpx.AsyncClient, unique_name: str
) -> None:
    huge = _call("t.x", "a=" + "x" * (10 * 1024 * 1024))
    refused = await http.post(SOAP_PATHS[0], content=huge)
    assert refused.status_code == 413
    assert "larger than the limit" in refused.text

    async def trickle() -> AsyncIterator[bytes]:  # no Content-Length: the reader must stop
        for _ in range(160):
            yield b"<!--" + b"x" * 65536 + b"-->"

    refused = await http.post(SOAP_PATHS[0], content=trickle())
    assert refused.status_code == 413
    ok = await http.post(SOAP_PATHS[0], content=_call(unique_name))
    assert ok.status_code == 200


async def test_soap_needs_the_same_auth(client: Client, unique_name: str) -> None:
    async with asgi_client(client, make_settings()) as http:
        anonymous = await http.post(SOAP_PATHS[0], content=_call(unique_name))
        outside = await http.post(SOAP_PATHS[0], content=_call("other.name"), headers=HEADERS)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="customevent", Bearer'
    assert outside.status_code == 403
    assert "<faultcode>soapenv:Client</faultcode>" in outside.text


@pytest.mark.parametrize("path", SOAP_PATHS)
async def test_wsdl_is_served_with_our_address(http: httpx.AsyncClient, path: str) -> None:
    for query in ("wsdl", "WSDL"):
        response = await http.get(f"{path}?{query}")
        assert response.status_code == 200
        assert f'location="http://daemon.test{path}"' in response.text
        assert 'name="VSOWebControlService"' in response.text
    plain = await http.get(path)
    assert "?wsdl" in plain.text


async def test_wsdl_uses_public_url(client: Client) -> None:
    settings = make_settings(http={"public_url": "https://events.example.com/"})
    async with asgi_client(client, settings) as http:
        response = await http.get(f"{SOAP_PATHS[1]}?wsdl")
    assert f'location="https://events.example.com{SOAP_PATHS[1]}"' in response.text


def test_parse_keeps_the_text_exactly() -> None:
    call = parse_request(_call("t.x", "a= spaced \nb=1=2"))
    assert call.event_name == "t.x"
    assert call.serialized_properties == "a= spaced \nb=1=2"
