"""The daemon's HTTP application: vRO's REST path and SOAP operation, the JSON API, waits,
health, readiness and metrics."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qs

from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from .._asyncapi import asyncapi_document
from .._client import Client
from .._clock import SYSTEM_CLOCK, Clock
from .._cloudevents import STRUCTURED_CONTENT_TYPE
from .._exceptions import InvalidInput
from .._match import parse_match_items
from .._properties import loads_json_object
from .._settings import Settings
from ._cloudevents import (
    RETAIN_PARAMETER,
    accepts_cloudevent,
    cloudevents_operation,
    cloudevents_route,
    query_once,
)
from ._gateway import (
    BUS_RETRY_AFTER,
    Gateway,
    HttpError,
    caller_key,
    path_name,
    read_body,
    retain_parameter,
)
from ._logging import RequestContext
from ._soap import soap_router
from ._trace import TraceContext
from ._wait import WaitResponse, parse_deadline, scoped

__all__ = ["create_app"]

VRO_PATH = "/vco/api/customevent/{eventName}"
JSON_PATH = "/api/v1/events/{name}"
_SECURITY: list[dict[str, list[str]]] = [{"basic": []}, {"bearer": []}]
_SECURITY_SCHEMES = {
    "basic": {"type": "http", "scheme": "basic"},
    "bearer": {"type": "http", "scheme": "bearer"},
}


class _Anything(Convertor[str]):
    """A path parameter that takes any text, '/' and line breaks included, so that the name
    rules refuse it with 400 and their reason, instead of a route that does not match (404)."""

    regex = r"(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _Anything())


class SendRequest(BaseModel):
    """Body of ``POST /api/v1/events/{name}``."""

    model_config = ConfigDict(extra="forbid")

    properties: dict[str, str] = Field(default_factory=dict, description="property values")
    event_id: str | None = Field(
        default=None, description="your own event id (1 to 200 printable characters), for de-dup"
    )
    retain: str | None = Field(
        default=None,
        description="keep the event for waits that start later on its name: 30s, 5m, at most "
        "amqp.max_retain",
    )


class SendResponse(BaseModel):
    event_id: str
    routed: bool = Field(
        description="true if at least one wait or group was bound to the event's name"
    )
    retained: bool = Field(description="true if it was kept (retain) for waits that start later")
    outcome: Literal["routed", "retained", "unrouted"] = Field(
        description="routed, else retained, else unrouted (nobody was bound: nobody received it)"
    )


class Problem(BaseModel):
    detail: str


class EventOut(BaseModel):
    name: str
    kind: Literal["external", "internal"]
    properties: dict[str, str]
    event_id: str
    sent_at: str
    source: str
    principal: str | None
    traceparent: str | None = Field(
        default=None, description="the W3C trace context the event was sent in, when traced"
    )
    tracestate: str | None = None


class StreamOutcome(BaseModel):
    """``stream=true``: the JSON object the body ends with (after heartbeat newlines), whose
    ``status`` is what the wait would have answered without ``stream``."""

    status: int
    event: EventOut | None = None
    cloudevent: dict[str, Any] | None = None
    detail: str | None = None
    unmatched: int | None = None


#: What a send may be answered besides its success.
SEND_STATUSES = (400, 401, 403, 413, 429, 503)
_PROBLEMS = {
    400: "bad input: the name, properties, or parameters break a rule",
    401: "missing or wrong credentials",
    403: "the event name is outside the caller's allow list",
    413: "the body or the properties are over the limits",
    429: "rate limit exceeded; see Retry-After",
    503: "the bus cannot confirm right now; see Retry-After",
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": Problem, "description": _PROBLEMS[status]} for status in statuses}


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _responses(success: dict[str, Any], *statuses: int) -> dict[str, Any]:
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    described = {str(s): {"description": _PROBLEMS[s], "content": problem} for s in statuses}
    return {**success, **described}


_SEND_OPERATIONS: dict[str, dict[str, Any]] = {
    VRO_PATH: {
        "summary": "Send an external event (vRO 8 REST path)",
        "operationId": "vro_send",
        "security": _SECURITY,
        "parameters": [
            _path_parameter("eventName"),
            {
                "name": "properties",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "serializedProperties: name=value lines",
            },
            RETAIN_PARAMETER,
        ],
        "requestBody": {
            "required": False,
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "serializedProperties (name=value lines), instead of the query",
        },
        "responses": _responses(
            {"200": {"description": "the bus confirmed the event (empty body)"}},
            *SEND_STATUSES,
        ),
    },
    JSON_PATH: {
        "summary": "Send an external event",
        "operationId": "json_send",
        "security": _SECURITY,
        "parameters": [_path_parameter("name")],
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": SendRequest.model_json_schema()}},
        },
        "responses": _responses(
            {
                "202": {
                    "description": "the bus confirmed the event",
                    "content": {"application/json": {"schema": SendResponse.model_json_schema()}},
                }
            },
            *SEND_STATUSES,
        ),
    },
}


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            schema = super().openapi()
            components = schema.setdefault("components", {})
            components["securitySchemes"] = _SECURITY_SCHEMES
            components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
            for path, operation in _SEND_OPERATIONS.items():
                schema["paths"].setdefault(path, {})["post"] = operation
            path, operation = cloudevents_operation(
                lambda success: _responses(success, *SEND_STATUSES), _SECURITY
            )
            schema["paths"].setdefault(path, {})["post"] = operation
        assert self.openapi_schema is not None
        return self.openapi_schema


def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("query", "path"))
        parts.append(f"{where}: {error.get('msg')}")
    return JSONResponse({"detail": "; ".join(parts) or "bad request"}, status_code=400)


def _properties_text(request: Request, body: bytes, query: str | None) -> str | None:
    """serializedProperties from the query or the body (text, or a form's ``properties``)."""
    if not body:
        return query
    if query is not None:
        raise HttpError(400, "give the properties in the query or in the body, not both")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"the body is not UTF-8 text: {exc}") from None
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return text
    fields = parse_qs(text, keep_blank_values=True)
    values = fields.get("properties", [])
    if len(values) > 1:
        raise HttpError(400, "the form gives properties more than once")
    return values[0] if values else None


def create_app(settings: Settings, client: Client, *, clock: Clock = SYSTEM_CLOCK) -> FastAPI:
    """The daemon's ASGI application, sending through ``client`` (opened by the caller);
    ``clock`` is what its rate limits, refusal memory and callers' shares read."""
    gateway = Gateway(settings, client, clock)
    figures = gateway.metrics
    limit = settings.http.max_body_bytes
    app = _App(
        title="customevent-bridge",
        version=__version__,
        description="vRO-style custom events on RabbitMQ: send them, wait for them. The SOAP "
        "operation is described by its WSDL at /vmware-vmo-webcontrol/webservice?wsdl.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    app.add_exception_handler(HttpError, _problem)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(RequestContext)
    app.add_middleware(TraceContext)  # outermost: the access line is in the request's trace
    reconnects = getattr(client.bus, "on_reconnect", None)
    if isinstance(reconnects, list) and figures.bus_reconnects.inc not in reconnects:
        reconnects.append(figures.bus_reconnects.inc)

    async def vro_send(request: Request) -> Response:
        with gateway.counting("rest"):
            caller = await gateway.caller(request)
            queries = request.query_params.getlist("properties")
            if len(queries) > 1:
                raise HttpError(400, "the query gives properties more than once")
            retain = retain_parameter(query_once(request, "retain"))
            name = path_name(request, "eventName")
            gateway.authorize(caller, name)  # a 403 before the body is read
            body = await read_body(request, limit)
            text = _properties_text(request, body, queries[0] if queries else None)
            result = await gateway.send(request, caller, name, text, source="http", retain=retain)
        return Response(status_code=200, headers={"x-event-id": result.event_id})

    async def json_send(request: Request) -> Response:
        with gateway.counting("json"):
            caller = await gateway.caller(request)
            name = path_name(request, "name")
            gateway.authorize(caller, name)  # a 403 before the body is read
            body = await read_body(request, limit)
            try:
                data = loads_json_object(body, "the request body") if body else {}
                payload = SendRequest.model_validate(data)
            except InvalidInput as exc:
                raise HttpError(400, str(exc)) from None
            except ValidationError as exc:
                raise HttpError(400, _describe(exc)) from None
            result = await gateway.send(
                request,
                caller,
                name,
                payload.properties,
                source="http",
                event_id=payload.event_id,
                retain=retain_parameter(payload.retain),
            )
        return JSONResponse(result.to_json(), status_code=202)

    # The sends are plain Starlette routes, first in line: FastAPI's per-request parameter
    # machinery cost more than the rest of a send together. Their OpenAPI entries are written
    # out in _SEND_OPERATIONS instead.
    app.router.routes[:0] = [
        Route(VRO_PATH.replace("}", ":anything}"), vro_send, methods=["POST"]),
        Route(JSON_PATH.replace("}", ":anything}"), json_send, methods=["POST"]),
        cloudevents_route(gateway, limit),
    ]

    @app.get(
        "/api/v1/events/{name:anything}/wait",
        summary="Wait for an event until a deadline (long poll)",
        response_model=EventOut | StreamOutcome,
        responses={
            200: {
                "description": "the event (stream=true: bound; the outcome follows in the "
                "body); with Accept: application/cloudevents+json, the event as a structured "
                "CloudEvent (stream=true: in the outcome's cloudevent member)",
                "content": {STRUCTURED_CONTENT_TYPE: {"schema": {"type": "object"}}},
            },
            204: {"description": "the deadline passed with no event"},
            **_problems(400, 401, 403, 429, 503),
        },
        openapi_extra={"security": _SECURITY},
    )
    async def wait(
        name: str,
        request: Request,
        duration: str | None = Query(
            default=None, alias="timeout", description="30s, 5m, 1h or seconds"
        ),
        until: str | None = Query(default=None, description="RFC 3339 deadline"),
        kind: Literal["external", "internal"] = Query(default="external"),
        wait_id: str | None = Query(
            default=None,
            description="resumable wait: a new wait with the same id gets what was "
            "sent while nobody waited",
        ),
        stream: bool = Query(
            default=False, description="answer 200 once bound; the outcome follows in the body"
        ),
        match: tuple[str, ...] | None = Query(
            default=None,
            description="KEY=VALUE (URL-encoded: vm%3Dweb-01), repeatable: only an event whose "
            "properties carry all of them answers; the answer says how many did not "
            "(x-customevent-unmatched, or unmatched in the stream outcome)",
        ),
    ) -> Response:
        caller = await gateway.caller(request)
        pattern = gateway.authorize_wait(caller, kind, path_name(request, "name"))
        deadline = parse_deadline(duration, until, settings.http.max_wait)
        try:
            matching = parse_match_items(match or (), "match=")
        except InvalidInput as exc:
            raise HttpError(400, str(exc)) from None
        return WaitResponse(
            gateway,
            kind,
            pattern,
            deadline,
            wait_id=scoped(wait_id, caller.name),
            stream=stream,
            caller_key=caller_key(request, caller),
            cloudevent=accepts_cloudevent(request),
            match=matching,
        )

    app.include_router(soap_router(gateway))

    @app.get("/healthz", summary="The daemon is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="The bus is connected and the daemon is not stopping",
        responses={503: {"model": Problem, "description": "not ready"}},
    )
    async def readyz() -> Response:
        if client.bus.connected and not gateway.stopping.is_set():
            return JSONResponse({"status": "ready", "bus": client.bus.name})
        return JSONResponse(
            {"detail": f"not ready: the {client.bus.name} bus is not connected"}
            if not gateway.stopping.is_set()
            else {"detail": "not ready: the daemon is stopping"},
            status_code=503,
            headers={"Retry-After": str(BUS_RETRY_AFTER)},
        )

    contract = asyncapi_document(settings)

    @app.get(
        "/asyncapi.json",
        summary="AsyncAPI 3 document of the bus contract: exchange, routing keys, headers, "
        "CloudEvents attributes, MQTT topics",
    )
    async def asyncapi() -> dict[str, Any]:
        return contract

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        figures.bus_connected.set(1 if client.bus.connected else 0)
        return Response(generate_latest(figures.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)
