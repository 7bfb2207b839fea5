"""ASGI middleware: a request's W3C trace context (``traceparent``, ``tracestate`` headers)
becomes the current OpenTelemetry context while the request is handled, so that whatever the
request sends continues that trace, on every HTTP edge (vRO REST, SOAP, JSON, CloudEvents). A
trace context that breaks the W3C rules (``adapter/_trace_context.py``) is ignored."""

from __future__ import annotations

from opentelemetry import context
from starlette.types import ASGIApp, Receive, Scope, Send

from .._trace_context import trace_from_pairs
from .._tracing import remote_context

__all__ = ["TraceContext"]

_NAMES = (b"traceparent", b"tracestate")


class TraceContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name in _NAMES
        ]
        traceparent, tracestate = trace_from_pairs(pairs) if pairs else (None, None)
        if traceparent is None:
            await self.app(scope, receive, send)
            return
        token = context.attach(remote_context(traceparent, tracestate))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
