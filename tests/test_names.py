"""Event names, kinds and their mapping to routing keys and MQTT topics."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from adapter import (
    InvalidEventName,
    InvalidKind,
    name_from_topic,
    pattern_matches,
    routing_key,
    topic_for,
    validate_name,
    validate_pattern,
)
from adapter._mqtt._mapping import mqtt_string_problem
from adapter._names import (
    MAX_PATTERN_HASHES,
    is_noncharacter,
    parse_routing_key,
    pattern_covers,
    validate_kind,
)


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "must not be empty"),
        ("x" * 201, "201 bytes"),
        ("é" * 101, "202 bytes"),
        ("a\x00b", "control characters"),
        ("a\tb", "control characters"),
        ("a*b", "'*'"),
        ("a.#", "'#'"),
        ("a+b", "'+'"),
        ("a/b", "'/'"),
        (".a", "start with '.'"),
        ("a.", "end with '.'"),
        ("a..b", "empty word"),
        ("a\ud800", "UTF-8"),
        ("a\x85b", "control characters (U+0085 at 1)"),
        ("a\x7fb", "control characters (U+007F at 1)"),
        ("a\uffff", "noncharacters, which MQTT cannot carry (U+FFFF at 1)"),
        ("a\ufffeb", "noncharacters, which MQTT cannot carry (U+FFFE at 1)"),
        ("\ufdd0", "noncharacters, which MQTT cannot carry (U+FDD0 at 0)"),
        ("ab\ufdef", "noncharacters, which MQTT cannot carry (U+FDEF at 2)"),
        ("a\U0001fffe", "noncharacters, which MQTT cannot carry (U+1FFFE at 1)"),
        ("a\U0010ffff", "noncharacters, which MQTT cannot carry (U+10FFFF at 1)"),
    ],
)
def test_invalid_names_say_which_rule_broke(name: str, rule: str) -> None:
    with pytest.raises(InvalidEventName) as caught:
        validate_name(name)
    assert rule in str(caught.value)
    assert caught.value.rule in str(caught.value)


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "vm.created",
        "x" * 200,
        "é" * 100,
        "with space",
        "a-b_c",
        # Next to the noncharacters, and not among them: Mosquitto carries these.
        "a\ufdcf\ufdf0\ufffd\U0010fffd",
        "\u2028\ue000\ufeff",
    ],
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


def test_noncharacters_are_the_66_of_unicode() -> None:
    found = [code for code in range(0x110000) if is_noncharacter(chr(code))]
    assert len(found) == 66
    assert found[:32] == list(range(0xFDD0, 0xFDF0))
    assert found[32:] == [plane << 16 | low for plane in range(17) for low in (0xFFFE, 0xFFFF)]


def test_patterns_refuse_noncharacters_too() -> None:
    with pytest.raises(InvalidEventName, match="noncharacters"):
        validate_pattern("a.*.\uffff")


def test_kinds() -> None:
    assert validate_kind("external") == "external"
    with pytest.raises(InvalidKind, match="'external' or 'internal'"):
        validate_kind("public")


def test_patterns() -> None:
    assert validate_pattern("device.*.alarm") == "device.*.alarm"
    assert validate_pattern("backup.#") == "backup.#"
    with pytest.raises(InvalidEventName, match="whole word"):
        validate_pattern("device.a*")
    assert pattern_matches("internal.device.*.alarm", "internal.device.x.alarm")
    assert not pattern_matches("internal.device.*.alarm", "internal.device.x.y.alarm")
    assert pattern_matches("internal.backup.#", "internal.backup")
    assert pattern_matches("internal.backup.#", "internal.backup.a.b")
    assert pattern_matches("#", "external.anything.at.all")
    assert pattern_matches("*.a.#.z", "external.a.z")
    assert not pattern_matches("internal.a", "internal.a.b")
    assert not pattern_matches("vm.*", "vm")


def test_topic_mapping_refuses_what_it_cannot_map() -> None:
    assert name_from_topic("customevents", "customevents/external/vm/created") == (
        "external",
        "vm.created",
    )
    for topic, rule in [
        ("other/external/a", "prefix"),
        ("customevents/external", "<kind>/<name>"),
        ("customevents/public/a", "'external' or 'internal'"),
        ("customevents/external/a//b", "empty word"),
        ("customevents/external/a.b", "'.'"),
        ("customevents/external/a/", "end with"),
    ]:
        with pytest.raises((InvalidEventName, InvalidKind), match=rule):
            name_from_topic("customevents", topic)


name_words = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="*#+/.").filter(
        lambda char: not is_noncharacter(char)
    ),
    min_size=1,
    max_size=12,
)
valid_names = st.lists(name_words, min_size=1, max_size=5).map(".".join)
kinds = st.sampled_from(["external", "internal"])


@given(kinds, valid_names)
def test_routing_key_and_topic_are_bijections(kind: str, name: str) -> None:
    assume(len(name.encode("utf-8")) <= 200)
    checked = validate_kind(kind)
    assert validate_name(name) == name
    assert parse_routing_key(routing_key(checked, name)) == (kind, name)
    assert name_from_topic("customevents", topic_for("customevents", checked, name)) == (
        kind,
        name,
    )


@given(kinds, valid_names, kinds, valid_names)
def test_distinct_events_get_distinct_keys_and_topics(
    kind_a: str, name_a: str, kind_b: str, name_b: str
) -> None:
    assume((kind_a, name_a) != (kind_b, name_b))
    a, b = validate_kind(kind_a), validate_kind(kind_b)
    assert routing_key(a, name_a) != routing_key(b, name_b)
    assert topic_for("p", a, name_a) != topic_for("p", b, name_b)


@given(st.text(max_size=60))
def test_any_text_validates_or_raises_our_error(text: str) -> None:
    try:
        validate_name(text)
    except InvalidEventName:
        return
    assert pattern_matches(f"internal.{text}", f"internal.{text}")
    # A valid name is always a topic MQTT can carry (egress publishes it).
    assert mqtt_string_problem(topic_for("customevents", "internal", text)) is None


# What Mosquitto 2.0 refuses in a topic (NUL, C0 and C1 controls, noncharacters), what it
# accepts next to them, and anything else.
edge_characters = st.sampled_from(
    list(
        "\x00\x01\x1f\x7f\x85\x9f\xa0\ufdcf\ufdd0\ufdef\ufdf0\ufffd\ufffe\uffff\u2028"
        "\U0001fffe\U0010ffff\U0010fffd"
    )
)


@given(st.text(alphabet=edge_characters | st.characters(), max_size=40))
def test_every_valid_name_is_a_topic_mqtt_can_carry(text: str) -> None:
    try:
        validate_name(text)
    except InvalidEventName:
        return
    assert mqtt_string_problem(topic_for("customevents", "internal", text)) is None


@given(st.text(max_size=60))
def test_any_topic_maps_or_raises_our_error(topic: str) -> None:
    try:
        kind, name = name_from_topic("customevents", "customevents/" + topic)
    except (InvalidEventName, InvalidKind):
        return
    assert topic_for("customevents", kind, name) == "customevents/" + topic


@given(valid_names, valid_names)
def test_a_literal_name_never_matches_another_literal(name: str, other: str) -> None:
    # Allow-lists rely on this: a name with odd characters cannot match beyond itself.
    assume(name != other)
    assert not pattern_matches(f"external.{name}", f"external.{other}")


def _backtracking_match(pattern: list[str], words: list[str]) -> bool:
    """The textbook definition of topic matching, exponential but obviously right: the oracle."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_backtracking_match(rest, words[i:]) for i in range(len(words) + 1))
    return bool(words) and head in ("*", words[0]) and _backtracking_match(rest, words[1:])


pattern_words = st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=7)
key_words = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=8)


@given(pattern_words, key_words)
def test_matching_agrees_with_the_definition(pattern: list[str], words: list[str]) -> None:
    expected = _backtracking_match(pattern, words)
    assert pattern_matches(".".join(pattern), ".".join(words)) is expected


@given(pattern_words, pattern_words, st.lists(key_words, min_size=1, max_size=20))
def test_a_covering_pattern_matches_every_key_the_covered_one_matches(
    allowed: list[str], requested: list[str], keys: list[list[str]]
) -> None:
    a, r = ".".join(allowed), ".".join(requested)
    if pattern_covers(a, r):
        for words in keys:
            if _backtracking_match(requested, words):
                assert _backtracking_match(allowed, words)


@pytest.mark.timeout(10)
def test_matching_is_not_exponential_in_hash_words() -> None:
    # Backtracking took 2.5 s at 41 words and 5 times more per ten words: hours at 100.
    pattern = ".".join(["#"] * 8 + ["x"])
    key = ".".join(["a"] * 99 + ["b"])
    assert not pattern_matches(pattern, key)
    assert pattern_matches(pattern, key.removesuffix("b") + "x")
    assert not pattern_covers(pattern, ".".join(["*"] * 99 + ["b"]))
    assert pattern_covers(".".join(["#", "*"] * 8 + ["x"]), ".".join(["*"] * 99 + ["x"]))


def test_patterns_have_a_bounded_number_of_hash_words() -> None:
    assert validate_pattern(".".join(["#", "a"] * MAX_PATTERN_HASHES))
    with pytest.raises(InvalidEventName, match="9 '#' words, more than the limit of 8"):
        validate_pattern(".".join(["#", "a"] * (MAX_PATTERN_HASHES + 1)))
