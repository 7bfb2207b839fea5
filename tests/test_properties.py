"""The serializedProperties codec: the rules of docs/contract.md, and property-based round trips."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter import AdapterError, InvalidProperties, parse_properties, serialize_properties
from adapter._exceptions import PropertiesTooLarge
from adapter._properties import check_limits, check_property


def test_parses_lines_on_first_equals_and_keeps_values_exactly() -> None:
    text = "a=1\r\n\n  b c  =x=y \n\nempty=\ntab=x\ty\r\n"
    assert parse_properties(text) == {"a": "1", "b c": "x=y ", "empty": "", "tab": "x\ty"}


@pytest.mark.parametrize("text", [None, "", "\n\n", "\r\n"])
def test_nothing_means_no_properties(text: str | None) -> None:
    assert parse_properties(text) == {}


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("a=1\nnoequals", 2, "no '='"),
        ("a=1\n\n =2", 3, "empty property name"),
        ("a=1\nb=2\na=3", 3, "given twice (first on line 1)"),
        ("a=1\nb\x00c=2", 2, "control character (U+0000 at 1)"),
        ("a=1\nb\rc=2", 2, "control character (U+000D at 1)"),
        ("a=1\nb=x\ry", 2, "'b' contains a line break (U+000D at 1)"),
        ("a=1\nb=\x1b[31mred", 2, "'b' contains a control character (U+001B at 0)"),
        ("a=1\nb=x\vy", 2, "'b' contains a line break (U+000B at 1)"),
        ("a=1\nb=x\x85y", 2, "'b' contains a line break (U+0085 at 1)"),
        ("a=1\nb=x\u2028y", 2, "'b' contains a line or paragraph separator (U+2028 at 1)"),
        ("a=1\nb\u2029=y", 2, "name 'b\\u2029' contains a line or paragraph separator"),
    ],
)
def test_errors_name_the_line_and_the_rule(text: str, line: int, words: str) -> None:
    with pytest.raises(InvalidProperties) as caught:
        parse_properties(text)
    assert caught.value.line == line
    assert words in str(caught.value)
    assert f"line {line}" in str(caught.value)


def test_limits_are_enforced_and_configurable() -> None:
    big = "a=" + "x" * (64 * 1024)
    with pytest.raises(PropertiesTooLarge, match="limit of 65536 bytes"):
        parse_properties(big)
    many = "\n".join(f"p{i}=v" for i in range(257))
    with pytest.raises(PropertiesTooLarge, match="limit of 256 properties"):
        parse_properties(many)
    assert len(parse_properties(many, max_properties=300)) == 257
    with pytest.raises(PropertiesTooLarge):
        check_limits({"a": "xyz"}, max_bytes=4)
    check_limits({"a": "xy"}, max_bytes=4)


@pytest.mark.parametrize(
    ("properties", "words"),
    [
        ({"a=b": "1"}, "contains '='"),
        ({"a\nb": "1"}, "control character"),
        ({"a": "1\n2"}, "line break"),
        ({"a": "1\r"}, "line break"),
        ({"a": "\x1b]0;title\x07"}, r"control character \(U\+001B at 0\)"),
        ({"a": "x\x0cy"}, r"line break \(U\+000C at 1\)"),
        ({"a": "x\x00"}, r"control character \(U\+0000 at 1\)"),
        ({"a": "x\x7f"}, r"control character \(U\+007F at 1\)"),
        ({"a": "\u2029"}, r"separator \(U\+2029 at 0\)"),
        ({"a\u2028b": "1"}, r"separator \(U\+2028 at 1\)"),
        ({"": "1"}, "empty property name"),
        ({" a": "1"}, "surrounding spaces"),
    ],
)
def test_serializing_refuses_what_the_format_cannot_carry(
    properties: dict[str, str], words: str
) -> None:
    with pytest.raises(InvalidProperties, match=words):
        serialize_properties(properties)


def test_lone_surrogates_are_refused_with_our_error() -> None:
    with pytest.raises(InvalidProperties, match="UTF-8"):
        parse_properties("a=\ud800")


# The rules of check_property: a name has no control character and no U+2028/U+2029; a value
# may hold TAB, but no other control character and no U+2028/U+2029.
SEPARATORS = "\u2028\u2029"
names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="=" + SEPARATORS),
    min_size=1,
    max_size=20,
).filter(lambda s: s == s.strip(" \t"))
values = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=SEPARATORS)
    | st.just("\t"),
    max_size=40,
)
# Every character the rules are about, and anything else.
edge_characters = st.sampled_from(
    [chr(code) for code in (*range(0x20), *range(0x7F, 0xA0))] + ["\u2028", "\u2029", "=", " "]
)
any_text = st.text(edge_characters | st.characters(), max_size=30)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(st.dictionaries(names.filter(_encodable), values.filter(_encodable), max_size=12))
def test_round_trip(properties: dict[str, str]) -> None:
    assert parse_properties(serialize_properties(properties)) == properties


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_only_our_error(text: str) -> None:
    try:
        result = parse_properties(text, max_bytes=200, max_properties=5)
    except AdapterError as exc:
        assert isinstance(exc, InvalidProperties)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
    assert parse_properties(serialize_properties(result)) == result


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5))
def test_any_mapping_serializes_or_raises_only_our_error(properties: dict[str, str]) -> None:
    try:
        serialize_properties(properties)
    except AdapterError as exc:
        assert isinstance(exc, InvalidProperties)


def test_a_value_may_hold_a_tab_and_other_text() -> None:
    properties = {
        "tab": "a\tb",
        "space": "\xa0\u200b\ufeff",
        "private": "\ue000",
        "emoji": "\U0001f600",
    }
    assert parse_properties(serialize_properties(properties)) == properties


@given(any_text, any_text)
def test_an_accepted_property_is_one_line_however_it_is_split(name: str, value: str) -> None:
    try:
        check_property(name, value)
    except InvalidProperties:
        return
    assert len(value.splitlines()) <= 1
    assert len(f"{name}={value}".splitlines()) == 1
    assert "\x1b" not in name + value
    assert all(char == "\t" or unicodedata.category(char) != "Cc" for char in value)


@given(names, values)
def test_every_property_the_strategies_make_is_accepted(name: str, value: str) -> None:
    check_property(name, value)
