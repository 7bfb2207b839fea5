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
from adapter._names import parse_routing_key, validate_kind


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
    ],
)
def test_invalid_names_say_which_rule_broke(name: str, rule: str) -> None:
    with pytest.raises(InvalidEventName) as caught:
        validate_name(name)
    assert rule in str(caught.value)
    assert caught.value.rule in str(caught.value)


@pytest.mark.parametrize("name", ["a", "vm.created", "x" * 200, "é" * 100, "with space", "a-b_c"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


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
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="*#+/."),
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
