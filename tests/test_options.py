"""Option parsing: one set of names, strings coerced, bad values name the field and the allowed range."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from koe.errors import OptionsError
from koe.options import (
    DEFAULT_TEMPERATURES,
    TranscribeOptions,
    format_custom_attributes,
    parse_custom_attributes,
    parse_options,
)


def test_defaults() -> None:
    o = TranscribeOptions()
    assert (o.language, o.task, o.beam_size, o.mode, o.vad) == (None, "transcribe", 5, "auto", True)
    assert o.temperature == DEFAULT_TEMPERATURES


def test_strings_are_coerced() -> None:
    o = parse_options({"language": "JA", "beam_size": "3", "word_timestamps": "true", "temperature": "0|0.4",
                       "vad": "false", "batch_size": "8", "mode": "batched"})  # fmt: skip
    assert (o.language, o.beam_size, o.word_timestamps, o.temperature, o.vad, o.batch_size) == (
        "ja",
        3,
        True,
        (0.0, 0.4),
        False,
        8,
    )
    assert parse_options({"language": "auto"}).language is None
    assert parse_options({"temperature": 0.2}).temperature == (0.2,)


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"beam_size": 0}, "beam_size", "greater than or equal to 1"),
        ({"beam_size": "many"}, "beam_size", "integer"),
        ({"language": "klingon"}, "language", "unknown language"),
        ({"task": "summarize"}, "task", "transcribe"),
        ({"temperature": "0,2"}, "temperature", "between 0 and 1"),
        ({"mode": "fast"}, "mode", "sequential"),
        ({"colour": "red"}, "colour", "unknown option"),
        ({"initial_prompt": "a\x00b"}, "initial_prompt", "NUL"),
        ({"batch_size": 1000}, "batch_size", "less than or equal to 256"),
    ],
)
def test_bad_values_name_the_field(values: dict[str, object], field: str, words: str) -> None:
    with pytest.raises(OptionsError) as info:
        parse_options(values)
    assert str(info.value).startswith(field) and words in str(info.value)


def test_custom_attributes_round_trip() -> None:
    attrs = parse_custom_attributes("language=ja; task=transcribe;word_timestamps=true,temperature=0|0.2")
    assert attrs == {"language": "ja", "task": "transcribe", "word_timestamps": "true", "temperature": "0|0.2"}
    o = parse_options(attrs)
    assert parse_options(parse_custom_attributes(format_custom_attributes(o.model_dump()))) == o


@pytest.mark.parametrize("header", ["language", "=ja", "a=1;a=2", "x" * 1025])
def test_malformed_custom_attributes(header: str) -> None:
    with pytest.raises(OptionsError):
        parse_custom_attributes(header)


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=30), max_size=6))
def test_any_mapping_either_parses_or_raises_options_error(values: dict[str, str]) -> None:
    try:
        parse_options(values)
    except OptionsError as exc:
        assert exc.message


@given(st.text(max_size=300))
def test_any_custom_attribute_string_is_handled(header: str) -> None:
    try:
        parse_options(parse_custom_attributes(header))
    except OptionsError as exc:
        assert exc.message
