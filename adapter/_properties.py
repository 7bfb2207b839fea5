"""The serializedProperties codec: vRO's ``name1=value1\\nname2=value2`` wire format.

This module is the only place that implements the rules of docs/contract.md; everything that
reads or writes serializedProperties (REST, SOAP, MQTT, CLI) calls it.
"""

from __future__ import annotations

from collections.abc import Mapping

from ._exceptions import InvalidProperties, PropertiesTooLarge

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PROPERTIES",
    "check_limits",
    "parse_properties",
    "properties_size",
    "serialize_properties",
    "string_object",
]

DEFAULT_MAX_BYTES = 64 * 1024
DEFAULT_MAX_PROPERTIES = 256
_NAME_SPACE = " \t"


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


def string_object(value: object, what: str) -> dict[str, str]:
    """``value`` (decoded JSON) as properties: it must be an object whose values are strings."""
    if not isinstance(value, dict):
        raise InvalidProperties(f"{what} is not a JSON object of strings")
    for name, item in value.items():
        if not isinstance(item, str):
            raise InvalidProperties(f"property {name!r} is not a string in {what}")
    return value


def parse_properties(
    text: str | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_properties: int = DEFAULT_MAX_PROPERTIES,
) -> dict[str, str]:
    """Parse serializedProperties text into a dict.

    None or empty text means no properties. Raises ``InvalidProperties`` (naming the 1-based line
    and the rule) for a line without ``=``, an empty name, a repeated name, or text over the limits.
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

    Refuses (``InvalidProperties``) what the format cannot carry: a name that is empty, has
    surrounding spaces or contains ``=`` or a line break, and a value with a line break or a
    final carriage return.
    """
    lines = []
    for number, (name, value) in enumerate(properties.items(), start=1):
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidProperties(
                f"property names and values must be strings, got {type(name).__name__}="
                f"{type(value).__name__}",
                line=number,
            )
        _utf8_len(name, line=number)
        _utf8_len(value, line=number)
        if not name.strip(_NAME_SPACE):
            raise InvalidProperties("empty property name", line=number)
        if name != name.strip(_NAME_SPACE):
            raise InvalidProperties(
                f"property name {name!r} has surrounding spaces, which the format drops",
                line=number,
            )
        if "=" in name:
            raise InvalidProperties(f"property name {name!r} contains '='", line=number)
        if "\n" in name:
            raise InvalidProperties(f"property name {name!r} contains a line break", line=number)
        if "\n" in value:
            raise InvalidProperties(
                f"value of {name!r} contains a line break; send it through the JSON API",
                line=number,
            )
        if value.endswith("\r"):
            # A reader takes a final CR for the CR of a CRLF line end and drops it.
            raise InvalidProperties(
                f"value of {name!r} ends with a carriage return, which the format drops; "
                "send it through the JSON API",
                line=number,
            )
        lines.append(f"{name}={value}")
    return "\n".join(lines)
