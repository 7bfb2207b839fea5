"""The MQTT edge's Prometheus metrics: ``GET /metrics`` on the daemon (docs/devices.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "CONNECTED",
    "EGRESS_DROPPED",
    "EGRESS_RESTARTS",
    "EGRESS_RUNNING",
    "EGRESS_SENT",
    "IN_FLIGHT",
    "OVERRUNS",
    "POISON",
    "PUBLISHED",
    "QOS0_DROPPED",
    "RECEIVED",
    "REDELIVERED",
    "RETRIES",
]

RECEIVED = Counter("customevent_mqtt_received", "MQTT messages received by the bridge")
REDELIVERED = Counter(
    "customevent_mqtt_redelivered",
    "MQTT messages received with the DUP flag (sent before; possibly published twice)",
)
PUBLISHED = Counter("customevent_mqtt_published", "MQTT messages published as events and acked")
POISON = Counter(
    "customevent_mqtt_poison",
    "MQTT messages refused (acknowledged, logged and dead-lettered), by reason",
    ["reason"],
)
RETRIES = Counter(
    "customevent_mqtt_publish_retries", "publishes to the bus retried (bus down or refusing)"
)
QOS0_DROPPED = Counter(
    "customevent_mqtt_qos0_dropped",
    "QoS 0 messages dropped because mqtt.max_inflight_qos0 were already held unconfirmed",
)
CONNECTED = Gauge(
    "customevent_mqtt_connected",
    "1 while the bridge is connected to the MQTT broker with its subscription in place, else 0",
)
IN_FLIGHT = Gauge("customevent_mqtt_in_flight", "MQTT messages received and not yet acknowledged")
OVERRUNS = Counter(
    "customevent_mqtt_window_overruns",
    "QoS 1 messages received beyond mqtt.max_inflight: sent by a broker past MQTT v5's Receive "
    "Maximum, or read while paused so that the connection stays alive",
)
EGRESS_SENT = Counter("customevent_mqtt_egress", "events published to MQTT devices")
EGRESS_DROPPED = Counter(
    "customevent_mqtt_egress_dropped",
    "events not published to MQTT, by reason: queue (the client's queue full), topic or property "
    "(a name or user property MQTT cannot carry), oversize (over the broker's packet size)",
    ["reason"],
)
EGRESS_RESTARTS = Counter(
    "customevent_mqtt_egress_restarts",
    "egress tasks that failed with an unexpected error and were restarted, by pattern",
    ["pattern"],
)
EGRESS_RUNNING = Gauge(
    "customevent_mqtt_egress_running",
    "1 while the egress of a pattern is bound to the bus, 0 while it waits or restarts",
    ["pattern"],
)
