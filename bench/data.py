"""The benchmark's audio: the long file of S1 (with its reference) and the short clips of S2/S3, all from
../shared/audio (or $KOE_BENCH_AUDIO), decoded once with koe's decoder."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from koe.audio import SAMPLE_RATE, decode

ROOT = Path(__file__).resolve().parents[1]
AUDIO_DIR = Path(os.environ.get("KOE_BENCH_AUDIO", ROOT.parent / "shared" / "audio"))
LONG_FILES = ("long/en_read_speech_concat.opus", "long/en_asterisk_prompts_even.opus")

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Clip:
    name: str
    samples: Floats
    reference: str | None  # None: no exact reference (the manifest marks it approximate)
    path: Path | None = None  # the original file (what S2's clients upload)

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def long_audio(max_s: float | None) -> Clip:
    """S1's long file: the two long English files joined (22 min), or the first `max_s` seconds of it, cut
    at an utterance boundary so that the reference covers exactly the audio kept."""
    samples, refs = [], []
    offset = 0.0
    for name in LONG_FILES:
        path = AUDIO_DIR / name
        audio = decode(path).samples
        for row in _segments(path.with_suffix(".segments.tsv")):
            end = offset + float(row["end_s"])
            if max_s is not None and end > max_s:
                break
            refs.append((end, spoken(row["text"])))
        samples.append(audio)
        offset += len(audio) / SAMPLE_RATE
        if max_s is not None and offset >= max_s:
            break
    joined = np.concatenate(samples)
    if max_s is not None:
        # just after the last whole utterance (no reference when even the first one is longer than max_s)
        cut = refs[-1][0] + 0.25 if refs else max_s
        joined = joined[: int(cut * SAMPLE_RATE)]
    label = "+".join(Path(n).stem for n in LONG_FILES[: len(samples)])
    reference = " ".join(text for _, text in refs) or None
    return Clip(f"{label}[0:{len(joined) / SAMPLE_RATE:.0f}s]", joined, reference)


def _segments(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def short_clips(limit: int | None, max_s: float = 30.0) -> list[Clip]:
    """English clips of 1-30 s from en/ (the anchor bench's S2 set), in name order; `limit` spreads the
    subset over the whole list so that it keeps a mix of speakers and lengths."""
    rows = []
    with (AUDIO_DIR / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["file"].startswith("en/") and 1.0 < float(row["duration_s"] or 0) <= max_s:
                rows.append(row)
    rows.sort(key=lambda r: r["file"])
    if limit is not None and limit < len(rows):
        step = len(rows) / limit
        rows = [rows[int(i * step)] for i in range(limit)]
    clips = []
    for row in rows:
        text = row["transcript_file_or_text"]
        if text.endswith(".txt") and (AUDIO_DIR / text).is_file():
            text = (AUDIO_DIR / text).read_text(encoding="utf-8")
        exact = "approximate" not in text.lower() and "LEFT:" not in text
        path = AUDIO_DIR / row["file"]
        clips.append(Clip(path.name, decode(path).samples, spoken(text) if exact else None, path))
    return clips


def spoken(reference: str) -> str:
    """A reference as it was read: LJ Speech puts spoken asides in parentheses, and the Whisper normalizer
    (`normalize_en`) drops text in parentheses or brackets as non-speech, which scored e.g. LJ001-0024 at 217%
    WER for every configuration."""
    return reference.translate(str.maketrans("()[]", "    "))


def warmup_clip() -> Clip:
    path = AUDIO_DIR / "en" / "jfk.flac"
    return Clip(path.name, decode(path).samples, None, path)


def upload(clip: Clip) -> bytes:
    """What an S2 client sends: the original file's bytes."""
    assert clip.path is not None
    return clip.path.read_bytes()
