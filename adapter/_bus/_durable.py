"""What a durable queue of the RabbitMQ bus is: a quorum queue.

Everything that must outlive a process, a broker restart or the loss of a node (resumable waits;
groups and their dead letters) is declared with ``durable_queue_arguments``. A quorum queue is
replicated over the nodes of a cluster (by default all of them, up to RabbitMQ's initial group
size) and stays available while a majority of its replicas run; on a single node it is a cluster
of one and behaves the same, so there is no classic fallback to configure.

What RabbitMQ 3.10 quorum queues take (each declared on 3.10.8), for whoever adds a queue here:
``x-expires``, ``x-max-length`` and ``x-max-length-bytes`` with ``x-overflow`` ``drop-head`` or
``reject-publish``, ``x-message-ttl``, ``x-dead-letter-exchange`` / ``-routing-key`` (with
``x-dead-letter-strategy: at-least-once`` when dead letters must not be lost; it needs
``reject-publish``), ``x-delivery-limit`` (poison messages), ``x-single-active-consumer``. Not:
priorities (``x-max-priority`` is refused), non-durable, exclusive or auto-delete queues, a global
QoS; RabbitMQ documents ``reject-publish-dlx`` as unsupported (3.10 accepts the argument).
Temporary wait queues stay non-durable classic queues, declared elsewhere.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DURABLE_QUEUE_TYPE", "durable_queue_arguments"]

DURABLE_QUEUE_TYPE = "quorum"


def durable_queue_arguments(arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``arguments`` of a queue declaration that make it a durable queue of this project
    (declare it with ``durable=True``), with the queue's own ``arguments`` added."""
    return {**(arguments or {}), "x-queue-type": DURABLE_QUEUE_TYPE}
