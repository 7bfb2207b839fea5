"""Every Prometheus metric of the bridge, on a registry its owner gives.

The daemon makes its own ``Metrics`` (``Metrics.own()``) and serves ``/metrics`` from it, so two
daemons in one process (tests build many) count apart and a test reads its daemon's figures, not
deltas of a process-wide registry. A ``Client`` without a daemon counts on ``default_metrics()``,
one per process on prometheus_client's default registry (a second registration of a name there
is refused), where an application's own exporter finds them.
"""

from __future__ import annotations

import functools

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

__all__ = ["Metrics", "default_metrics"]


class Metrics:
    """The bridge's metrics (names, labels and help as ``GET /metrics`` shows them) on
    ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, *, mqtt: bool = True, triggers: bool = True
    ) -> None:
        self.registry = registry
        r = registry
        # The MQTT edge's and the triggers' metrics are made always (their code may count on
        # them) but shown only by an owner that runs them: a daemon without MQTT must export
        # no customevent_mqtt_connected for an alert to read as a link down.
        m = registry if mqtt else None
        t = registry if triggers else None
        # -- the HTTP edge
        self.sends = Counter(
            "customevent_sends",
            "Sends received, by ingress (rest, soap, json) and outcome.",
            ["ingress", "outcome"],
            registry=r,
        )
        self.http_waits = Counter(
            "customevent_http_waits",
            "HTTP waits ended, by outcome (event, deadline, interrupted, error).",
            ["outcome"],
            registry=r,
        )
        self.wait_unmatched = Counter(
            "customevent_wait_unmatched",
            "Events that reached an HTTP wait with match= on its name but did not match it "
            "(counted when the wait ends).",
            registry=r,
        )
        self.http_waits_active = Gauge(
            "customevent_http_waits_active", "HTTP waits bound right now.", registry=r
        )
        self.publish_seconds = Histogram(
            "customevent_publish_seconds",
            "Time from handing an event to the bus to its confirmation.",
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                10.0,
            ),
            registry=r,
        )
        # -- the bus
        self.bus_reconnects = Counter(
            "customevent_bus_reconnects", "Times the bus reconnected to the broker.", registry=r
        )
        self.bus_connected = Gauge(
            "customevent_bus_connected",
            "1 while the daemon's bus is connected (as /readyz says), else 0; read at each scrape.",
            registry=r,
        )
        self.bus_refused = Counter(
            "customevent_bus_refused",
            "Messages read from RabbitMQ that are not events the bridge may believe (dropped by "
            "waits, dead-lettered by groups), by consumer (wait, resumable, group, retained).",
            ["consumer"],
            registry=r,
        )
        self.filtered = Counter(
            "customevent_filtered",
            "Events a group's consumer acknowledged without handling: its filters left them out.",
            ["group"],
            registry=r,
        )
        # -- the MQTT edge (docs/devices.md)
        self.mqtt_received = Counter(
            "customevent_mqtt_received", "MQTT messages received by the bridge", registry=m
        )
        self.mqtt_redelivered = Counter(
            "customevent_mqtt_redelivered",
            "MQTT messages received with the DUP flag (sent before; possibly published twice)",
            registry=m,
        )
        self.mqtt_published = Counter(
            "customevent_mqtt_published", "MQTT messages published as events and acked", registry=m
        )
        self.mqtt_poison = Counter(
            "customevent_mqtt_poison",
            "MQTT messages refused (acknowledged, logged and dead-lettered), by reason",
            ["reason"],
            registry=m,
        )
        self.mqtt_retries = Counter(
            "customevent_mqtt_publish_retries",
            "publishes to the bus retried (bus down or refusing)",
            registry=m,
        )
        self.mqtt_qos0_dropped = Counter(
            "customevent_mqtt_qos0_dropped",
            "QoS 0 messages dropped because mqtt.max_inflight_qos0 were already held unconfirmed",
            registry=m,
        )
        self.mqtt_connected = Gauge(
            "customevent_mqtt_connected",
            "1 while the bridge is connected to the MQTT broker with its subscription in place, "
            "else 0",
            registry=m,
        )
        self.mqtt_in_flight = Gauge(
            "customevent_mqtt_in_flight",
            "MQTT messages received and not yet acknowledged",
            registry=m,
        )
        self.mqtt_overruns = Counter(
            "customevent_mqtt_window_overruns",
            "QoS 1 messages received beyond mqtt.max_inflight: sent by a broker past MQTT v5's "
            "Receive Maximum, or read while paused so that the connection stays alive",
            registry=m,
        )
        self.mqtt_egress_sent = Counter(
            "customevent_mqtt_egress", "events published to MQTT devices", registry=m
        )
        self.mqtt_egress_dropped = Counter(
            "customevent_mqtt_egress_dropped",
            "events not published to MQTT, by reason: queue (the client's queue full), topic or "
            "property (a name or user property MQTT cannot carry), oversize (over the broker's "
            "packet size)",
            ["reason"],
            registry=m,
        )
        self.mqtt_egress_restarts = Counter(
            "customevent_mqtt_egress_restarts",
            "egress tasks that failed with an unexpected error and were restarted, by pattern",
            ["pattern"],
            registry=m,
        )
        self.mqtt_egress_running = Gauge(
            "customevent_mqtt_egress_running",
            "1 while the egress of a pattern is bound to the bus, 0 while it waits or restarts",
            ["pattern"],
            registry=m,
        )
        # -- webhook triggers
        self.trigger_deliveries = Counter(
            "customevent_trigger_deliveries",
            "Webhook deliveries by trigger and outcome (ok, retry, dead_letter).",
            ["trigger", "outcome"],
            registry=t,
        )
        self.trigger_seconds = Histogram(
            "customevent_trigger_seconds",
            "Time from a webhook POST to its answer, by trigger.",
            ["trigger"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=t,
        )
        self.trigger_in_flight = Gauge(
            "customevent_trigger_in_flight",
            "Webhook deliveries under way, by trigger.",
            ["trigger"],
            registry=t,
        )
        self.trigger_running = Gauge(
            "customevent_trigger_running",
            "1 while the trigger has joined its group and delivers, else 0.",
            ["trigger"],
            registry=t,
        )
        self.group_depth = Gauge(
            "customevent_group_depth",
            "Events waiting in a group (not those out with a consumer or waiting for a retry), "
            "for the groups of the daemon's triggers.",
            ["group"],
            registry=t,
        )
        self.group_dead_letters = Gauge(
            "customevent_group_dead_letters",
            "Dead letters kept for a group, for the groups of the daemon's triggers.",
            ["group"],
            registry=t,
        )

    @classmethod
    def own(cls, *, mqtt: bool = True, triggers: bool = True) -> Metrics:
        """Metrics on a registry of their own, with the process's (``process_*``,
        ``python_*``) beside them as the default registry has them; the MQTT edge's and the
        triggers' only where ``mqtt`` and ``triggers`` say the owner runs them."""
        registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        return cls(registry, mqtt=mqtt, triggers=triggers)


@functools.cache
def default_metrics() -> Metrics:
    """The process's metrics on prometheus_client's default registry, made at first use."""
    return Metrics(REGISTRY)
