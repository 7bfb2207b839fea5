"""The exception tree of customevent-bridge.

Every error the library raises on purpose derives from ``AdapterError``::

    AdapterError
    ├── InvalidInput                 bad data from a caller; at the edge 400 or a SOAP Client fault
    │   ├── InvalidEventName         .name, .rule
    │   ├── InvalidKind              .kind
    │   ├── InvalidProperties        .line (1-based, or None), .rule
    │   │   └── PropertiesTooLarge   .limit, .size
    │   └── InvalidDeadline          .reason
    ├── ConfigurationError           settings that cannot work (bad URL, unreadable file)
    ├── LimitExceeded                a bound on what one caller may hold was reached (HTTP 429)
    │                                .limit, .setting, .retry_after
    ├── WaitConflict                 a resumable wait id already waits on another name or kind
    │                                (HTTP 409) .wait_id, .held, .asked
    ├── NotFound                     what was named does not exist (HTTP 404)
    │   ├── GroupNotFound            no such group .group
    │   └── DeadLetterNotFound       no dead letter of that event in the group .group, .event_id
    ├── GroupInUse                   consumers are attached to the group (HTTP 409) .group,
    │                                .consumers
    ├── BusError                     the message bus failed us
    │   ├── BusUnavailable           not connected, or a confirm was lost; retry later (HTTP 503)
    │   ├── BrokerAuthenticationError the broker refused the credentials; retrying will not help
    │   └── PublishRejected          the broker nacked the message
    └── ClientStateError             a Client used before it was opened or after it was closed

``EDGES`` gives each of them, once, what every edge answers: the HTTP status, the SOAP fault code
and the CLI's exit status (``edge_of`` finds the entry of the nearest class).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EDGES",
    "AdapterError",
    "BrokerAuthenticationError",
    "BusError",
    "BusUnavailable",
    "ClientStateError",
    "ConfigurationError",
    "DeadLetterNotFound",
    "Edge",
    "GroupInUse",
    "GroupNotFound",
    "InvalidDeadline",
    "InvalidEventName",
    "InvalidInput",
    "InvalidKind",
    "InvalidProperties",
    "LimitExceeded",
    "NotFound",
    "PropertiesTooLarge",
    "PublishRejected",
    "WaitConflict",
    "edge_of",
]


class AdapterError(Exception):
    """Root of every error raised by customevent-bridge."""


class InvalidInput(AdapterError):
    """The caller's data breaks a rule; nothing was sent."""


class InvalidEventName(InvalidInput):
    def __init__(self, name: str, rule: str) -> None:
        self.name = name
        self.rule = rule
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(f"invalid event name {shown!r}: {rule}")


class InvalidKind(InvalidInput):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(f"invalid event kind {kind!r}: must be 'external' or 'internal'")


class InvalidProperties(InvalidInput):
    def __init__(self, rule: str, *, line: int | None = None) -> None:
        self.line = line
        self.rule = rule
        # A line number means serializedProperties text; otherwise a mapping or a JSON object.
        where = f"serializedProperties: line {line}" if line is not None else "properties"
        super().__init__(f"invalid {where}: {rule}")


class PropertiesTooLarge(InvalidProperties):
    def __init__(self, rule: str, *, limit: int, size: int) -> None:
        self.limit = limit
        self.size = size
        super().__init__(rule)


class InvalidDeadline(InvalidInput):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"invalid deadline: {reason}")


class ConfigurationError(AdapterError):
    """The settings cannot work as given."""


class LimitExceeded(AdapterError):
    """A bound on the resources one caller or process may hold was reached (open waits,
    resumable waits, connections); nothing was done. Retry after ``retry_after`` seconds."""

    def __init__(self, what: str, *, limit: int, setting: str, retry_after: int = 1) -> None:
        self.limit = limit
        self.setting = setting
        self.retry_after = retry_after
        super().__init__(f"{what}: the limit is {limit} ({setting}); retry later")


class WaitConflict(AdapterError):
    """A resumable wait id is in use for another kind or name: an id belongs to what it first
    waited on until that wait's queue is gone, so a reuse never hands over another's events."""

    def __init__(self, wait_id: str, *, held: str, asked: str) -> None:
        self.wait_id = wait_id
        self.held = held
        self.asked = asked
        super().__init__(
            f"wait_id {wait_id!r} already waits on {held!r}, not {asked!r}: a resumable wait id "
            "belongs to one kind and name; choose another id"
        )


class NotFound(AdapterError):
    """What the caller named does not exist; nothing was done."""


class GroupNotFound(NotFound):
    def __init__(self, group: str) -> None:
        self.group = group
        super().__init__(
            f"no group {group!r}: none of its consumers ever joined it on this bus "
            "(customevent group list shows the groups there are)"
        )


class DeadLetterNotFound(NotFound):
    def __init__(self, group: str, event_id: str) -> None:
        self.group = group
        self.event_id = event_id
        super().__init__(
            f"the group {group!r} has no dead letter of the event {event_id!r} "
            "(customevent dead list shows its dead letters)"
        )


class GroupInUse(AdapterError):
    """A group was not deleted: consumers are attached to it (stop them, or force it)."""

    def __init__(self, group: str, consumers: int) -> None:
        self.group = group
        self.consumers = consumers
        super().__init__(
            f"the group {group!r} has {consumers} consumer(s) attached; stop them first, or "
            "delete it anyway with --force (force=True), which cuts them off"
        )


class BusError(AdapterError):
    """The message bus could not do what was asked."""


class BusUnavailable(BusError):
    """The bus is not connected or lost a confirmation; the send may be retried."""


class BrokerAuthenticationError(BusError):
    """The broker refused the credentials; retrying with the same ones will not help."""


class PublishRejected(BusError):
    """The broker answered the publish with a negative acknowledgement."""


class ClientStateError(AdapterError):
    """A client was used outside its ``async with`` block, or reopened."""


@dataclass(frozen=True, slots=True)
class Edge:
    """What an edge answers for an error: HTTP status, SOAP fault code, CLI exit status."""

    http: int
    soap: str
    exit: int


#: The one table from errors to edges. A 5xx or a ``Server`` fault means "ours, retry later"; the
#: exit codes are sysexits.h's (64 usage, 66 no such input, 69 unavailable, 75 try again later,
#: 77 no permission, 78 configuration).
EDGES: dict[type[AdapterError], Edge] = {
    AdapterError: Edge(500, "Server", 1),
    InvalidInput: Edge(400, "Client", 64),
    PropertiesTooLarge: Edge(413, "Client", 64),
    ConfigurationError: Edge(500, "Server", 78),
    LimitExceeded: Edge(429, "Client", 69),
    WaitConflict: Edge(409, "Client", 64),
    NotFound: Edge(404, "Client", 66),
    GroupInUse: Edge(409, "Client", 75),
    BusError: Edge(503, "Server", 69),
    BrokerAuthenticationError: Edge(503, "Server", 77),
    ClientStateError: Edge(503, "Server", 1),
}


def edge_of(error: AdapterError | type[AdapterError]) -> Edge:
    """The entry of ``EDGES`` for ``error``: its own class's, else its nearest ancestor's."""
    cls = error if isinstance(error, type) else type(error)
    for ancestor in cls.__mro__:
        entry = EDGES.get(ancestor)
        if entry is not None:
            return entry
    return EDGES[AdapterError]
