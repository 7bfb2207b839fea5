"""The public names: what ``import adapter`` and ``adapter.testing`` offer is pinned here, so a
change to it is a decision, not an accident."""

from __future__ import annotations

import adapter
import adapter.testing

PUBLIC = [
    "NotFound",
    "GroupInfo",
    "GroupNotFound",
    "GroupInUse",
    "DeadLetterNotFound",
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
    "Delivery",
    "Event",
    "Expectation",
    "GroupSubscription",
    "InvalidDeadline",
    "InvalidEventName",
    "InvalidInput",
    "InvalidKind",
    "InvalidProperties",
    "Kind",
    "LimitExceeded",
    "MemoryBus",
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

TESTING = ["BridgeDaemon", "PrivateMosquitto", "free_port", "memory_client"]


def test_adapter_all_is_pinned() -> None:
    assert sorted(adapter.__all__) == sorted(PUBLIC)
    assert len(set(adapter.__all__)) == len(adapter.__all__)
    for name in adapter.__all__:
        assert hasattr(adapter, name), name


def test_adapter_testing_all_is_pinned() -> None:
    assert sorted(adapter.testing.__all__) == TESTING
    for name in adapter.testing.__all__:
        assert hasattr(adapter.testing, name), name
