"""The RabbitMQ bus, one job per module (see ``_bus.py`` for the parts and docs/architecture.md
for the picture)."""

from ._bus import AmqpBus

__all__ = ["AmqpBus"]
