"""Every queue the RabbitMQ bus declares: its name and its arguments. Imports no sibling.

Names. Everything durable is scoped by the events exchange (``amqp.exchange``), so that two
deployments on one virtual host with different exchanges never share a queue, and the parts of a
name are separated by ``/``, which neither an exchange name (AMQP 0-9-1: letters, digits, ``-``,
``_``, ``.``, ``:``; checked in ``AmqpSettings``), a group name nor a wait id may contain, so no
two names collide:

- ``customevent/<exchange>/group/<G>``: a group's queue (quorum); ``.../group/<G>/dead`` its dead
  letters; ``.../group/<G>/retry/<ms>`` its retries waiting ``ms`` milliseconds;
- ``customevent/<exchange>/groups``: the registry of groups (quorum), one small record per
  group binding and retry queue, so that the groups can be listed and deleted without RabbitMQ's
  management plugin (``_groups.py``);
- ``customevent/<exchange>/wait/<wait id>/<digest>``: a resumable wait (quorum), the digest naming
  what it waits on (its kind and pattern), so an id reused for another name never reads the first
  one's events;
- ``customevent.retained.<exchange>``: the stream of retained events;
- ``customevent.wait.<client>.<bucket end>.<n>``: a temporary wait queue of one client process
  (classic, non-durable, expiring; unique to the process, so not scoped).

Durable queues are quorum queues. What RabbitMQ 3.10 quorum queues take (each declared on
3.10.8), for whoever adds a queue here: ``x-expires``, ``x-max-length`` and ``x-max-length-bytes``
with ``x-overflow`` ``drop-head`` or ``reject-publish``, ``x-message-ttl``,
``x-dead-letter-exchange`` / ``-routing-key`` (with ``x-dead-letter-strategy: at-least-once`` when
dead letters must not be lost; it needs ``reject-publish``), ``x-delivery-limit`` (poison
messages), ``x-single-active-consumer``. Not: priorities, non-durable, exclusive or auto-delete
queues, a global QoS. A quorum queue is replicated over the nodes of a cluster and stays available
while a majority of its replicas run; on a single node it is a cluster of one.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = [
    "DURABLE_QUEUE_TYPE",
    "REGISTRY_MAX",
    "RETAINED_QUEUE_TYPE",
    "STREAM_MAX_BYTES",
    "dead_arguments",
    "dead_queue",
    "durable_queue_arguments",
    "group_arguments",
    "group_queue",
    "registry_arguments",
    "registry_queue",
    "resumable_arguments",
    "resumable_queue",
    "retained_arguments",
    "retained_stream",
    "retry_arguments",
    "retry_queue",
    "wait_queue",
    "wait_queue_arguments",
]

DURABLE_QUEUE_TYPE = "quorum"
#: The queue type of the retained events' store: the one RabbitMQ type that many consumers read
#: without taking messages from each other.
RETAINED_QUEUE_TYPE = "stream"
#: The most the stream holds, whatever the traffic (x-max-length-bytes), and its segment size:
#: RabbitMQ applies the age and size limits a whole segment at a time.
STREAM_MAX_BYTES = 256 * 1024 * 1024
_SEGMENT_BYTES = 8 * 1024 * 1024


def durable_queue_arguments(arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``arguments`` of a queue declaration that make it a durable queue of this project
    (declare it with ``durable=True``), with the queue's own ``arguments`` added."""
    return {**(arguments or {}), "x-queue-type": DURABLE_QUEUE_TYPE}


# -- groups --------------------------------------------------------------------------------------


def group_queue(exchange: str, group: str) -> str:
    return f"customevent/{exchange}/group/{group}"


def dead_queue(exchange: str, group: str) -> str:
    return f"{group_queue(exchange, group)}/dead"


def retry_queue(exchange: str, group: str, delay_ms: int) -> str:
    return f"{group_queue(exchange, group)}/retry/{delay_ms}"


def group_arguments(
    exchange: str, group: str, *, single_active: bool, max_length: int, max_attempts: int
) -> dict[str, Any]:
    return durable_queue_arguments(
        {
            "x-single-active-consumer": single_active,
            "x-max-length": max_length,
            "x-overflow": "reject-publish",
            # Consumers that keep dying on one message: RabbitMQ dead-letters it.
            "x-delivery-limit": max_attempts,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_queue(exchange, group),
            "x-dead-letter-strategy": "at-least-once",
        }
    )


#: The most records the registry of groups holds; past it a new group works but is not listed.
REGISTRY_MAX = 10_000


def registry_queue(exchange: str) -> str:
    return f"customevent/{exchange}/groups"


def registry_arguments() -> dict[str, Any]:
    return durable_queue_arguments({"x-max-length": REGISTRY_MAX, "x-overflow": "reject-publish"})


def dead_arguments() -> dict[str, Any]:
    return durable_queue_arguments()


def retry_arguments(exchange: str, group: str, delay_ms: int) -> dict[str, Any]:
    return durable_queue_arguments(
        {
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": group_queue(exchange, group),
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    )


# -- waits ---------------------------------------------------------------------------------------


def resumable_queue(exchange: str, wait_id: str, binding_key: str) -> str:
    digest = hashlib.sha256(binding_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"customevent/{exchange}/wait/{wait_id}/{digest}"


def resumable_arguments(expires_ms: int, max_events: int) -> dict[str, Any]:
    return durable_queue_arguments(
        {
            "x-expires": expires_ms,
            # The newest events are kept: a waiter that never comes back cannot make the broker
            # hold more than this, and no publisher is ever refused for it.
            "x-max-length": max_events,
            "x-overflow": "drop-head",
        }
    )


def wait_queue(client_id: str, bucket: int, generation: int) -> str:
    return f"customevent.wait.{client_id}.{bucket}.{generation}"


def wait_queue_arguments(expires_ms: int) -> dict[str, Any]:
    return {"x-expires": expires_ms}


# -- retained events -----------------------------------------------------------------------------


def retained_stream(exchange: str) -> str:
    return f"customevent.retained.{exchange}"


def retained_arguments(max_retain: float) -> dict[str, Any]:
    return {
        "x-queue-type": RETAINED_QUEUE_TYPE,
        "x-max-age": f"{max(1, round(max_retain))}s",
        "x-max-length-bytes": STREAM_MAX_BYTES,
        "x-stream-max-segment-size-bytes": _SEGMENT_BYTES,
    }
