"""Logging of the daemon: one JSON object per line, each carrying the id of the request it
belongs to and the trace id of its current trace (a request's ``traceparent``, an event being
processed), and one access line per request (path without its query, never a header)."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._settings import LogSettings
from .._tracing import current_trace_id

# The key a streamed wait (_wait.py) leaves its outcome's status under, in the request's state.
OUTCOME_STATUS = "outcome_status"

__all__ = ["JsonFormatter", "RequestContext", "configure_logging", "request_id"]

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("adapter.http.access")

_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; fields given with ``extra=`` are kept."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["request_id"] = rid
        trace_id = current_trace_id()  # the request's, or the event's being processed
        if trace_id is not None:
            entry["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key != "color_message":
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(settings: LogSettings) -> None:
    """Send every log record (ours, uvicorn's, aio-pika's) to stderr in the configured format."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


class RequestContext:
    """ASGI middleware: give each request an id (``X-Request-ID`` when the caller sent a sane
    one), echo it in the response, and log one access line when the response is done."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                text = value.decode("latin-1")
                rid = text if _INCOMING_ID.fullmatch(text) else None
                break
        rid = rid or uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0
        header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500  # uvicorn answers 500 for what escaped the app
            raise
        finally:
            if access_log.isEnabledFor(logging.INFO):
                state = scope.get("state") or {}
                fields = {
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "principal": state.get("principal"),
                }
                line = "%s %s %d"
                # A streamed wait: its status line (200) went out when it was bound, and what
                # it answered is the status of the outcome at the end of its body.
                outcome = state.get(OUTCOME_STATUS)
                if isinstance(outcome, int) and outcome != status:
                    fields.update(status=outcome, status_line=status, streamed=True)
                    line = "%s %s %d (streamed; status line %d)"
                access_log.info(
                    line,
                    scope["method"],
                    scope["path"],
                    *((outcome, status) if "status_line" in fields else (status,)),
                    extra=fields,
                )
            request_id.reset(token)
