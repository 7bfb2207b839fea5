"""``POST /api/v1/cloudevents``: CloudEvents in binary, structured or batch mode, sent as external
events with the same authentication, allow-lists, rate limits, property rules and bounds as every
other send. A batch is checked whole (every CloudEvent valid and allowed, the rate paid for all)
before any of it is published, and the answer lists the outcome of each. A batch is counted, and
refused past ``http.max_batch`` or the caller's rate, before any of its CloudEvents is decoded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._cloudevents import (
    BATCH_CONTENT_TYPE,
    STRUCTURED_CONTENT_TYPE,
    batch_item,
    from_cloudevent,
    from_http,
)
from .._event import Event, SendResult
from .._exceptions import InvalidInput
from ._gateway import Gateway, HttpError, caller_key, edge_error, read_body, retain_parameter

__all__ = [
    "CLOUDEVENTS_PATH",
    "RETAIN_PARAMETER",
    "accepts_cloudevent",
    "cloudevents_operation",
    "cloudevents_route",
    "query_once",
]

CLOUDEVENTS_PATH = "/api/v1/cloudevents"
RETAIN_PARAMETER: dict[str, Any] = {
    "name": "retain",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "keep the event for waits that start later on its exact name: 30s, 5m, at "
    "most amqp.max_retain",
}


def query_once(request: Request, name: str) -> str | None:
    """A query parameter given at most once (400 if more)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise HttpError(400, f"the query gives {name} more than once")
    return values[0] if values else None


def accepts_cloudevent(request: Request) -> bool:
    """True if the request's Accept header asks for a structured CloudEvent (with a q above
    0)."""
    for item in request.headers.getlist("accept"):
        for part in item.split(","):
            media, *parameters = part.split(";")
            if media.strip().lower() != STRUCTURED_CONTENT_TYPE:
                continue
            quality = 1.0
            for parameter in parameters:
                name, _, value = parameter.partition("=")
                if name.strip().lower() == "q":
                    try:
                        quality = float(value)
                    except ValueError:
                        quality = 0.0
            if quality > 0:
                return True
    return False


def _is_batch(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == BATCH_CONTENT_TYPE


def _events(gateway: Gateway, request: Request, body: bytes, caller: Any) -> list[Event]:
    """Every CloudEvent of the request as a checked event the caller may send, or the first
    refusal (naming its place in a batch). The batch's bound and the caller's rate are checked
    (and the rate paid for all) once the CloudEvents are counted, before any is decoded."""
    limits = gateway.settings.limits
    batch = _is_batch(request)
    most = gateway.settings.http.max_batch

    def admit(count: int) -> None:
        # A 19,064-item batch decoded whole before this check took 1.5 s of the loop per
        # request: 8 such clients raised another principal's send latency from 4.6 ms to 1.5 s.
        if count > most:
            raise HttpError(
                413, f"a batch of {count} CloudEvents is more than http.max_batch ({most})"
            )
        gateway.take_rate(request, caller, count)

    try:
        cloudevents = from_http(request.headers.items(), body, admit=admit)
    except InvalidInput as exc:
        raise edge_error(exc) from None
    events = []
    for index, cloudevent in enumerate(cloudevents):
        where = batch_item(index, len(cloudevents)) + ": " if batch else ""
        try:
            event = from_cloudevent(
                cloudevent,
                kind="external",
                source="http",
                principal=caller.name,
                max_bytes=limits.max_bytes,
                max_properties=limits.max_properties,
            )
            gateway.authorize(caller, event.name)
        except InvalidInput as exc:
            refusal = edge_error(exc)
            raise HttpError(refusal.status, where + refusal.detail) from None
        except HttpError as exc:
            raise HttpError(exc.status, where + exc.detail, headers=exc.headers) from None
        events.append(event)
    return events


def cloudevents_route(gateway: Gateway, limit: int) -> Route:
    """The route of ``POST /api/v1/cloudevents`` (``limit``: the body's bound in bytes)."""

    async def receive(request: Request) -> Response:
        with gateway.counting("cloudevents"):
            caller = await gateway.caller(request)
            retain = retain_parameter(query_once(request, "retain"))
            body = await read_body(request, limit)
            events = _events(gateway, request, body, caller)
            if not _is_batch(request):
                (event,) = events
                result = await gateway.publish(
                    event, retain=retain, caller_key=caller_key(request, caller)
                )
                return JSONResponse(result.to_json(), status_code=202)
            outcomes = await asyncio.gather(
                *(
                    gateway.publish(event, retain=retain, caller_key=caller_key(request, caller))
                    for event in events
                ),
                return_exceptions=True,
            )
            return _batch_answer(events, outcomes)

    return Route(CLOUDEVENTS_PATH, receive, methods=["POST"])


def _batch_answer(events: list[Event], outcomes: list[SendResult | BaseException]) -> Response:
    results: list[dict[str, Any]] = []
    refused: HttpError | None = None
    for event, outcome in zip(events, outcomes, strict=True):
        if isinstance(outcome, HttpError):
            results.append({"event_id": event.event_id, "error": outcome.detail})
            refused = refused or outcome
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append(outcome.to_json())
    if refused is None:
        return JSONResponse({"results": results}, status_code=202)
    failed = sum("error" in result for result in results)
    # The ones with an event_id and no error were sent: retry the others (their ids make a
    # retry of the whole batch safe for triggers, which de-duplicate by id).
    return JSONResponse(
        {
            "detail": f"{failed} of {len(events)} CloudEvents were not sent: {refused.detail}",
            "results": results,
        },
        status_code=refused.status,
        headers=refused.headers,
    )


def cloudevents_operation(
    responses: Callable[..., dict[str, Any]], security: list[dict[str, list[str]]]
) -> tuple[str, dict[str, Any]]:
    """The OpenAPI operation of ``POST /api/v1/cloudevents``, built with the application's own
    ``responses`` helper (the success responses in, with a send's problems added) and security
    requirement."""
    result = {
        "type": "object",
        "properties": {
            "event_id": {"type": "string"},
            "routed": {"type": "boolean"},
            "retained": {"type": "boolean"},
            "outcome": {"type": "string", "enum": ["routed", "retained", "unrouted"]},
        },
        "required": ["event_id", "routed"],
    }
    cloudevent = {
        "type": "object",
        "description": "a CloudEvent 1.0 in the JSON format; type is the event name, data the "
        "properties (an object of strings)",
        "properties": {
            "specversion": {"type": "string", "enum": ["1.0"]},
            "id": {"type": "string"},
            "type": {"type": "string"},
            "source": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string"},
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["specversion", "id", "type", "source"],
    }
    header = {"in": "header", "required": False, "schema": {"type": "string"}}
    operation = {
        "summary": "Send CloudEvents as external events (binary, structured or batch mode)",
        "operationId": "cloudevents_send",
        "security": security,
        "parameters": [
            RETAIN_PARAMETER,
            *(
                {"name": f"ce-{name}", **header, "description": f"binary mode: the {name}"}
                for name in ("specversion", "id", "type", "source", "time")
            ),
        ],
        "requestBody": {
            "required": True,
            "content": {
                STRUCTURED_CONTENT_TYPE: {"schema": cloudevent},
                BATCH_CONTENT_TYPE: {"schema": {"type": "array", "items": cloudevent}},
                "application/json": {
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                    "description": "binary mode: the properties, with the attributes in ce-* "
                    "headers",
                },
            },
        },
        "responses": responses(
            {
                "202": {
                    "description": "the bus confirmed every event (a batch: results in order)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    result,
                                    {
                                        "type": "object",
                                        "properties": {
                                            "results": {"type": "array", "items": result}
                                        },
                                        "required": ["results"],
                                    },
                                ]
                            }
                        }
                    },
                }
            }
        ),
    }
    return CLOUDEVENTS_PATH, operation
