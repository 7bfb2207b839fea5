"""The serializedProperties codec: the rules of docs/contract.md, and property-based round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter import AdapterError, InvalidProperties, parse_properties, serialize_properties
from adapter._exceptions import PropertiesTooLarge
from adapter._properties import check_limits


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
        ("a=1\nb=x\ry", 2, "line break (CR or LF)"),
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


names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="="),
    min_size=1,
    max_size=20,
).filter(lambda s: s == s.strip(" \t"))
values = st.text(max_size=40).filter(lambda s: "\n" not in s and "\r" not in s)


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
