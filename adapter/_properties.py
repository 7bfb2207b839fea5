"""The serializedProperties codec: vRO's ``name1=value1\\nname2=value2`` wire format.

This module is the only place that implements the rules of docs/contract.md; everything that
reads or writes serializedProperties (REST, SOAP, MQTT, CLI) calls it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from ._exceptions import InvalidProperties, PropertiesTooLarge

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PROPERTIES",
    "MAX_JSON_DEPTH",
    "check_limits",
    "check_properties",
    "check_property",
    "loads_json_object",
    "parse_properties",
    "properties_size",
    "serialize_properties",
    "string_object",
]

DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_MAX_PROPERTIES = 256
#: Arrays and objects in any JSON read from a caller nest at most this deep (properties are one
#: level, a CloudEvents batch three): deeper, the decoder and whatever walks the result recurse
#: towards Python's recursion limit.
MAX_JSON_DEPTH = 64
_NAME_SPACE = " \t"
# Every control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) and the line and
# paragraph separators: with them, every character at which str.splitlines() splits a line.
_NAME_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A value may hold a TAB, and nothing else of those.
_VALUE_REFUSED = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_VALUE_ASCII = bytes(range(0x20, 0x7F)) + b"\t"


def _utf8_len(text: str, *, line: int | None) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidProperties(
            f"not valid UTF-8 text (unpaired surrogate at offset {exc.start})", line=line
        ) from None


def properties_size(properties: Mapping[str, str]) -> int:
    """Size in UTF-8 bytes of the properties as serializedProperties text."""
    total = max(len(properties) - 1, 0)  # the line breaks between entries
    for name, value in properties.items():
        total += _utf8_len(name, line=None) + 1 + _utf8_len(value, line=None)
    return total


def check_limits(
    properties: Mapping[str, str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
) -> None:
    """Raise ``PropertiesTooLarge`` when the properties exceed the per-event limits."""
    if len(properties) > max_properties:
        raise PropertiesTooLarge(
            f"{len(properties)} properties, more than the limit of {max_properties}",
            limit=max_properties,
            size=len(properties),
        )
    size = properties_size(properties)
    if size > max_bytes:
        raise PropertiesTooLarge(
            f"{size} bytes, more than the limit of {max_bytes} bytes per event",
            limit=max_bytes,
            size=size,
        )


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _refused_character(match: re.Match[str], *, in_value: bool) -> str:
    char = match.group()
    if char in "\u2028\u2029":
        what = "a line or paragraph separator"
    elif in_value and len(f"a{char}b".splitlines()) > 1:
        what = "a line break"  # CR, LF, and what str.splitlines() also splits on
    else:
        what = "a control character"
    return f"{what} (U+{ord(char):04X} at {match.start()})"


def _plain_ascii(value: str) -> bool:
    # The common case, in C: 50 us for a 64 KiB value where the search takes 300 us.
    return value.isascii() and not value.encode("ascii").translate(None, _VALUE_ASCII)


def check_property(name: object, value: object, *, line: int | None = None) -> None:
    """The rule every edge applies, so that every event stays representable as
    serializedProperties and ``key=value`` output can never be forged: a name is a non-empty
    string with no ``=``, no control character, no U+2028/U+2029 and no surrounding spaces; a
    value is a string with no control character but TAB and no U+2028/U+2029, so that neither
    splits a line (on ``\\n`` or as ``str.splitlines()`` does) nor sends a terminal an escape
    sequence. Raises ``InvalidProperties`` naming the property and the character."""
    if not isinstance(name, str) or not isinstance(value, str):
        raise InvalidProperties(
            f"property names and values must be strings, got {type(name).__name__}="
            f"{type(value).__name__}",
            line=line,
        )
    _utf8_len(name, line=line)
    _utf8_len(value, line=line)
    if not name.strip(_NAME_SPACE):
        raise InvalidProperties("empty property name", line=line)
    if "=" in name:
        raise InvalidProperties(f"property name {_shown(name)} contains '='", line=line)
    if (match := _NAME_REFUSED.search(name)) is not None:
        found = _refused_character(match, in_value=False)
        raise InvalidProperties(f"property name {_shown(name)} contains {found}", line=line)
    if name != name.strip(_NAME_SPACE):
        raise InvalidProperties(
            f"property name {_shown(name)} has surrounding spaces, which the format drops",
            line=line,
        )
    if _plain_ascii(value):
        return
    if (match := _VALUE_REFUSED.search(value)) is not None:
        found = _refused_character(match, in_value=True)
        raise InvalidProperties(f"the value of property {_shown(name)} contains {found}", line=line)


def check_properties(properties: Mapping[Any, Any]) -> dict[str, str]:
    """``properties`` as a dict, every entry checked by ``check_property``."""
    for name, value in properties.items():
        check_property(name, value)
    return dict(properties)


def string_object(value: object, what: str) -> dict[str, str]:
    """``value`` (decoded JSON) as properties: an object whose entries pass ``check_property``."""
    if not isinstance(value, dict):
        raise InvalidProperties(f"{what} is not a JSON object of strings")
    return check_properties(value)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # As in serializedProperties, a name given twice is an error, not "last wins".
            raise InvalidProperties(f"{_shown(key)} given twice in a JSON object")
        result[key] = value
    return result


def _too_deep(text: str, value: Any) -> bool:
    """True if ``value``, decoded from ``text``, nests arrays and objects deeper than
    ``MAX_JSON_DEPTH``."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return False  # the common case: two passes in C
    # One level at a time over the containers only: it costs less than the decoding that built
    # them (a 1 MiB batch of 19,000 CloudEvents: 5 ms against 25 ms).
    level = [value]
    for _ in range(MAX_JSON_DEPTH):
        below = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is dict or type(item) is list:
                    below.append(item)
        if not below:
            return False
        level = below
    return True


def loads_json_object(text: str | bytes, what: str) -> Any:
    """Decode JSON text, refusing (``InvalidProperties``) an object with a key given twice at any
    depth, which ``json.loads`` would silently resolve to the last one, and arrays and objects
    nested deeper than ``MAX_JSON_DEPTH``. Every JSON the bridge reads from a caller comes here:
    HTTP bodies, CloudEvents, MQTT payloads, bus messages."""
    try:
        if isinstance(text, bytes):
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, InvalidProperties):
            raise
        raise InvalidProperties(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        # The C decoder recurses once per level: 100k levels end here, not in a 500.
        value = None
        deep = True
    else:
        deep = type(value) in (dict, list) and _too_deep(text, value)
    if deep:
        raise InvalidProperties(
            f"{what} nests arrays or objects deeper than {MAX_JSON_DEPTH} levels"
        )
    return value


def parse_properties(
    text: str | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
) -> dict[str, str]:
    """Parse serializedProperties text into a dict.

    None or empty text means no properties. Raises ``InvalidProperties`` (naming the 1-based line
    and the rule) for a line without ``=``, an empty name, a repeated name, a property that
    ``check_property`` refuses (a control character in a name, a CR inside a value), or text over
    the limits.
    """
    if not text:
        return {}
    size = _utf8_len(text, line=None)
    if size > max_bytes:
        raise PropertiesTooLarge(
            f"{size} bytes, more than the limit of {max_bytes} bytes per event",
            limit=max_bytes,
            size=size,
        )
    properties: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise InvalidProperties("no '=' between name and value", line=number)
        name = name.strip(_NAME_SPACE)
        if not name:
            raise InvalidProperties("empty property name before '='", line=number)
        check_property(name, value, line=number)
        if name in first_seen:
            raise InvalidProperties(
                f"property {name!r} given twice (first on line {first_seen[name]})", line=number
            )
        if len(properties) == max_properties:
            raise PropertiesTooLarge(
                f"more than the limit of {max_properties} properties",
                limit=max_properties,
                size=max_properties + 1,
            )
        first_seen[name] = number
        properties[name] = value
    return properties


def serialize_properties(properties: Mapping[str, str]) -> str:
    """Serialize properties as serializedProperties text; the inverse of ``parse_properties``.

    Refuses (``InvalidProperties``) what the format cannot carry: whatever ``check_property``
    refuses.
    """
    lines = []
    for number, (name, value) in enumerate(properties.items(), start=1):
        check_property(name, value, line=number)
        lines.append(f"{name}={value}")
    return "\n".join(lines)
