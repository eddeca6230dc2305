"""The engine on real speech: accuracy against references, modes, progress, options it must refuse."""

from __future__ import annotations

import itertools
from pathlib import Path

import jiwer
import pytest

from conftest import Clip
from koe.audio import decode
from koe.engine import Engine
from koe.errors import OptionsError
from koe.options import parse_options
from koe.scoring import cer, normalize_en, normalize_ja, wer

# Clean read speech with exact references (the manifest's approximate and two-speaker items are left out).
EN_SET = ("jfk", "azure_", "librivox_sense", "ljspeech_LJ001-000", "ls_")

# Thresholds: measured corpus error rates on this set (see README "Accuracy"), with headroom for CPU
# numeric differences; a regression in decoding or audio handling moves them far past these.
EN_WER_MAX = 0.06  # tiny.en on 22 clips (172 s): measured 0.031 sequential, 0.040 batched
JA_CER_MAX = 0.30  # base (multilingual) on the 6 ja/ clips: measured 0.218


def _en_clips(manifest: list[Clip]) -> list[Clip]:
    return [c for c in manifest if c.path.parent.name == "en" and c.path.name.startswith(EN_SET)
            and not c.approximate]  # fmt: skip


def _corpus_wer(engine: Engine, clips: list[Clip], mode: str) -> float:
    refs, hyps = [], []
    for clip in clips:
        transcript = engine.transcribe(decode(clip.path), parse_options({"mode": mode}))
        refs.append(normalize_en(clip.reference))
        hyps.append(normalize_en(transcript.text))
    return float(jiwer.wer(refs, hyps))


def test_english_wer_sequential(engine: Engine, manifest: list[Clip]) -> None:
    clips = _en_clips(manifest)
    assert len(clips) >= 15
    assert _corpus_wer(engine, clips, "sequential") <= EN_WER_MAX


def test_english_wer_batched(engine: Engine, manifest: list[Clip]) -> None:
    assert _corpus_wer(engine, _en_clips(manifest), "batched") <= EN_WER_MAX


def test_japanese_cer_with_base(base_engine: Engine, manifest: list[Clip]) -> None:
    clips = [c for c in manifest if c.path.parent.name == "ja" and not c.approximate]
    assert clips
    refs, hyps = [], []
    for clip in clips:
        transcript = base_engine.transcribe(decode(clip.path), parse_options({"language": "ja"}))
        assert transcript.language == "ja"
        refs.append(normalize_ja(clip.reference))
        hyps.append(normalize_ja(transcript.text))
    assert float(jiwer.cer(refs, hyps)) <= JA_CER_MAX


def test_language_detection(base_engine: Engine, manifest: list[Clip]) -> None:
    ja = next(c for c in manifest if c.path.name == "common_voice_ja_24511055.mp3")
    transcript = base_engine.transcribe(decode(ja.path))
    assert transcript.language == "ja" and transcript.language_probability > 0.5
    assert cer(ja.reference, transcript.text) < 0.6


def test_modes_agree_and_segments_are_well_formed(engine: Engine, jfk: Path) -> None:
    audio = decode(jfk)
    texts = {}
    for mode in ("sequential", "batched"):
        t = engine.transcribe(audio, parse_options({"mode": mode, "word_timestamps": True}))
        assert "ask not what your country can do for you" in t.text.lower()
        assert t.language == "en" and t.duration == pytest.approx(11.0, abs=0.01)
        ends = [s.end for s in t.segments]
        assert all(0 <= s.start < s.end <= 11.01 for s in t.segments) and ends == sorted(ends)
        words = t.words
        assert words and all(a.start <= b.start for a, b in itertools.pairwise(words))
        texts[mode] = t.text
    assert wer(texts["sequential"], texts["batched"]) <= 0.1


def test_progress_reports_audio_seconds(engine: Engine, manifest: list[Clip]) -> None:
    sonnet = next(c for c in manifest if c.path.name == "librivox_shakespeare_sonnet_2.mp3")
    audio = decode(sonnet.path)
    calls: list[tuple[float, float]] = []
    engine.transcribe(audio, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) >= 3
    assert all(total == audio.duration for _, total in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == audio.duration


def test_without_vad_and_silence(engine: Engine, jfk: Path) -> None:
    import numpy as np

    from koe.audio import Audio

    t = engine.transcribe(decode(jfk), parse_options({"vad": False, "mode": "batched"}))
    assert "ask not" in t.text.lower()
    silent = engine.transcribe(Audio(np.zeros(16_000 * 5, np.float32)))
    assert silent.text == "" and silent.segments == []


def test_english_only_model_refuses_other_languages(engine: Engine, jfk: Path) -> None:
    with pytest.raises(OptionsError, match="English-only"):
        engine.transcribe(decode(jfk), parse_options({"language": "ja"}))
    with pytest.raises(OptionsError, match="cannot translate"):
        engine.transcribe(decode(jfk), parse_options({"task": "translate"}))


def test_concurrent_calls_share_one_engine(engine: Engine, jfk: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    audio = decode(jfk)
    with ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda mode: engine.transcribe(audio, parse_options({"mode": mode})).text,
                              ["sequential", "batched"] * 2))  # fmt: skip
    assert all("ask not what your country" in t.lower() for t in texts)


def test_stream_yields_segments_as_they_finish(engine: Engine, manifest: list[Clip]) -> None:
    import time

    sonnet = next(c for c in manifest if c.path.name == "librivox_shakespeare_sonnet_3.mp3")
    audio = decode(sonnet.path)
    started = time.perf_counter()
    arrivals = []
    segments = []
    for segment in engine.stream(audio):
        arrivals.append(time.perf_counter() - started)
        segments.append(segment)
    assert len(segments) >= 3 and [s.id for s in segments] == list(range(len(segments)))
    assert arrivals[0] < 0.7 * arrivals[-1]  # the first segment came long before the last
    assert wer(sonnet.reference, " ".join(s.text for s in segments)) < 0.4
