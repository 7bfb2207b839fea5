"""Prometheus metrics of the daemon.

Defined once at import: every app in a process (tests build many) shares them, and the default
registry refuses a second registration of the same name.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ACTIVE_WAITS",
    "BUS_CONNECTED",
    "PUBLISH_SECONDS",
    "RECONNECTS",
    "SENDS",
    "UNMATCHED",
    "WAITS",
]

SENDS = Counter(
    "customevent_sends",
    "Sends received, by ingress (rest, soap, json) and outcome.",
    ["ingress", "outcome"],
)
WAITS = Counter(
    "customevent_http_waits",
    "HTTP waits ended, by outcome (event, deadline, interrupted, error).",
    ["outcome"],
)
UNMATCHED = Counter(
    "customevent_wait_unmatched",
    "Events that reached an HTTP wait with match= on its name but did not match it (counted "
    "when the wait ends).",
)
ACTIVE_WAITS = Gauge("customevent_http_waits_active", "HTTP waits bound right now.")
PUBLISH_SECONDS = Histogram(
    "customevent_publish_seconds",
    "Time from handing an event to the bus to its confirmation.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
RECONNECTS = Counter("customevent_bus_reconnects", "Times the bus reconnected to the broker.")
BUS_CONNECTED = Gauge(
    "customevent_bus_connected",
    "1 while the daemon's bus is connected (as /readyz says), else 0; read at each scrape.",
)
