"""A stand-in for vRO's REST API as vRO 7 and 8 document it, for the tests of ``vro`` triggers:
``POST /vco/api/workflows/{id}/executions`` with HTTP Basic or a bearer token, a JSON execution
context of string parameters, ``202 Accepted`` with the execution in ``Location``. It checks
every request against that format, and records what would have started a workflow.

It is not vRO: nothing here has been compared with a live Orchestrator."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from adapter.testing import free_port

USERNAME = "bridge@vsphere.local"
PASSWORD = "pa:ss wörd"  # a ':' and a non-ASCII letter: both allowed in a Basic password
TOKEN = "vro-bearer-token-0123456789abcdef0123456789"
WORKFLOW_ID = "c0278910-9ae2-46c5-bb45-2292fe88e3ab"

#: What an answer may be: a status, headers and a body (bytes, or chunks sent as they come).
Answer = tuple[int, dict[str, str], bytes | AsyncIterator[bytes]]


def basic(username: str = USERNAME, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def vro_trigger(name: str, pattern: str, url: str, **extra: Any) -> dict[str, Any]:
    """A vro trigger's settings: the workflow ``WORKFLOW_ID``, Basic credentials, a 2 s timeout
    unless ``extra`` says otherwise."""
    settings = {
        "name": name,
        "pattern": pattern,
        "target": "vro",
        "url": url,
        "workflow_id": WORKFLOW_ID,
        "username": USERNAME,
        "password": PASSWORD,
        "timeout": 2,
    }
    return {**settings, **extra}


@dataclass
class Execution:
    """A request the stand-in accepted as a workflow execution."""

    at: float
    workflow_id: str
    parameters: dict[str, str]
    headers: dict[str, str]


@dataclass
class VroStandIn:
    """Answers 401 to other credentials than ``authorization``, 400 (with the reason, as vRO
    answers a validation error) to a body of another format, and otherwise what ``answer``
    says for the n-th request (default: 202 with a ``Location``)."""

    authorization: str = field(default_factory=basic)
    answer: Callable[[int], Answer | None] = lambda n: None
    requests: list[float] = field(default_factory=list)
    executions: list[Execution] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    url: str = ""

    def _check(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Any:
        """The problem with the request, or (workflow id, parameters)."""
        parts = path.split("/")
        if method != "POST":
            return f"method {method}, not POST"
        if len(parts) != 6 or parts[:4] != ["", "vco", "api", "workflows"]:
            return f"path {path!r} is not /vco/api/workflows/{{id}}/executions"
        if not parts[4] or parts[5] != "executions":
            return f"path {path!r} is not /vco/api/workflows/{{id}}/executions"
        if headers.get("content-type") != "application/json":
            return f"Content-Type {headers.get('content-type')!r}, not application/json"
        if headers.get("accept") != "application/json":
            return f"Accept {headers.get('accept')!r}, not application/json"
        try:
            context = json.loads(body)
        except ValueError:
            return "the body is not JSON"
        if not isinstance(context, dict) or set(context) != {"parameters"}:
            return "the body is not an execution context {'parameters': [...]}"
        parameters: dict[str, str] = {}
        for item in context["parameters"]:
            if not isinstance(item, dict) or set(item) != {"name", "type", "scope", "value"}:
                return f"parameter {item!r} has other keys than name, type, scope and value"
            name, value = item["name"], item["value"]
            if not isinstance(name, str) or item["type"] != "string" or item["scope"] != "local":
                return f"parameter {item!r} is not a local string parameter"
            if (
                not isinstance(value, dict)
                or set(value) != {"string"}
                or not isinstance(value["string"], dict)
                or set(value["string"]) != {"value"}
                or not isinstance(value["string"]["value"], str)
            ):
                return f"parameter {name!r}: value {value!r} is not {{'string': {{'value': ...}}}}"
            if name in parameters:
                return f"parameter {name!r} is given twice"
            parameters[name] = value["string"]["value"]
        return parts[4], parameters

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(time.monotonic())
        answer: Answer | None
        if headers.get("authorization") != self.authorization:
            answer = (401, {}, b"")
        else:
            checked = self._check(scope["method"], scope["path"], headers, body)
            if isinstance(checked, str):
                self.problems.append(checked)
                answer = (400, {"Content-Type": "application/json"}, json.dumps(checked).encode())
            else:
                workflow_id, parameters = checked
                self.executions.append(
                    Execution(time.monotonic(), workflow_id, parameters, headers)
                )
                answer = self.answer(len(self.requests))
                if answer is None:
                    location = f"{self.url}/vco/api/workflows/{workflow_id}/executions/"
                    answer = (202, {"Location": location + uuid.uuid4().hex + "/"}, b"")
        status, extra, content = answer
        raw = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        if isinstance(content, bytes):
            await send({"type": "http.response.body", "body": content})
            return
        async for chunk in content:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serving(stand_in: VroStandIn) -> AsyncIterator[VroStandIn]:
    """The stand-in on a free port of 127.0.0.1 (its address in ``url``)."""
    port = free_port()
    config = uvicorn.Config(
        stand_in.app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="off",
        interface="asgi3",
        timeout_graceful_shutdown=2,  # a reply still dripping when the test ends is cut
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    stand_in.url = f"http://127.0.0.1:{port}"
    try:
        yield stand_in
    finally:
        server.should_exit = True
        await task
