"""The request that starts a vRO workflow for an event (triggers of target ``vro``).

vRO's REST API starts a workflow with ``POST /vco/api/workflows/{id}/executions`` and an
execution context: the input parameters, each with its name, its vRO type and its value wrapped
in an object named after the type::

    {"parameters": [{"name": "vm", "type": "string", "scope": "local",
                     "value": {"string": {"value": "web-01"}}}]}

Every property of an event is a string, so every parameter is one. vRO answers ``202 Accepted``
with the new execution in ``Location``. This module only builds the request; the trigger runner
sends it with the same timeout, reply bound, retries and dead letters as a webhook's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC
from typing import Any
from urllib.parse import quote

from ._event import Event
from ._exceptions import InvalidInput

__all__ = ["MEDIA_TYPE", "event_attribute", "execution_body", "execution_url"]

MEDIA_TYPE = "application/json"


def execution_url(base: str, workflow_id: str) -> str:
    """Where an execution of the workflow is started, below the Orchestrator's address."""
    return f"{base.rstrip('/')}/vco/api/workflows/{quote(workflow_id, safe='')}/executions"


def event_attribute(event: Event, attribute: str) -> str | None:
    """The event's ``id``, ``name``, ``kind``, ``source``, ``principal`` (None when unknown) or
    ``time`` (RFC 3339, UTC) as the text of a parameter."""
    match attribute:
        case "id":
            return event.event_id
        case "name":
            return event.name
        case "kind":
            return event.kind
        case "source":
            return event.source
        case "principal":
            return event.principal
        case "time":
            return event.sent_at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    raise ValueError(f"no event attribute {attribute!r}")


def _string(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "type": "string", "scope": "local", "value": {"string": {"value": value}}}


def execution_body(event: Event, event_parameters: Mapping[str, str]) -> bytes:
    """The execution context of the event: the parameters ``event_parameters`` names (event
    attribute -> parameter name; an unknown principal is left out), then every property, each a
    string parameter. ``InvalidInput`` when a property has the name of one of those parameters:
    a sender must not be able to pass its own value as, say, the event's principal."""
    parameters = []
    taken = {}
    for attribute, name in event_parameters.items():
        taken[name] = attribute
        value = event_attribute(event, attribute)
        if value is not None:
            parameters.append(_string(name, value))
    for name, value in event.properties.items():
        if name in taken:
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise InvalidInput(
                f"property {shown!r} has the name of the parameter that carries the event's "
                f"{taken[name]} (event_parameters)"
            )
        parameters.append(_string(name, value))
    return json.dumps({"parameters": parameters}, ensure_ascii=False).encode("utf-8")
