"""Hallucination: what Whisper writes when nobody said it, found after transcription.

Two reviews of a finished transcript, both pure functions over koe Segments:

- `drop_hallucinations`: Whisper trained on subtitles, so on silence, music, noise or speech it cannot
  follow it writes subtitle boilerplate: "Thank you for watching", "ご視聴ありがとうございました",
  "Subtitles by the Amara.org community", or just "you". A segment is dropped only when BOTH hold: its text is
  nothing but such phrases (`is_stock_phrase`), and its own confidence says it was not spoken
  (`unspoken`: no-speech probability, average log-probability, compression ratio, and, where word timings
  are on, faster-whisper's `hallucination_silence_threshold` test of anomalous words next to silence).
  A real "Thank you." said clearly keeps its confidence and stays.
- `language_warning`: an English-only model (tiny.en, base.en, ...) given Japanese writes fluent, made-up
  English. Its own confidence gives it away: see `NOT_ENGLISH_LOGPROB`.

`review(transcript, ...)` applies both; the engine calls it once per transcript, `spoken(...)` filters a stream
of segments the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from koe.transcript import Segment, Transcript, Word, join_text

# -- which texts are Whisper's stock phrases --------------------------------------------------------------

# Normalised (see `normalize`): lower case, NFKC, apostrophes removed, other punctuation as spaces.
STOCK_PHRASES: tuple[str, ...] = (
    # English sign-offs and channel boilerplate (the commonest hallucinations on silence and music)
    "you", "bye", "bye bye", "goodbye", "thanks", "thank you", "thank you very much", "thank you so much",
    "thanks for watching", "thank you for watching", "thank you very much for watching",
    "thank you so much for watching", "thanks for listening", "thank you for listening",
    "please subscribe", "like and subscribe", "please like and subscribe", "subscribe to my channel",
    "please subscribe to my channel", "dont forget to subscribe", "see you next time", "see you in the next video",
    "ill see you next time", "ill see you in the next video", "i will see you next time",
    "i will see you in the next video", "i hope you enjoyed this video", "the end",
    # Japanese: "thank you for watching / listening", "please subscribe to the channel", "thank you"
    "ご視聴ありがとうございました", "ご視聴ありがとうございます", "ご清聴ありがとうございました",
    "最後までご視聴いただきありがとうございました", "最後までご視聴いただきありがとうございます",
    "チャンネル登録お願いします", "チャンネル登録よろしくお願いします", "チャンネル登録をお願いします",
    "ありがとうございました", "ありがとうございます", "おやすみなさい",
)  # fmt: skip

# Words that join repeated stock phrases ("Thank you for watching, and see you next time").
_JOINERS = ("and", "so", "ok", "okay", "oh", "um", "uh")

# Subtitle credits, anywhere in a segment: "Subtitles by the Amara.org community", "字幕: ...", and the
# European credits Whisper learnt from broadcast subtitles.
_CREDITS = re.compile(
    r"\b(?:subtitles?|subtitled|captions?|captioned|captioning|transcri(?:bed|ption|pt)|translat(?:ed|ion)"
    r"|edited|synced|corrections?)\s+by\b|amara\s*org|字幕|sous\s*titr|untertitel|ondertitel|продолжение следует"
)


def normalize(text: str) -> str:
    """Lower case, NFKC, apostrophes dropped ("don't" -> "dont"), every other non-letter/digit a single space."""
    text = unicodedata.normalize("NFKC", text).casefold().replace("'", "").replace("’", "")
    return " ".join("".join(c if c.isalnum() else " " for c in text).split())


def _alternation(items: Iterable[str]) -> str:
    return "|".join(re.escape(item) for item in sorted(items, key=len, reverse=True))


_UNIT = rf"(?:(?:{_alternation(_JOINERS)}) ?)*(?:{_alternation(STOCK_PHRASES)})"
_STOCK = re.compile(rf"{_UNIT}(?: ?{_UNIT})*")


def is_stock_phrase(text: str) -> bool:
    """True when `text` is nothing but Whisper's stock phrases (repeated or joined), a subtitle credit, or no
    words at all ("...", "♪")."""
    norm = normalize(text)
    return not norm or _STOCK.fullmatch(norm) is not None or _CREDITS.search(norm) is not None


# -- whether a segment was spoken ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Past any one of these a segment counts as not spoken (only stock phrases are ever dropped).

    Measured once with tiny.en and base on this repository's audio (README "Hallucinations"):
    - no_speech_prob: " You" on digital silence with VAD off came with 0.69 to 0.95; real speech that is a
      stock phrase ("Goodbye!", long/en_asterisk_prompts_even.opus) with 0.08 to 0.11.
    - avg_logprob: Whisper's own `log_prob_threshold`. That real "Goodbye!" scored -0.49 to -0.81; tiny.en's
      stock phrases on Japanese speech mostly -0.97 to -1.75 (the language warning covers the rest).
    - compression_ratio: Whisper's own limit for repetition loops (faster-whisper's default).
    - silence_s: faster-whisper's `hallucination_silence_threshold`, used where word timings exist: a stock
      phrase with anomalous words next to this much silence is dropped.
    """

    no_speech_prob: float = 0.5
    avg_logprob: float = -1.0
    compression_ratio: float = 2.4
    silence_s: float = 2.0


DEFAULT_THRESHOLDS = Thresholds()

_PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def word_anomaly(word: Word) -> float:
    """faster-whisper's score for a word that looks hallucinated: improbable, or implausibly short or long."""
    duration = word.end - word.start
    score = 1.0 if word.probability < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def anomalous_words(words: Sequence[Word]) -> bool:
    """faster-whisper's `is_segment_anomaly`: the first 8 words (punctuation aside) score as hallucinated."""
    scored = [w for w in words if w.word.strip() not in _PUNCTUATION][:8]
    score = sum(word_anomaly(w) for w in scored)
    return score >= 3 or score + 0.01 >= len(scored)


def unspoken(
    segment: Segment, silence_before: float, silence_after: float, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> bool:
    """The segment's own confidence says nobody said it."""
    if segment.no_speech_prob >= thresholds.no_speech_prob or segment.avg_logprob < thresholds.avg_logprob:
        return True
    if segment.compression_ratio > thresholds.compression_ratio:
        return True
    silent_side = max(silence_before, silence_after) >= thresholds.silence_s
    return bool(segment.words) and silent_side and anomalous_words(segment.words or [])


def is_hallucination(
    segment: Segment,
    silence_before: float = 0.0,
    silence_after: float = 0.0,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> bool:
    return is_stock_phrase(segment.text) and unspoken(segment, silence_before, silence_after, thresholds)


def drop_hallucinations(
    segments: Sequence[Segment], duration: float, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> list[Segment]:
    """`segments` without Whisper's hallucinations, renumbered from 0. `duration` is the audio's, for the
    silence after the last segment."""
    kept: list[Segment] = []
    for index, segment in enumerate(segments):
        before = segment.start - (segments[index - 1].end if index else 0.0)
        after = (segments[index + 1].start if index + 1 < len(segments) else duration) - segment.end
        if not is_hallucination(segment, before, after, thresholds):
            kept.append(segment.model_copy(update={"id": len(kept)}))
    return kept


def spoken(segments: Iterable[Segment], thresholds: Thresholds = DEFAULT_THRESHOLDS) -> Iterator[Segment]:
    """`drop_hallucinations` for a stream: each segment as it comes, renumbered. The silence after a segment
    is unknown there, so only the silence before it counts."""
    previous_end = 0.0
    count = 0
    for segment in segments:
        if not is_hallucination(segment, segment.start - previous_end, 0.0, thresholds):
            yield segment.model_copy(update={"id": count})
            count += 1
        previous_end = segment.end


# -- English-only models on other languages -------------------------------------------------------------------

NOT_ENGLISH_LOGPROB = -0.85
"""An English-only model's mean log-probability (`mean_logprob`) below this: the speech is not English.

Measured once with tiny.en (defaults: batched, VAD, beam 5; `tests/measure_language_warning.py`): every English
clip of en/ (68, with whispered, falsetto, disfluent, accented and two-speaker speech) scored -0.15 to -0.68 (a
first run, weighting by length only: down to -0.79; synthetic English down to -0.73); real Japanese (ja/, 6
clips) -0.95 to -2.98, synthetic Japanese -0.76 to -1.36. Mixed clips, mostly English (mixed/): -0.38, -0.46."""

FALLBACK_LOGPROB = -0.6
"""...or below this when most of the speech needed temperature fallback (`fallback_share`).

Whisper retries a window at higher temperatures while its log-probability is under -1.0; on Japanese speech
tiny.en almost always does, and a random sample then sometimes passes with -0.73 (measured: one of six ja/ clips
in one run of `tests/measure_language_warning.py`). English clips of en/ needed it for 2% of one clip's speech
at most."""

MIN_SPEECH_S = 0.5
"""Less speech than this (seconds, counted as in `mean_logprob`) is too little to judge the language by."""


def _speech_weights(segments: Sequence[Segment]) -> list[float]:
    """Each segment's length times the model's belief that it holds speech, so made-up text over silence
    counts little."""
    return [max(s.end - s.start, 0.01) * (1.0 - s.no_speech_prob) for s in segments]


def mean_logprob(segments: Sequence[Segment]) -> tuple[float, float] | None:
    """(mean log-probability, speech seconds) of `segments`, weighted by `_speech_weights`; None without
    segments."""
    weights = _speech_weights(segments)
    total = sum(weights)
    if not segments or total <= 0:
        return None
    return sum(s.avg_logprob * w for s, w in zip(segments, weights, strict=True)) / total, total


def fallback_share(segments: Sequence[Segment]) -> float:
    """The share of the speech (weighted as in `mean_logprob`) decoded at a temperature above 0: the model's
    greedy text failed Whisper's own quality checks there."""
    weights = _speech_weights(segments)
    total = sum(weights)
    return sum(w for s, w in zip(segments, weights, strict=True) if s.temperature > 0) / total if total > 0 else 0.0


def language_warning(segments: Sequence[Segment], *, model: str, multilingual: bool) -> str | None:
    """A warning when the English-only `model` wrote these segments from speech that is not English.
    Give it the segments before `drop_hallucinations`: what the model made up is the evidence."""
    measured = None if multilingual else mean_logprob(segments)
    if measured is None:
        return None
    score, speech_s = measured
    limit = FALLBACK_LOGPROB if fallback_share(segments) >= 0.5 else NOT_ENGLISH_LOGPROB
    if speech_s < MIN_SPEECH_S or score >= limit:
        return None
    return (
        f"this speech does not sound like English (mean log-probability {score:.2f}), and {model} is an "
        "English-only model: its text is likely made up; use a multilingual model such as base"
    )


# -- both, on a transcript --------------------------------------------------------------------------------------


def review(
    transcript: Transcript, *, model: str, multilingual: bool, thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> Transcript:
    """`transcript` without hallucinated segments, with a warning when an English-only model heard another
    language."""
    warning = language_warning(transcript.segments, model=model, multilingual=multilingual)
    kept = drop_hallucinations(transcript.segments, transcript.duration, thresholds)
    warnings = [*transcript.warnings, warning] if warning else list(transcript.warnings)
    return transcript.model_copy(
        update={"segments": kept, "text": join_text(s.text for s in kept), "warnings": warnings}
    )
