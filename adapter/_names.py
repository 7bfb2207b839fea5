"""Event names and kinds, and their mapping to AMQP routing keys and MQTT topics.

A routing key is ``<kind>.<name>``; an MQTT topic is ``<prefix>/<kind>/<name with "." as "/">``.
Both mappings are bijections on valid names, so nothing arrives under a name it was not sent with.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from ._exceptions import InvalidEventName, InvalidKind

__all__ = [
    "KINDS",
    "MAX_NAME_BYTES",
    "MAX_PATTERN_HASHES",
    "Kind",
    "is_noncharacter",
    "name_from_topic",
    "parse_routing_key",
    "pattern_covers",
    "pattern_matches",
    "routing_key",
    "topic_for",
    "validate_kind",
    "validate_name",
    "validate_pattern",
]

Kind = Literal["external", "internal"]
KINDS: tuple[Kind, ...] = ("external", "internal")
MAX_NAME_BYTES = 200
MAX_PATTERN_HASHES = 8
_FORBIDDEN = frozenset("*#+/")


def validate_kind(kind: str) -> Kind:
    """Return ``kind`` as a ``Kind``, or raise ``InvalidKind``."""
    if kind not in KINDS:
        raise InvalidKind(kind)
    return kind


def is_noncharacter(char: str) -> bool:
    """True for the 66 Unicode noncharacters: U+FDD0 to U+FDEF and the last two code points of
    every plane (U+FFFE, U+FFFF, U+1FFFE, ... U+10FFFF). MQTT lets a receiver treat them as a
    malformed packet (MQTT 5.0, 1.5.4), and Mosquitto does: it drops the connection."""
    code = ord(char)
    return 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE


def _check_text(name: str, *, allow_wildcards: bool) -> None:
    if not isinstance(name, str):
        raise InvalidEventName(repr(name), "must be a string")
    if not name:
        raise InvalidEventName(name, "must not be empty")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidEventName(name, "must be valid UTF-8 (it has an unpaired surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise InvalidEventName(name, f"is {size} bytes of UTF-8, more than {MAX_NAME_BYTES}")
    # Printable ASCII has no control characters nor noncharacters: only the forbidden ones need
    # looking for.
    if not (name.isascii() and name.isprintable()) or not _FORBIDDEN.isdisjoint(name):
        _check_characters(name, allow_wildcards=allow_wildcards)
    if name.startswith("."):
        raise InvalidEventName(name, "must not start with '.'")
    if name.endswith("."):
        raise InvalidEventName(name, "must not end with '.'")
    if ".." in name:
        raise InvalidEventName(name, "must not contain an empty word ('..')")


def _check_characters(name: str, *, allow_wildcards: bool) -> None:
    for index, char in enumerate(name):
        if unicodedata.category(char) == "Cc":
            raise InvalidEventName(
                name, f"must not contain control characters (U+{ord(char):04X} at {index})"
            )
        if is_noncharacter(char):
            raise InvalidEventName(
                name,
                f"must not contain Unicode noncharacters, which MQTT cannot carry "
                f"(U+{ord(char):04X} at {index})",
            )
        if char in _FORBIDDEN and not (allow_wildcards and char in "*#"):
            raise InvalidEventName(name, f"must not contain {char!r} (at {index})")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid event name, else raise ``InvalidEventName``."""
    _check_text(name, allow_wildcards=False)
    return name


def validate_pattern(pattern: str) -> str:
    """Validate a name pattern: a name whose words may also be ``*`` (one word) or ``#`` (any)."""
    _check_text(pattern, allow_wildcards=True)
    for word in pattern.split("."):
        if word not in ("*", "#") and ("*" in word or "#" in word):
            raise InvalidEventName(
                pattern, f"a wildcard must be a whole word ('*' or '#'), not part of {word!r}"
            )
    hashes = pattern.split(".").count("#")
    if hashes > MAX_PATTERN_HASHES:
        raise InvalidEventName(
            pattern, f"has {hashes} '#' words, more than the limit of {MAX_PATTERN_HASHES}"
        )
    return pattern


def routing_key(kind: Kind, name: str) -> str:
    """The AMQP routing (or binding) key of an event name or pattern."""
    return f"{kind}.{name}"


def parse_routing_key(key: str) -> tuple[Kind, str]:
    """Inverse of ``routing_key`` for valid names; raises on anything else."""
    kind, sep, name = key.partition(".")
    if not sep:
        raise InvalidEventName(key, "routing key has no '<kind>.' prefix")
    return validate_kind(kind), validate_name(name)


def topic_for(prefix: str, kind: Kind, name: str) -> str:
    """The MQTT topic of an event: ``<prefix>/<kind>/<name with '.' written as '/'>``."""
    return f"{prefix}/{kind}/{name.replace('.', '/')}"


def name_from_topic(prefix: str, topic: str) -> tuple[Kind, str]:
    """Inverse of ``topic_for``: the kind and name of a topic, or ``InvalidEventName``."""
    head = prefix + "/"
    if not topic.startswith(head):
        raise InvalidEventName(topic, f"topic is not under the prefix {prefix!r}")
    kind, sep, rest = topic[len(head) :].partition("/")
    if not sep:
        raise InvalidEventName(topic, "topic has no '<kind>/<name>' after the prefix")
    validated_kind = validate_kind(kind)
    if "." in rest:
        # '.' inside a topic level has no name to map back to: it would alias another topic.
        raise InvalidEventName(topic, "topic levels must not contain '.'")
    return validated_kind, validate_name(rest.replace("/", "."))


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A pattern as bit masks over its word positions, runs of ``#`` collapsed into one."""

    size: int
    hashes: int
    stars: int
    literals: dict[str, int]


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> _Compiled:
    words: list[str] = []
    for word in pattern.split("."):
        if not (word == "#" and words and words[-1] == "#"):  # '#.#' matches what '#' does
            words.append(word)
    hashes = stars = 0
    literals: dict[str, int] = {}
    for position, word in enumerate(words):
        bit = 1 << position
        if word == "#":
            hashes |= bit
        elif word == "*":
            stars |= bit
        else:
            literals[word] = literals.get(word, 0) | bit
    return _Compiled(len(words), hashes, stars, literals)


def pattern_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is exactly one word, ``#`` zero or more words.

    Runs in O(pattern words x key words): the pattern is simulated as an automaton whose states
    are word positions, held as bits of an int, so no input makes it backtrack.
    """
    if "*" not in pattern and "#" not in pattern:
        return pattern == key
    compiled = _compile(pattern)
    hashes = compiled.hashes
    # Positions reachable before any word is read: 0, and past a leading '#'.
    states = 1 | ((1 & hashes) << 1)
    for word in key.split("."):
        advance = states & (compiled.stars | compiled.literals.get(word, 0))
        # A '#' position eats the word and stays; '*' or the same word moves one position on.
        states = (states & hashes) | (advance << 1)
        if not states:
            return False
        states |= (states & hashes) << 1  # a '#' may also match no (more) words
    return bool(states >> compiled.size & 1)


def pattern_covers(allowed: str, requested: str) -> bool:
    """True if every routing key that ``requested`` (a name or a pattern) matches, ``allowed``
    matches too. O(allowed words x requested words), by dynamic programming from the ends."""
    if "*" not in requested and "#" not in requested:
        return pattern_matches(allowed, requested)
    a = allowed.split(".")
    r = requested.split(".")
    # after[j]: the rest of ``allowed`` from position i covers r[j:]; built for i = len(a) down.
    after = [False] * len(r) + [True]
    for i in range(len(a) - 1, -1, -1):
        word = a[i]
        row = [False] * (len(r) + 1)
        if word == "#":
            # '#' absorbs any run of requested words, wildcards included.
            seen = False
            for j in range(len(r), -1, -1):
                seen = seen or after[j]
                row[j] = seen
        else:
            for j in range(len(r)):
                token = r[j]
                # A requested '#' can stand for any number of words: only an allowed '#' covers
                # it; a requested '*' only an allowed '*'.
                if token != "#" and (word == "*" or word == token):
                    row[j] = after[j + 1]
        after = row
    return after[0]
