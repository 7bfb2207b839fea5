"""``amqp.url`` as the nodes of one RabbitMQ cluster: a URL, or several separated by commas (a
list in TOML). The one place that splits such a value, checks it and hides its passwords.

The nodes of a cluster share users, virtual hosts and TLS, so every URL of the list must give the
same scheme, credentials, virtual host and options; only the host and port differ. A comma inside
a password is written ``%2C`` (or the password is given as ``amqp.password``).
"""

from __future__ import annotations

from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

__all__ = ["redact_url", "split_nodes"]

_SCHEMES = ("amqp", "amqps")


def _parts(url: str) -> SplitResult | None:
    """The URL's parts, or None when it is no URL with a host (a port that is not a number
    included)."""
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts


def _vhost(parts: SplitResult) -> str:
    return unquote(parts.path[1:]) or "/"


def _redact_one(url: str) -> str:
    parts = _parts(url)
    if parts is None:
        # Unparsable text may be a piece of a password (a comma inside one): show none of it.
        return "***" if url.strip() else ""
    if parts.password is None:
        return urlunsplit(parts)
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_url(url: str) -> str:
    """The URL, or comma-separated URLs, with every password replaced, for logs and errors."""
    return ",".join(_redact_one(piece) for piece in url.split(","))


def split_nodes(value: str) -> list[str]:
    """The node URLs of ``amqp.url`` (comma-separated), checked. ``ValueError`` names the entry
    by its position and never shows a password."""
    entries = [entry.strip() for entry in value.split(",")]
    if any(not entry for entry in entries):
        raise ValueError("has an empty entry (two commas in a row, or a comma at either end)")
    several = len(entries) > 1
    nodes: list[str] = []
    first: SplitResult | None = None
    seen: dict[tuple[str, int | None], int] = {}
    for number, entry in enumerate(entries, start=1):
        which = f"node {number}" if several else "it"
        parts = _parts(entry)
        if parts is None or parts.scheme not in _SCHEMES:
            hint = "; a comma inside a password is written %2C" if several else ""
            raise ValueError(
                f"{which} must look like amqp://user:password@host:port/vhost, one of the "
                f"schemes amqp, amqps{hint}"
            )
        address = (parts.hostname or "", parts.port)
        if address in seen:
            raise ValueError(f"{which} repeats node {seen[address]} ({_redact_one(entry)})")
        seen[address] = number
        if first is None:
            first = parts
        else:
            for differs, what in (
                (parts.scheme != first.scheme, "scheme (amqp:// or amqps://)"),
                (
                    (parts.username, parts.password) != (first.username, first.password),
                    "user or password",
                ),
                (_vhost(parts) != _vhost(first), "virtual host"),
                (parts.query != first.query, "options (?...)"),
            ):
                if differs:
                    raise ValueError(
                        f"{which} ({_redact_one(entry)}) differs from node 1 "
                        f"({_redact_one(entries[0])}) in its {what}: the nodes of one cluster "
                        "share their users, virtual hosts, TLS and options"
                    )
        nodes.append(entry)
    return nodes
