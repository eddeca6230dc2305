"""The one request sequence (koe.transcription) on the fake engine: check -> decode -> transcribe -> render."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeEngine

from koe import transcription
from koe.audio import AudioLimits
from koe.errors import AudioTooLongError, OptionsError
from koe.options import parse_options


def test_check_fits_the_options_to_the_formats_before_the_model_sees_them() -> None:
    engine = FakeEngine().as_engine()
    options = parse_options({})
    assert transcription.check(engine, options, ["text"]).options.timestamps is False  # text-only decoding
    assert transcription.check(engine, options, ["json", "srt"]).options.timestamps is True
    assert transcription.check(engine, options, [None]).options.timestamps is None  # Accept not known yet
    chosen = parse_options({"timestamps": True})
    assert transcription.check(engine, chosen, ["text"]).options.timestamps is True  # the caller decided


def test_check_lets_the_model_refuse_before_any_audio_is_read() -> None:
    with pytest.raises(OptionsError, match="English-only"):
        transcription.check(FakeEngine("tiny.en").as_engine(), parse_options({"language": "ja"}), ["text"])
    multilingual = FakeEngine("base", multilingual=True).as_engine()
    assert transcription.check(multilingual, parse_options({"language": "ja"}), ["text"]).options.language == "ja"


def test_run_decodes_within_the_limits_then_transcribes_and_renders(jfk: Path) -> None:
    engine = FakeEngine()
    request = transcription.check(engine.as_engine(), parse_options({"beam_size": 2}), ["vtt"])
    done: list[float] = []
    transcript = request.run(jfk, AudioLimits(10**8, 60.0), progress=lambda d, t: done.append(d))
    assert transcript.duration == pytest.approx(11.0, abs=0.05)
    assert engine.calls == [request.options] and request.options.timestamps is True
    assert transcription.render(transcript, "vtt").startswith("WEBVTT")
    with pytest.raises(AudioTooLongError):
        request.run(jfk, AudioLimits(10**8, 5.0))  # 11 s of speech over a 5 s limit


def test_shutdown_end_exits_at_once_only_when_something_is_left_running() -> None:
    import subprocess
    import sys

    def ending(arguments: str) -> tuple[int, str]:
        code = f"from koe.shutdown import end; print('flushed', end=''); end({arguments}); print(' returned')"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout

    assert ending("") == (0, "flushed returned\n")
    assert ending("forced=True") == (1, "flushed")  # os._exit(1), with stdout flushed first
    assert ending("threads_in_model=2") == (0, "flushed")
