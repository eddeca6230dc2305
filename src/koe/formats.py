"""Writers for every output format: text, json, verbose_json (OpenAI's shape), srt, vtt, tsv."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Literal, get_args

from faster_whisper.tokenizer import _LANGUAGE_CODES

from koe.errors import NotAcceptableError, OptionsError
from koe.transcript import Transcript

Format = Literal["text", "json", "verbose_json", "srt", "vtt", "tsv"]
FORMATS: tuple[str, ...] = get_args(Format)

CONTENT_TYPES: dict[str, str] = {
    "text": "text/plain; charset=utf-8",
    "json": "application/json",
    "verbose_json": "application/json",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "tsv": "text/tab-separated-values; charset=utf-8",
}

EXTENSIONS: dict[str, str] = {
    "text": "txt",
    "json": "json",
    "verbose_json": "verbose.json",
    "srt": "srt",
    "vtt": "vtt",
    "tsv": "tsv",
}

# Accept media type -> format (SageMaker /invocations). application/json means verbose JSON there.
ACCEPT_FORMATS: dict[str, str] = {
    "text/plain": "text",
    "application/json": "verbose_json",
    "text/vtt": "vtt",
    "application/x-subrip": "srt",
    "text/srt": "srt",
    "text/tab-separated-values": "tsv",
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


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript as text in format `fmt`."""
    return _WRITERS[check_format(fmt)](transcript)


def write_text(t: Transcript) -> str:
    return t.text + "\n"


def write_json(t: Transcript) -> str:
    return json.dumps({"text": t.text}, ensure_ascii=False)


def verbose_dict(t: Transcript) -> dict[str, object]:
    body: dict[str, object] = {
        "task": t.task,
        "language": LANGUAGE_NAMES.get(t.language, t.language),
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [s.model_dump(exclude={"words"}) for s in t.segments],
    }
    words = t.words
    if words:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in words]
    return body


def write_verbose_json(t: Transcript) -> str:
    return json.dumps(verbose_dict(t), ensure_ascii=False)


def timestamp(seconds: float, separator: str = ".") -> str:
    """`HH:MM:SS.mmm` (vtt) or, with separator ",", `HH:MM:SS,mmm` (srt)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{ms:03d}"


def _cues(t: Transcript) -> list[tuple[float, float, str]]:
    cues = []
    for s in t.segments:
        text = s.text.strip()
        if text:
            cues.append((s.start, max(s.end, s.start + 0.001), text.replace("-->", "->")))
    return cues


def write_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{timestamp(start, ',')} --> {timestamp(end, ',')}\n{text}\n"
        for i, (start, end, text) in enumerate(_cues(t), start=1)
    ]
    return "\n".join(blocks)


def write_vtt(t: Transcript) -> str:
    blocks = [f"{timestamp(start)} --> {timestamp(end)}\n{text}\n" for start, end, text in _cues(t)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def write_tsv(t: Transcript) -> str:
    rows = ["start\tend\ttext"]
    rows += [f"{round(start * 1000)}\t{round(end * 1000)}\t{' '.join(text.split())}" for start, end, text in _cues(t)]
    return "\n".join(rows) + "\n"


_WRITERS: dict[str, Callable[[Transcript], str]] = {
    "text": write_text,
    "json": write_json,
    "verbose_json": write_verbose_json,
    "srt": write_srt,
    "vtt": write_vtt,
    "tsv": write_tsv,
}

assert set(_WRITERS) == set(FORMATS) and set(CONTENT_TYPES) == set(FORMATS)
assert set(LANGUAGE_NAMES) <= set(_LANGUAGE_CODES)
