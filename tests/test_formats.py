"""Every output format, parsed back with a real parser: text matches, times increase and stay in the audio."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import srt
import webvtt

from koe.audio import decode
from koe.engine import Engine
from koe.errors import NotAcceptableError, OptionsError
from koe.formats import FORMATS, check_format, format_for_accept, render, timestamp
from koe.options import parse_options
from koe.transcript import Segment, Transcript, Word


@pytest.fixture(scope="module")
def transcript(engine: Engine, jfk: Path) -> Transcript:
    return engine.transcribe(decode(jfk), parse_options({"word_timestamps": True}))


def _words(text: str) -> list[str]:
    return "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split()


def test_timestamps_are_exact() -> None:
    assert timestamp(62.345, ",") == "00:01:02,345"
    assert timestamp(62.345) == "00:01:02.345"
    assert timestamp(3600 * 3 + 59.9996) == "03:01:00.000"  # rounding carries into minutes
    assert timestamp(-0.2) == "00:00:00.000"


def test_text_and_json(transcript: Transcript) -> None:
    assert "ask not what your country can do for you" in render(transcript, "text").lower()
    assert json.loads(render(transcript, "json")) == {"text": transcript.text}


def test_verbose_json_has_openai_shape(transcript: Transcript) -> None:
    body = json.loads(render(transcript, "verbose_json"))
    assert body["language"] == "english" and body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(11.0, abs=0.01)
    seg_keys = {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob",
                "compression_ratio", "no_speech_prob"}  # fmt: skip
    assert body["segments"] and all(seg_keys <= set(s) for s in body["segments"])
    assert [set(w) for w in body["words"]] == [{"word", "start", "end"}] * len(body["words"])
    starts = [w["start"] for w in body["words"]]
    assert starts == sorted(starts) and all(0 <= s <= 11.0 for s in starts)
    assert _words(" ".join(w["word"] for w in body["words"])) == _words(transcript.text)


def test_srt_parses_back(transcript: Transcript) -> None:
    subs = list(srt.parse(render(transcript, "srt")))
    assert [s.index for s in subs] == list(range(1, len(subs) + 1))
    _check_cues([(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs], transcript)


def test_vtt_parses_back(transcript: Transcript) -> None:
    captions = webvtt.from_buffer(io.StringIO(render(transcript, "vtt")))
    _check_cues([(c.start_in_seconds, c.end_in_seconds, c.text) for c in captions], transcript)


def test_tsv_parses_back(transcript: Transcript) -> None:
    lines = render(transcript, "tsv").splitlines()
    assert lines[0] == "start\tend\ttext"
    rows = [line.split("\t") for line in lines[1:]]
    _check_cues([(int(a) / 1000, int(b) / 1000, text) for a, b, text in rows], transcript)


def _check_cues(cues: list[tuple[float, float, str]], transcript: Transcript) -> None:
    assert cues
    assert _words(" ".join(text for _, _, text in cues)) == _words(transcript.text)
    previous = 0.0
    for start, end, _ in cues:
        assert previous <= start < end <= transcript.duration + 0.5
        previous = start


def test_many_segments_and_hours() -> None:
    segments = [
        Segment(id=i, start=i * 3600.5, end=i * 3600.5 + 2.25, text=f" line {i}",
                words=[Word(word=f" line{i}", start=i * 3600.5, end=i * 3600.5 + 1)])
        for i in range(3)
    ]  # fmt: skip
    t = Transcript.from_segments(segments, language="ja", language_probability=0.9, duration=8000, task="transcribe")
    assert t.text == "line 0 line 1 line 2"
    assert "02:00:01,000 --> 02:00:03,250" in render(t, "srt")
    assert json.loads(render(t, "verbose_json"))["language"] == "japanese"
    # The cue separator inside text must not break a parser.
    t2 = Transcript.from_segments(
        [Segment(id=0, start=0, end=1, text=" a --> b")],
        language="en",
        language_probability=1,
        duration=1,
        task="transcribe",
    )
    assert next(iter(srt.parse(render(t2, "srt")))).content == "a -> b"


def test_format_names_and_accept() -> None:
    assert set(FORMATS) == {"text", "json", "verbose_json", "srt", "vtt", "tsv", "rttm"}
    with pytest.raises(OptionsError, match="response format 'docx'"):
        check_format("docx")
    assert format_for_accept(None) == "verbose_json"
    assert format_for_accept("*/*") == "verbose_json"
    assert format_for_accept("text/vtt") == "vtt"
    assert format_for_accept("application/x-subrip") == "srt"
    assert format_for_accept("image/png, text/plain;q=0.5") == "text"
    with pytest.raises(NotAcceptableError):
        format_for_accept("image/png")
