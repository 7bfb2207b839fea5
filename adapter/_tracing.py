"""OpenTelemetry traces: the spans of a send and of what consumes it, and the trace context an
event carries between them (``Event.traceparent``).

Off by default. The package depends on ``opentelemetry-api`` only; ``configure`` installs the
SDK's ``TracerProvider`` when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``)
and the ``otel`` extra is installed. A library user who installs a provider of their own gets the
same spans. With no provider, nothing is recorded and a send costs one check more than without
this module (``bench/bench_traces.py``), but a trace context that came with the event, or that
the caller's current OpenTelemetry context holds, still travels with it unchanged (pass-through):
a receiver joins the sender's trace even when the bridge itself records nothing.

The spans follow the OpenTelemetry messaging semantic conventions: a PRODUCER span
``publish <exchange>`` per send (``messaging.system`` ``rabbitmq`` on RabbitMQ, the exchange as
``messaging.destination.name``, ``messaging.rabbitmq.destination.routing_key``,
``messaging.message.id``, ``messaging.operation.type`` ``send``), whose context is the one the
message carries; a CONSUMER span ``process <destination>`` for each event a wait answers, a
group delivers to ``listen`` or a webhook trigger delivers, child of the producer's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    NoOpTracerProvider,
    ProxyTracerProvider,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

from ._event import Event
from ._exceptions import ConfigurationError
from ._names import routing_key
from ._trace_context import TRACEPARENT, TRACESTATE, check_trace
from ._version import __version__

__all__ = [
    "INSTRUMENTATION",
    "configure",
    "consuming",
    "current_trace",
    "current_trace_id",
    "enabled",
    "event_context",
    "publishing",
    "remote_context",
    "requesting",
    "span_trace",
    "trace_headers",
    "with_current_trace",
]

log = logging.getLogger("adapter.tracing")

INSTRUMENTATION = "customevent-bridge"
_EXPORTERS = ("otlp", "console")
_PROTOCOL = "http/protobuf"


_UNKNOWN = object()
_NOT_RECORDING = (ProxyTracerProvider, NoOpTracerProvider)


def enabled() -> bool:
    """True when a recording ``TracerProvider`` is installed (by ``configure`` or by the
    library's user): a check of the global provider's type, all that tracing costs when off."""
    # trace.get_tracer_provider() looks up an environment variable on each call while no
    # provider is set: 0.7 us, 7% of an in-process send. The module's global says the same for
    # 0.05 us; should a release of the API not have it, the public call answers.
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is None:
        return False
    if provider is _UNKNOWN:
        provider = trace.get_tracer_provider()
    return not isinstance(provider, _NOT_RECORDING)


_tracers: dict[int, tuple[trace.TracerProvider, trace.Tracer]] = {}


def _tracer() -> trace.Tracer:
    # The provider's own tracer, kept: getting one costs a quarter of what a span does (the SDK
    # builds its scope each time). Keyed by the provider, which a test or a user may replace.
    provider = trace.get_tracer_provider()
    kept = _tracers.get(id(provider))
    if kept is None or kept[0] is not provider:
        _tracers.clear()
        kept = _tracers[id(provider)] = (
            provider,
            provider.get_tracer(INSTRUMENTATION, __version__),
        )
    return kept[1]


def _traceparent(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def span_trace(span: Span) -> tuple[str | None, str | None]:
    """The W3C trace context of a span (None, None for an invalid one)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    state = context.trace_state.to_header() if context.trace_state else ""
    return check_trace(_traceparent(context), state or None)


def current_trace_id() -> str | None:
    """The trace id of the current OpenTelemetry context (32 hex digits), if it holds one."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def current_trace() -> tuple[str | None, str | None]:
    """The trace context of the caller's current OpenTelemetry context, if it holds one."""
    return span_trace(trace.get_current_span())


def with_current_trace(event: Event) -> Event:
    """The event with the current OpenTelemetry context's trace when it carries none."""
    if event.traceparent is not None:
        return event
    traceparent, tracestate = current_trace()
    if traceparent is None:
        return event
    return dataclasses.replace(event, traceparent=traceparent, tracestate=tracestate)


def event_context(event: Event) -> Context | None:
    """An OpenTelemetry context whose (remote) parent is the event's trace; None without one."""
    if event.traceparent is None:
        return None
    return remote_context(event.traceparent, event.tracestate)


def remote_context(traceparent: str, tracestate: str | None) -> Context:
    """An OpenTelemetry context whose (remote) parent is this checked trace context."""
    state = TraceState.from_header([tracestate]) if tracestate else None
    parent = SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
        trace_state=state,
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


@contextlib.contextmanager
def publishing(event: Event, *, system: str, destination: str) -> Iterator[Event]:
    """The PRODUCER span of a send (child of the event's trace, else of the current context),
    yielding the event as it goes out: carrying the span's context."""
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": routing_key(event.kind, event.name),
        "messaging.message.id": event.event_id,
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
    }
    with _tracer().start_as_current_span(
        f"publish {destination}",
        context=event_context(event),
        kind=SpanKind.PRODUCER,
        attributes=attributes,
    ) as span:
        traceparent, tracestate = span_trace(span)
        if traceparent is not None:
            event = dataclasses.replace(event, traceparent=traceparent, tracestate=tracestate)
        yield event


@contextlib.contextmanager
def consuming(
    event: Event,
    *,
    system: str,
    destination: str,
    attributes: Mapping[str, str | int] | None = None,
) -> Iterator[Span]:
    """The CONSUMER span of processing an event (a wait's answer, a group's delivery), child of
    the trace the event carries, as the current span; ``attributes`` are added
    (``messaging.consumer.group.name``). With tracing off, the event's own trace is the current
    context while it is processed (its log lines name it) and the span yielded is that trace's:
    ``span_trace`` of it is the event's own trace context."""
    parent = event_context(event)
    if not enabled():
        if parent is None:
            yield trace.INVALID_SPAN
            return
        token = otel_context.attach(parent)
        try:
            yield trace.get_current_span(parent)
        finally:
            otel_context.detach(token)
        return
    base: dict[str, Any] = {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": routing_key(event.kind, event.name),
        "messaging.message.id": event.event_id,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
    }
    base.update(attributes or {})
    with _tracer().start_as_current_span(
        f"process {destination}", context=parent, kind=SpanKind.CONSUMER, attributes=base
    ) as span:
        yield span


@contextlib.contextmanager
def requesting(method: str, url: str) -> Iterator[Span]:
    """The CLIENT span of an HTTP request (a webhook delivery), child of the current span; the
    URL is named by its scheme, host and port only (its path or query may hold a secret)."""
    parts = urlsplit(url)
    attributes: dict[str, Any] = {"http.request.method": method, "url.scheme": parts.scheme}
    with contextlib.suppress(ValueError):
        if parts.hostname:
            attributes["server.address"] = parts.hostname
        if parts.port:
            attributes["server.port"] = parts.port
    with _tracer().start_as_current_span(
        method, kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield span


def trace_headers(traceparent: str | None, tracestate: str | None) -> dict[str, str]:
    """The W3C headers of a trace context (none without one)."""
    if traceparent is None:
        return {}
    if tracestate is None:
        return {TRACEPARENT: traceparent}
    return {TRACEPARENT: traceparent, TRACESTATE: tracestate}


def configure(environ: dict[str, str] | None = None) -> Any:
    """Install the SDK's ``TracerProvider`` as the standard ``OTEL_*`` variables ask, and return
    it (``shutdown()`` flushes it); None when they ask for no traces: ``OTEL_TRACES_EXPORTER``
    unset or ``none``, or ``OTEL_SDK_DISABLED=true``. ``ConfigurationError`` for an exporter or
    an OTLP protocol this package does not ship, or the SDK not installed."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_PYTHON_TRACER_PROVIDER"):
        trace.get_tracer_provider()  # the API loads the provider that names, once
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    for name in names:
        if name not in _EXPORTERS:
            raise ConfigurationError(
                f"OTEL_TRACES_EXPORTER {name!r}: the bridge exports traces with "
                f"{' or '.join(_EXPORTERS)} (or none)"
            )
    for variable in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(variable, "").strip()
        if "otlp" in names and protocol and protocol != _PROTOCOL:
            raise ConfigurationError(
                f"{variable} {protocol!r}: the bridge's OTLP exporter speaks {_PROTOCOL} only"
            )
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ConfigurationError(
            "OTEL_TRACES_EXPORTER asks for traces but the OpenTelemetry SDK is not installed: "
            "pip install 'customevent-bridge[otel]'"
        ) from None
    processors: list[SpanProcessor] = []
    for name in names:
        if name == "console":
            processors.append(BatchSpanProcessor(ConsoleSpanExporter()))
            continue
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigurationError(
                "OTEL_TRACES_EXPORTER=otlp but the OTLP exporter is not installed: "
                "pip install 'customevent-bridge[otel]'"
            ) from None
        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    defaults = {} if named else {SERVICE_NAME: INSTRUMENTATION}
    provider = TracerProvider(resource=Resource.create(defaults))
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    log.info("traces: exporting with %s", ", ".join(names))
    return provider
