"""customevent-bridge: vRO-style custom events (sendCustomEvent / waitCustomEventUntil) on
RabbitMQ, MQTT and an in-process bus."""

from ._bus import Bus, MemoryBus, Subscription
from ._client import Client, Expectation
from ._event import Event, SendResult
from ._exceptions import (
    AdapterError,
    BrokerAuthenticationError,
    BusError,
    BusUnavailable,
    ClientStateError,
    ConfigurationError,
    DeadLetterNotFound,
    GroupInUse,
    GroupNotFound,
    InvalidDeadline,
    InvalidEventName,
    InvalidInput,
    InvalidKind,
    InvalidProperties,
    LimitExceeded,
    NotFound,
    PropertiesTooLarge,
    PublishRejected,
    WaitConflict,
)
from ._groups import DeadLetter, Delivery, GroupInfo, GroupSubscription
from ._names import (
    KINDS,
    Kind,
    name_from_topic,
    pattern_matches,
    routing_key,
    topic_for,
    validate_name,
    validate_pattern,
)
from ._properties import parse_properties, serialize_properties
from ._settings import Settings, load_settings
from ._sync import SyncClient
from ._version import __version__

__all__ = [
    "KINDS",
    "AdapterError",
    "BrokerAuthenticationError",
    "Bus",
    "BusError",
    "BusUnavailable",
    "Client",
    "ClientStateError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterNotFound",
    "Delivery",
    "Event",
    "Expectation",
    "GroupInUse",
    "GroupInfo",
    "GroupNotFound",
    "GroupSubscription",
    "InvalidDeadline",
    "InvalidEventName",
    "InvalidInput",
    "InvalidKind",
    "InvalidProperties",
    "Kind",
    "LimitExceeded",
    "MemoryBus",
    "NotFound",
    "PropertiesTooLarge",
    "PublishRejected",
    "SendResult",
    "Settings",
    "Subscription",
    "SyncClient",
    "WaitConflict",
    "__version__",
    "load_settings",
    "name_from_topic",
    "parse_properties",
    "pattern_matches",
    "routing_key",
    "serialize_properties",
    "topic_for",
    "validate_name",
    "validate_pattern",
]
