"""The bus interface and its two implementations: RabbitMQ (``AmqpBus``) and in-process
(``MemoryBus``). One behaviour test suite runs against both."""

from ._base import Bus, Subscription, check_wait_id, seconds_until
from ._memory import MemoryBus

__all__ = ["Bus", "MemoryBus", "Subscription", "check_wait_id", "seconds_until"]
