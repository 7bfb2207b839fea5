"""vRO's SOAP operation ``sendCustomEvent`` (SOAP 1.1, document/literal) and its WSDL.

Requests are parsed with defusedxml: a DTD of any kind is refused, so entity expansion and external
entities never happen. Any namespace prefix is accepted, the parameters may be namespace-qualified
(as the WSDL says) or not (as hand-written clients often send them), and SOAPAction is ignored.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from importlib import resources
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from ._gateway import Gateway, HttpError, read_body

__all__ = ["SOAP_PATHS", "VSO_NS", "SendCustomEvent", "parse_request", "soap_router"]

SOAP_PATHS = ("/vco/vmware-vmo-webcontrol/webservice", "/vmware-vmo-webcontrol/webservice")
VSO_NS = "http://webservice.vso.dunes.ch"
SOAP11_NS = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XML_TYPE = "text/xml; charset=utf-8"

_ENVELOPE = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    f'<soapenv:Envelope xmlns:soapenv="{SOAP11_NS}"><soapenv:Body>{{}}</soapenv:Body>'
    "</soapenv:Envelope>"
)
_RESPONSE = _ENVELOPE.format(f'<sendCustomEventResponse xmlns="{VSO_NS}"/>').encode()
_PARAMETERS = ("eventName", "serializedProperties")
_WSDL = string.Template(resources.files("adapter").joinpath("vso.wsdl").read_text("utf-8"))


@dataclass(frozen=True, slots=True)
class SendCustomEvent:
    """The parameters of one ``sendCustomEvent`` call."""

    event_name: str
    serialized_properties: str | None


def _fault(message: str, *, malformed: bool = False, code: str = "Client") -> HttpError:
    # A message that is no SOAP request is a 400 (WS-I Basic Profile); a request that asks for
    # the wrong thing is a fault, which SOAP 1.1 sends with HTTP 500.
    return HttpError(400, message, fault=code, soap_status=None if malformed else 500)


def _split(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return namespace, local
    return "", tag


def _children(element: Element) -> list[Element]:
    # Comments and processing instructions have a non-string tag; they are not content.
    return [child for child in element if isinstance(child.tag, str)]


def parse_request(body: bytes) -> SendCustomEvent:
    """The call in a SOAP 1.1 request; ``HttpError`` 400 for XML that is refused or is not a SOAP
    envelope, 500 (a ``Client`` fault, as SOAP 1.1 wants) for an envelope that asks for the wrong
    thing."""
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise _fault(f"refused XML: {type(exc).__name__}: {exc}", malformed=True) from None
    except ParseError as exc:
        raise _fault(f"the request is not well-formed XML: {exc}", malformed=True) from None
    except (LookupError, ValueError) as exc:
        # expat raises these, not ParseError, for an unknown encoding in the XML declaration.
        raise _fault(f"the request's XML cannot be decoded: {exc}", malformed=True) from None
    namespace, local = _split(root.tag)
    if local != "Envelope" or namespace not in (SOAP11_NS, SOAP12_NS):
        raise _fault(
            f"the request is not a SOAP envelope (root element {root.tag!r})", malformed=True
        )
    if namespace == SOAP12_NS:
        raise _fault(
            f"this endpoint speaks SOAP 1.1 (envelope namespace {SOAP11_NS})",
            malformed=True,
            code="VersionMismatch",
        )
    header = None
    body_element = None
    for child in _children(root):
        if child.tag == f"{{{SOAP11_NS}}}Header" and header is None:
            header = child
        elif child.tag == f"{{{SOAP11_NS}}}Body" and body_element is None:
            body_element = child
        else:
            raise _fault(f"unexpected element {child.tag!r} in the SOAP envelope", malformed=True)
    if body_element is None:
        raise _fault("the SOAP envelope has no Body", malformed=True)
    for entry in _children(header) if header is not None else ():
        if entry.get(f"{{{SOAP11_NS}}}mustUnderstand") in ("1", "true"):
            raise _fault(
                f"header {entry.tag!r} is marked mustUnderstand, and is not understood",
                code="MustUnderstand",
            )
    operations = _children(body_element)
    if len(operations) != 1:
        raise _fault(f"the SOAP Body must hold one operation element, not {len(operations)}")
    operation = operations[0]
    namespace, local = _split(operation.tag)
    if local != "sendCustomEvent" or namespace not in (VSO_NS, ""):
        raise _fault(
            f"operation {operation.tag!r} is not offered here: this endpoint implements "
            f"sendCustomEvent of {VSO_NS}"
        )
    values: dict[str, str | None] = {}
    for parameter in _children(operation):
        namespace, local = _split(parameter.tag)
        if local not in _PARAMETERS or namespace not in (VSO_NS, ""):
            raise _fault(f"sendCustomEvent has no parameter {parameter.tag!r}")
        if local in values:
            raise _fault(f"sendCustomEvent parameter {local} is given twice")
        if _children(parameter):
            raise _fault(f"sendCustomEvent parameter {local} must be text, not elements")
        nil = parameter.get(f"{{{XSI_NS}}}nil") in ("true", "1")
        values[local] = None if nil else (parameter.text or "")
    event_name = values.get("eventName")
    if event_name is None:
        raise _fault("sendCustomEvent needs an eventName")
    return SendCustomEvent(event_name, values.get("serializedProperties"))


def fault_response(error: HttpError) -> Response:
    """A SOAP 1.1 Fault for a refusal; HTTP 500 for an envelope we refused (SOAP 1.1), else the
    status of the refusal (400 malformed, 401, 403, 413, 429)."""
    code = f"soapenv:{error.fault}"
    body = _ENVELOPE.format(
        f"<soapenv:Fault><faultcode>{code}</faultcode>"
        f"<faultstring>{_xml_text(error.detail)}</faultstring></soapenv:Fault>"
    )
    status = error.soap_status or error.status
    return Response(body.encode(), status_code=status, media_type=XML_TYPE, headers=error.headers)


def _xml_text(text: str) -> str:
    # XML 1.0 cannot carry most control characters, even escaped; an error may quote them.
    cleaned = "".join(c if c in "\t\n\r" or ord(c) >= 0x20 else "?" for c in text)
    return escape(cleaned)


def wsdl_document(address: str) -> bytes:
    """The WSDL with ``soap:address`` set to ``address``."""
    return _WSDL.substitute(address=escape(address, {'"': "&quot;"})).encode()


def soap_router(gateway: Gateway) -> APIRouter:
    """The SOAP endpoint and its WSDL, at both of vRO's paths."""
    router = APIRouter(include_in_schema=False)
    public_url = gateway.settings.http.public_url
    limit = gateway.settings.http.max_body_bytes

    async def describe(request: Request) -> Response:
        if not any(key.lower() == "wsdl" for key in request.query_params):
            return Response(
                "customevent-bridge SOAP endpoint (vRO VSOWebControl.sendCustomEvent); "
                "the WSDL is at ?wsdl\n",
                media_type="text/plain; charset=utf-8",
            )
        if public_url:
            address = public_url.rstrip("/") + request.url.path
        else:
            address = str(request.url.replace(query="", fragment=""))
        return Response(wsdl_document(address), media_type=XML_TYPE)

    async def call(request: Request) -> Response:
        try:
            with gateway.counting("soap"):
                caller = await gateway.caller(request)
                call = parse_request(await read_body(request, limit))
                try:
                    await gateway.send(
                        request, caller, call.event_name, call.serialized_properties, source="soap"
                    )
                except HttpError as exc:
                    if exc.status in (400, 413):
                        # A well-formed call with bad values: a Client fault, with HTTP 500.
                        exc.soap_status = 500
                    raise
        except HttpError as exc:
            return fault_response(exc)
        return Response(_RESPONSE, media_type=XML_TYPE)

    for path in SOAP_PATHS:
        router.add_api_route(path, describe, methods=["GET"])
        router.add_api_route(path, call, methods=["POST"])
    return router
