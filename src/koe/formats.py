"""Writers for every output format: text, json, verbose_json (OpenAI's shape), srt, vtt, tsv, rttm.

A diarized transcript (segments carrying a `speaker`) is written the way transcript and subtitle users expect:
"Speaker 1: ..." turns in text and SRT, WebVTT voice spans `<v Speaker 1>`, a speaker column in TSV, speaker
fields in verbose_json, and RTTM (the NIST diarization scoring format) lines per speaker turn."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Literal, get_args

from koe.errors import NotAcceptableError, OptionsError
from koe.options import LANGUAGES, TranscribeOptions
from koe.transcript import Transcript, Word, join_text

Format = Literal["text", "json", "verbose_json", "srt", "vtt", "tsv", "rttm"]
FORMATS: tuple[str, ...] = get_args(Format)
TIMELESS: frozenset[str] = frozenset({"text", "json"})  # formats that show no timestamps


def fit_options(options: TranscribeOptions, formats: Iterable[str]) -> TranscribeOptions:
    """The options for output in `formats`: timestamp tokens are decoded only when a format shows times
    (text and json don't), unless the request decided it (`timestamps`, word timings, speaker labels)."""
    if options.timestamps is not None or options.word_timestamps or options.diarize:
        return options
    return options.model_copy(update={"timestamps": any(f not in TIMELESS for f in formats)})


CONTENT_TYPES: dict[str, str] = {
    "text": "text/plain; charset=utf-8",
    "json": "application/json",
    "verbose_json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
    "rttm": "text/x-rttm; charset=utf-8",
}

EXTENSIONS: dict[str, str] = {
    "text": "txt",
    "json": "json",
    "verbose_json": "verbose.json",
    "srt": "srt",
    "vtt": "vtt",
    "tsv": "tsv",
    "rttm": "rttm",
}

# Accept media type -> format (SageMaker /invocations). application/json means verbose JSON there.
ACCEPT_FORMATS: dict[str, str] = {
    "text/plain": "text",
    "application/json": "verbose_json",
    "text/vtt": "vtt",
    "application/x-subrip": "srt",
    "text/srt": "srt",
    "text/tab-separated-values": "tsv",
    "text/x-rttm": "rttm",
}

# OpenAI's verbose_json names languages in full ("english"); faster-whisper knows the codes only.
LANGUAGE_NAMES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian", "ko": "korean",
    "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish", "pl": "polish", "ca": "catalan",
    "nl": "dutch", "ar": "arabic", "sv": "swedish", "it": "italian", "id": "indonesian", "hi": "hindi",
    "fi": "finnish", "vi": "vietnamese", "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay",
    "cs": "czech", "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian", "la": "latin",
}  # fmt: skip


def check_format(name: str) -> Format:
    if name not in FORMATS:
        raise OptionsError(f"response format {name!r} is not one of: {', '.join(FORMATS)}")
    return name  # type: ignore[return-value]


def format_for_accept(accept: str | None) -> Format:
    """Pick the format from an Accept header: the first listed type koe can write; */* or none -> JSON."""
    if not accept:
        return "verbose_json"
    for item in accept.split(","):
        media = item.split(";")[0].strip().lower()
        if media in ("*/*", "application/*", ""):
            return "verbose_json"
        if media == "text/*":
            return "text"
        if media in ACCEPT_FORMATS:
            return ACCEPT_FORMATS[media]  # type: ignore[return-value]
    raise NotAcceptableError(f"cannot produce {accept!r}; accepted: {', '.join(ACCEPT_FORMATS)}")


def render(transcript: Transcript, fmt: str, *, name: str = "audio") -> str:
    """The transcript as text in format `fmt`; `name` is the file id of RTTM lines."""
    if check_format(fmt) == "rttm":
        return write_rttm(transcript, name)
    return _WRITERS[fmt](transcript)


def diarized(t: Transcript) -> bool:
    return any(s.speaker for s in t.segments)


def write_text(t: Transcript) -> str:
    if diarized(t):
        return "".join(f"{speaker}: {text}\n" for speaker, text in _turns(t))
    return t.text + "\n"


def _turns(t: Transcript) -> list[tuple[str, str]]:
    """(speaker, text) of each run of consecutive segments by one speaker."""
    turns: list[tuple[str, list[str]]] = []
    for s in t.segments:
        speaker = s.speaker or "Unknown"
        if turns and turns[-1][0] == speaker:
            turns[-1][1].append(s.text)
        else:
            turns.append((speaker, [s.text]))
    return [(speaker, join_text(texts)) for speaker, texts in turns if join_text(texts)]


def write_json(t: Transcript) -> str:
    body: dict[str, object] = {"text": t.text}
    if t.warnings:  # only when there are some: OpenAI's json format is {"text": ...}
        body["warnings"] = t.warnings
    return json.dumps(body, ensure_ascii=False)


def verbose_dict(t: Transcript) -> dict[str, object]:
    body: dict[str, object] = {
        "task": t.task,
        "language": LANGUAGE_NAMES.get(t.language, t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [s.model_dump(exclude={"words"}, exclude_none=True) for s in t.segments],
    }
    if t.warnings:
        body["warnings"] = t.warnings
    words = t.words
    if words:
        body["words"] = [_word(w) for w in words]
    if diarized(t):
        body["speakers"] = speakers(t)
    return body


def _word(w: Word) -> dict[str, object]:
    item: dict[str, object] = {"word": w.word, "start": w.start, "end": w.end}
    if w.speaker is not None:
        item["speaker"] = w.speaker
    return item


def speakers(t: Transcript) -> list[str]:
    """The speakers of a diarized transcript, in order of first appearance."""
    return list(dict.fromkeys(s.speaker for s in t.segments if s.speaker))


def write_verbose_json(t: Transcript) -> str:
    return json.dumps(verbose_dict(t), ensure_ascii=False)


def timestamp(seconds: float, separator: str = ".") -> str:
    """`HH:MM:SS.mmm` (vtt) or, with separator ",", `HH:MM:SS,mmm` (srt)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _cues(t: Transcript) -> list[tuple[float, float, str, str | None]]:
    cues = []
    for s in t.segments:
        text = s.text.strip()
        if text:
            cues.append((s.start, max(s.end, s.start + 0.001), text.replace("-->", "->"), s.speaker))
    return cues


def write_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{f'{speaker}: ' if speaker else ''}{text}\n"
        for i, (start, end, text, speaker) in enumerate(_cues(t), start=1)
    ]
    return "\n".join(blocks)


def write_vtt(t: Transcript) -> str:
    blocks = [
        f"{timestamp(start)} --> {timestamp(end)}\n{_voice(text, speaker)}\n" for start, end, text, speaker in _cues(t)
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _voice(text: str, speaker: str | None) -> str:
    """A cue's text, in a WebVTT voice span when the speaker is known (cue text escapes &, < and >)."""
    if speaker is None:
        return text
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<v {speaker.replace('>', '')}>{escaped}</v>"


def write_tsv(t: Transcript) -> str:
    if diarized(t):
        rows = ["start\tend\tspeaker\ttext"]
        rows += [
            f"{round(start * 1000)}\t{round(end * 1000)}\t{speaker or ''}\t{' '.join(text.split())}"
            for start, end, text, speaker in _cues(t)
        ]
        return "\n".join(rows) + "\n"
    rows = ["start\tend\ttext"]
    rows += [
        f"{round(start * 1000)}\t{round(end * 1000)}\t{' '.join(text.split())}" for start, end, text, _ in _cues(t)
    ]
    return "\n".join(rows) + "\n"


def write_rttm(t: Transcript, name: str = "audio") -> str:
    """One `SPEAKER` line per speaker turn (runs of words by one speaker when there are words, else of
    segments). RTTM fields are space-separated, so spaces in names become underscores."""
    if not diarized(t):
        raise OptionsError("format rttm: the transcript has no speaker labels; ask for diarize=true")
    file_id = "_".join(name.split()) or "audio"
    lines = []
    for start, end, speaker in _speaker_runs(t):
        label = "_".join(speaker.split())
        lines.append(f"SPEAKER {file_id} 1 {start:.3f} {max(end - start, 0.001):.3f} <NA> <NA> {label} <NA> <NA>")
    return "\n".join(lines) + "\n"


def _speaker_runs(t: Transcript) -> list[tuple[float, float, str]]:
    items = [(w.start, w.end, w.speaker or s.speaker) for s in t.segments for w in (s.words or [])] or [
        (s.start, s.end, s.speaker) for s in t.segments
    ]
    runs: list[tuple[float, float, str]] = []
    for start, end, speaker in items:
        if speaker is None:
            continue
        if runs and runs[-1][2] == speaker and start - runs[-1][1] < 1.0:
            runs[-1] = (runs[-1][0], max(runs[-1][1], end), speaker)
        else:
            runs.append((start, end, speaker))
    return runs


_WRITERS: dict[str, Callable[[Transcript], str]] = {
    "text": write_text,
    "json": write_json,
    "verbose_json": write_verbose_json,
    "srt": write_srt,
    "vtt": write_vtt,
    "tsv": write_tsv,
    "rttm": write_rttm,
}

assert set(_WRITERS) == set(FORMATS) and set(CONTENT_TYPES) == set(FORMATS)
assert set(LANGUAGE_NAMES) <= set(LANGUAGES)
