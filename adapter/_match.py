"""A wait's ``match``: the property values an event must carry to answer it (correlation, as a
Zeebe correlation key). Checked here once for every front end (library, CLI, HTTP)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from ._exceptions import InvalidInput, InvalidProperties
from ._properties import check_property

__all__ = ["MAX_MATCH_BYTES", "MAX_MATCH_KEYS", "check_match", "parse_match_items"]

#: At most this many properties in one ``match``, and this many bytes of names and values: a
#: match is a correlation key, not a query; each wait keeps it in memory, and a wait over HTTP
#: carries it in its URL.
MAX_MATCH_KEYS: Final = 16
MAX_MATCH_BYTES: Final = 4096


def check_match(match: object) -> dict[str, str] | None:
    """``match`` as a dict (None for none, or an empty one): names and values follow the
    properties' rules (``check_property``), at most ``MAX_MATCH_KEYS`` of them and
    ``MAX_MATCH_BYTES`` in all; ``InvalidInput`` naming what breaks a rule."""
    if match is None:
        return None
    if not isinstance(match, Mapping):
        raise InvalidInput(
            f"match must be a mapping of property values, not {type(match).__name__}"
        )
    if len(match) > MAX_MATCH_KEYS:
        raise InvalidInput(f"match has {len(match)} properties, more than {MAX_MATCH_KEYS}")
    size = 0
    for name, value in match.items():
        try:
            check_property(name, value)
        except InvalidProperties as exc:
            raise InvalidInput(f"match: {exc.rule}") from None
        size += len(name.encode("utf-8", "surrogatepass")) + len(
            value.encode("utf-8", "surrogatepass")
        )
        if size > MAX_MATCH_BYTES:
            raise InvalidInput(f"match is more than {MAX_MATCH_BYTES} bytes of names and values")
    return dict(match) if match else None


def parse_match_items(items: Iterable[str], what: str = "--match") -> dict[str, str] | None:
    """``KEY=VALUE`` texts (``--match``, the HTTP wait's ``match=``) as a checked match; a key
    given twice is refused (all must hold, so two values could never match)."""
    match: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInput(f"{what} {item[:60]!r}: expected KEY=VALUE")
        if name in match:
            raise InvalidInput(f"{what} {item[:60]!r}: property {name[:60]!r} is given twice")
        match[name] = value
        if len(match) > MAX_MATCH_KEYS:
            raise InvalidInput(f"{what}: more than {MAX_MATCH_KEYS} properties to match")
    return check_match(match)
