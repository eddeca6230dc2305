"""Hallucinations and English-only models on other languages (koe.hallucination): fast unit tests on koe
Segments, then the real tiny.en / base models on generated silence, noise and tones (encoded with PyAV), on real
speech that really says a stock phrase, and on the real Japanese and English clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import AUDIO_DIR
from koe.audio import Audio, decode
from koe.engine import Engine
from koe.formats import render
from koe.hallucination import (
    drop_hallucinations,
    is_hallucination,
    is_stock_phrase,
    language_warning,
    review,
    spoken,
)
from koe.options import parse_options
from koe.transcript import Segment, Transcript, Word
from support.media import encode_audio

RATE = 16_000


def seg(text: str, start: float = 0.0, end: float = 2.0, *, lp: float = -0.3, nsp: float = 0.02, **kw: Any) -> Segment:
    return Segment(id=0, start=start, end=end, text=text, avg_logprob=lp, no_speech_prob=nsp, **kw)


# -- which texts are stock phrases ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        " Thank you for watching!",
        " Thanks for watching.",
        " ご視聴ありがとうございました",
        " ご視聴ありがとうございました。",
        " Thank you very much for watching, and thank you very much for watching.",
        " Thank you for watching, see you next time!",
        " Subtitles by the Amara.org community",
        "（字幕：田中）",
        " Please subscribe to my channel.",
        " You",
        " Bye. Bye. Bye.",
        " ...",
        " ♪",
        " %,",
    ],
)
def test_stock_phrases(text: str) -> None:
    assert is_stock_phrase(text)


@pytest.mark.parametrize(
    "text",
    [
        " Thank you for your patience.",
        " Thank you for calling Super Awesome Company.",
        " And so my fellow Americans, ask not what your country can do for you.",
        " you know what happened to you?",
        " 日本語ちゃんと聞き取れてますか",
        " Thanks, Bob.",
        " Bye for now, Alice.",
    ],
)
def test_speech_that_is_not_only_stock_phrases(text: str) -> None:
    assert not is_stock_phrase(text)


# -- when a stock phrase is dropped ------------------------------------------------------------------------------


def test_a_stock_phrase_is_dropped_only_when_its_confidence_says_it_was_not_spoken() -> None:
    assert is_hallucination(seg(" Thank you.", nsp=0.9))  # the model itself thought there was no speech
    assert is_hallucination(seg(" Thank you.", lp=-1.3))  # improbable text
    assert is_hallucination(seg(" Thank you. Thank you. Thank you.", compression_ratio=2.8))  # a loop
    assert not is_hallucination(seg(" Thank you.", lp=-0.5, nsp=0.05))  # said, and heard clearly
    assert not is_hallucination(seg(" We thank you all for coming.", lp=-1.5, nsp=0.9))  # not a stock phrase


def test_anomalous_words_next_to_silence_are_dropped_as_faster_whisper_does() -> None:
    """faster-whisper's hallucination_silence_threshold: improbable or implausibly timed words next to silence."""
    odd = [Word(word=" Thank", start=5.0, end=5.02, probability=0.05), Word(word=" you.", start=5.02, end=5.04,
                                                                         probability=0.1)]  # fmt: skip
    fine = [Word(word=" Thank", start=5.0, end=5.3, probability=0.9), Word(word=" you.", start=5.3, end=5.6,
                                                                         probability=0.95)]  # fmt: skip
    assert is_hallucination(seg(" Thank you.", 5.0, 5.04, words=odd), silence_before=5.0)
    assert not is_hallucination(seg(" Thank you.", 5.0, 5.04, words=odd), silence_before=0.5, silence_after=0.5)
    assert not is_hallucination(seg(" Thank you.", 5.0, 5.6, words=fine), silence_before=5.0)


def test_dropping_renumbers_and_review_rejoins_the_text() -> None:
    segments = [
        seg(" Hello there.", 0.0, 1.0),
        seg(" You", 1.0, 30.0, nsp=0.95),
        seg(" General Kenobi.", 30.0, 31.0),
    ]
    kept = drop_hallucinations(segments, duration=31.0)
    assert [(s.id, s.text) for s in kept] == [(0, " Hello there."), (1, " General Kenobi.")]
    transcript = Transcript.from_segments(segments, language="en", language_probability=1.0, duration=31.0,
                                          task="transcribe")  # fmt: skip
    reviewed = review(transcript, model="base", multilingual=True)
    assert reviewed.text == "Hello there. General Kenobi." and reviewed.warnings == []
    assert [s.id for s in spoken(segments)] == [0, 1]


# -- the language warning ----------------------------------------------------------------------------------------


def test_english_only_model_with_improbable_text_warns() -> None:
    made_up = [seg(" Thank you very much for watching.", 0, 4, lp=-1.1, nsp=0.2)]
    warning = language_warning(made_up, model="tiny.en", multilingual=False)
    assert warning and "tiny.en" in warning and "English-only" in warning and "base" in warning
    assert language_warning(made_up, model="base", multilingual=True) is None  # base detects the language
    assert language_warning([seg(" Hello.", 0, 4, lp=-0.4)], model="tiny.en", multilingual=False) is None
    assert language_warning([], model="tiny.en", multilingual=False) is None
    # Text the model only found by sampling at a higher temperature (Whisper's fallback) needs less to warn.
    sampled = [seg(" If you enjoyed this video, please subscribe.", 0, 4, lp=-0.73, nsp=0.2, temperature=0.6)]
    assert language_warning(sampled, model="tiny.en", multilingual=False)
    greedy = [seg(" Montreal forced, uh, um, forced a liner.", 0, 4, lp=-0.73, nsp=0.05)]
    assert language_warning(greedy, model="tiny.en", multilingual=False) is None
    # Improbable text over what the model itself calls silence is not evidence of another language.
    assert language_warning([seg(" You", 0, 30, lp=-1.2, nsp=0.99)], model="tiny.en", multilingual=False) is None


def test_warnings_reach_json_and_verbose_json_only_when_there_are_some() -> None:
    plain = Transcript(text="Hi.", language="en", duration=1.0, segments=[seg(" Hi.", 0, 1)])
    warned = plain.model_copy(update={"warnings": ["not English"]})
    assert '"warnings"' not in render(plain, "json") and '"warnings"' not in render(plain, "verbose_json")
    assert '"warnings": ["not English"]' in render(warned, "json")
    assert '"warnings": ["not English"]' in render(warned, "verbose_json")
    assert Transcript.model_validate_json(warned.model_dump_json()).warnings == ["not English"]  # job records


# -- real models, generated sound with nobody speaking -------------------------------------------------------------


@pytest.fixture(scope="module")
def no_speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Audio]:
    """30 s of digital silence, then 5 s each of white and brown noise, a pure tone, a melody with harmonics and
    a swelling chord, written with PyAV (FLAC) and decoded back, as a user's file would be."""
    rng = np.random.default_rng(17)
    t = np.arange(5 * RATE) / RATE
    notes = [261.63, 329.63, 392.0, 523.25, 440.0, 349.23, 293.66, 246.94] * 2
    half = t[: RATE // 2]
    melody = np.concatenate([sum(np.sin(2 * np.pi * f * k * half) / k for k in (1, 2, 3)) for f in notes])[: len(t)]
    melody *= np.abs(np.sin(np.pi * (t % 0.5) / 0.5)) ** 0.5 * 0.2
    brown = np.cumsum(rng.normal(size=len(t)))
    brown -= np.convolve(brown, np.ones(800) / 800, mode="same")
    sounds = {
        "silence": np.zeros(30 * RATE),  # 30 s: on 10 s base writes nothing, after a minute of fallbacks
        "white noise": rng.normal(0, 0.05, len(t)),
        "brown noise": brown / np.abs(brown).max() * 0.3,
        "tone": 0.3 * np.sin(2 * np.pi * 440 * t),
        "melody": melody,
        "chord": sum(np.sin(2 * np.pi * f * t) for f in (220, 277.18, 329.63)) * 0.1 * (0.6 + 0.4 * np.sin(t)),
    }
    folder = tmp_path_factory.mktemp("no-speech")
    paths = {name: encode_audio(x.astype(np.float32), folder / f"{i}.flac", codec="flac")
             for i, (name, x) in enumerate(sounds.items())}  # fmt: skip
    return {name: decode(path) for name, path in paths.items()}


def test_silence_without_vad_makes_whisper_say_you_and_koe_drops_it(
    engine: Engine, base_engine: Engine, no_speech: dict[str, Audio]
) -> None:
    """The control: faster-whisper itself writes " You" on digital silence when VAD is off; koe writes nothing."""
    silence = no_speech["silence"]
    for model in (engine, base_engine):
        raw, _ = model.model.transcribe(silence.samples, vad_filter=False, beam_size=5)
        assert any(is_stock_phrase(s.text) and s.text.strip() for s in raw), model.name
        for mode in ("sequential", "batched"):
            transcript = model.transcribe(silence, parse_options({"vad": False, "mode": mode}))
            assert transcript.text == "" and transcript.segments == [], (model.name, mode, transcript.text)


@pytest.mark.parametrize("vad", [True, False])
def test_no_stock_phrases_on_noise_tones_and_music(base_engine: Engine, no_speech: dict[str, Audio], vad: bool) -> None:
    # Greedy, no fallback: noise decoded at every temperature with 5 beams takes minutes, and says no more.
    options = parse_options({"vad": vad, "temperature": 0, "beam_size": 1})
    for name, audio in no_speech.items():
        transcript = base_engine.transcribe(audio, options)
        stock = [s.text for s in transcript.segments if is_stock_phrase(s.text)]
        assert stock == [], (name, stock)


# -- real speech that says a stock phrase keeps it ---------------------------------------------------------------


@pytest.fixture(scope="module")
def goodbye() -> Audio:
    """A real "Goodbye!" (the Asterisk prompt at 429.45 s of long/en_asterisk_prompts_even.opus) with half a
    second of silence either side: text that is nothing but a stock phrase, really spoken."""
    prompts = decode(AUDIO_DIR / "long" / "en_asterisk_prompts_even.opus").samples
    pad = np.zeros(RATE // 2, np.float32)
    return Audio(np.concatenate([pad, prompts[int(429.2 * RATE) : int(430.7 * RATE)], pad]))


@pytest.mark.parametrize("mode", ["batched", "sequential"])
@pytest.mark.parametrize("word_timestamps", [False, True])
def test_a_spoken_goodbye_stays(
    engine: Engine, base_engine: Engine, goodbye: Audio, mode: str, word_timestamps: bool
) -> None:
    for model in (engine, base_engine):
        transcript = model.transcribe(goodbye, parse_options({"mode": mode, "word_timestamps": word_timestamps}))
        assert [s.text.strip(" .!").lower() for s in transcript.segments] == ["goodbye"], (model.name, transcript)
        assert transcript.warnings == []


def test_a_spoken_goodbye_after_a_sentence_stays(engine: Engine, goodbye: Audio) -> None:
    sentence = decode(AUDIO_DIR / "en" / "ljspeech_LJ001-0008.flac").samples  # "has never been surpassed."
    audio = Audio(np.concatenate([sentence, np.zeros(int(2.5 * RATE), np.float32), goodbye.samples]))
    for streamed in (False, True):
        segments = list(engine.stream(audio)) if streamed else engine.transcribe(audio).segments
        texts = [s.text.strip(" .!").lower() for s in segments]
        assert texts == ["has never been surpassed", "goodbye"], (streamed, texts)


# -- English-only models on real Japanese and English speech ----------------------------------------------------

JAPANESE = sorted((AUDIO_DIR / "ja").iterdir())
ENGLISH_HARD = [
    "mfa_crossword.flac", "mfa_whisper.flac", "mfa_whisper2.flac", "mfa_falsetto2.flac", "mfa_uhum.flac",
    "fw_stereo_diarization.wav", "ami_ES2011a_headset0_40s-46s.wav", "reazonspeech_test_en_2.wav", "jfk.flac",
]  # fmt: skip


@pytest.mark.parametrize("path", JAPANESE, ids=lambda p: p.name)
def test_tiny_en_warns_on_japanese(engine: Engine, path: Path) -> None:
    transcript = engine.transcribe(decode(path))
    assert len(transcript.warnings) == 1 and "English-only" in transcript.warnings[0], transcript


@pytest.mark.parametrize("name", ENGLISH_HARD)
def test_tiny_en_does_not_warn_on_english(engine: Engine, name: str) -> None:
    """Whispered, falsetto, disfluent, two-speaker, accented (ReazonSpeech's English) and meeting speech: the
    hardest English clips for tiny.en (their mean log-probability is the lowest of en/), and jfk."""
    transcript = engine.transcribe(decode(AUDIO_DIR / "en" / name))
    assert transcript.warnings == [] and transcript.text, transcript


def test_job_records_carry_the_warning(engine: Engine, tmp_path: Path) -> None:
    """A job on the local endpoint (the real app, the session's tiny.en): the job view and its json result say
    what the CLI says."""
    from starlette.testclient import TestClient

    from koe.api import create_app
    from koe.config import Settings
    from support.jobs_support import wait_for

    settings = Settings(model="tiny.en", data_dir=tmp_path / "data", jobs_enabled=True, poll_s=0.05)
    app = create_app(settings, engine_factory=lambda _: engine)
    clips = {"ja": AUDIO_DIR / "ja" / "reazonspeech_test_ja_1.wav", "en": AUDIO_DIR / "en" / "jfk.flac"}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for lang, path in clips.items():
            files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
            job_id = client.post("/v1/jobs", files=files, data={"format": "json", "id": lang}).json()["id"]
            url = f"/v1/jobs/{job_id}"
            view = wait_for(lambda url=url: (v := client.get(url).json())["status"] == "completed" and v, 120, 0.1)
            result = client.get(f"/v1/jobs/{job_id}/result").json()
            if lang == "ja":
                assert len(view["warnings"]) == 1 and "English-only" in view["warnings"][0]
                assert result["warnings"] == view["warnings"]
            else:
                assert view["warnings"] == [] and "warnings" not in result and "ask not" in result["text"]
