"""Transcript, Segment and Word: what every door returns, in OpenAI's verbose_json vocabulary."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field


class Word(BaseModel):
    word: str
    start: float
    end: float
    probability: float = 1.0
    speaker: str | None = None  # set when diarized ("Speaker 1", ...)


class Segment(BaseModel):
    id: int
    seek: int = 0
    start: float
    end: float
    text: str
    tokens: list[int] = Field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] | None = None
    speaker: str | None = None  # set when diarized ("Speaker 1", ...)


class Transcript(BaseModel):
    text: str
    language: str
    language_probability: float = 1.0
    duration: float
    task: str = "transcribe"
    segments: list[Segment] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list,
        description="What the reader should know about this text, e.g. a language the model "
        "cannot do (koe.hallucination).",
    )

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in (s.words or [])]

    @classmethod
    def from_segments(
        cls, segments: list[Segment], *, language: str, language_probability: float, duration: float, task: str
    ) -> Transcript:
        return cls(
            text=join_text(s.text for s in segments),
            language=language,
            language_probability=language_probability,
            duration=duration,
            task=task,
            segments=segments,
        )


def join_text(parts: Iterable[str]) -> str:
    """Join segment texts: Whisper's segment texts carry their own leading space (none for CJK)."""
    return "".join(parts).strip()
