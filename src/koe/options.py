"""TranscribeOptions: the one set of option names used by CLI flags, JSON bodies, form fields and
SageMaker custom attributes.

Custom-attribute syntax (`X-Amzn-SageMaker-Custom-Attributes`, at most 1024 characters):
`key=value` pairs separated by `;` or `,`, e.g. `language=ja;task=transcribe;word_timestamps=true`.
A temperature fallback list uses `|` inside one value: `temperature=0|0.2|0.4`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from koe.errors import OptionsError

# faster_whisper.tokenizer._LANGUAGE_CODES, in its order (tests/fast/test_imports.py asserts they match): importing it
# would load CTranslate2 into every process that reads options, `koe deploy` and the SageMaker handler included.
# fmt: off
LANGUAGES: tuple[str, ...] = (
    "af", "am", "ar", "as", "az", "ba", "be", "bg", "bn", "bo", "br", "bs", "ca", "cs", "cy", "da", "de", "el",
    "en", "es", "et", "eu", "fa", "fi", "fo", "fr", "gl", "gu", "ha", "haw", "he", "hi", "hr", "ht", "hu", "hy",
    "id", "is", "it", "ja", "jw", "ka", "kk", "km", "kn", "ko", "la", "lb", "ln", "lo", "lt", "lv", "mg", "mi",
    "mk", "ml", "mn", "mr", "ms", "mt", "my", "ne", "nl", "nn", "no", "oc", "pa", "pl", "ps", "pt", "ro", "ru",
    "sa", "sd", "si", "sk", "sl", "sn", "so", "sq", "sr", "su", "sv", "sw", "ta", "te", "tg", "th", "tk", "tl",
    "tr", "tt", "uk", "ur", "uz", "vi", "yi", "yo", "zh", "yue",
)
# fmt: on
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
MAX_CUSTOM_ATTRIBUTES = 1024

Mode = Literal["auto", "batched", "sequential"]
Task = Literal["transcribe", "translate"]


class TranscribeOptions(BaseModel):
    """How to transcribe one input. Unknown names and out-of-range values are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    language: str | None = Field(None, description="Language code (e.g. en, ja), or None/auto to detect.")
    task: Task = "transcribe"
    beam_size: int = Field(5, ge=1, le=16)
    temperature: tuple[float, ...] = Field(DEFAULT_TEMPERATURES, min_length=1, max_length=10)
    compression_ratio_threshold: float | None = Field(2.4, gt=0)
    log_prob_threshold: float | None = Field(-1.0, le=0)
    no_speech_threshold: float | None = Field(0.6, ge=0, le=1)
    vad: bool = True
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    vad_min_speech_ms: int = Field(0, ge=0, le=60_000)
    vad_min_silence_ms: int | None = Field(
        None,
        ge=0,
        le=60_000,
        description="Pauses shorter than this stay inside one speech span. None: 160 ms when chunks are batched "
        "(short spans pack 30 s chunks full, as faster-whisper's batched pipeline does), 2000 ms sequentially.",
    )
    timestamps: bool | None = Field(
        None,
        description="Decode timestamp tokens. None: decided by the output format (text and json need none, so "
        "the faster text-only decoding is used; segments then span whole chunks). Word timestamps imply it.",
    )
    vad_speech_pad_ms: int = Field(400, ge=0, le=10_000)
    word_timestamps: bool = False
    initial_prompt: str | None = Field(None, max_length=2000)
    hotwords: str | None = Field(None, max_length=2000)
    batch_size: int | None = Field(None, ge=1, le=256, description="None: the server's setting.")
    mode: Mode = "auto"
    diarize: bool = Field(False, description="Label speakers (who said what); costs CPU time only when on.")
    num_speakers: int | None = Field(None, ge=1, le=32, description="Exact number of speakers (implies diarize).")
    min_speakers: int | None = Field(None, ge=1, le=32, description="Fewest speakers to find (implies diarize).")
    max_speakers: int | None = Field(None, ge=1, le=32, description="Most speakers to find (implies diarize).")

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, value: Any) -> str | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
            return None
        if not isinstance(value, str):
            raise ValueError("must be a language code")
        code = value.strip().lower()
        if code not in LANGUAGES:
            raise ValueError(f"unknown language {value!r}; use a code such as en, ja, de, or auto")
        return code

    @field_validator("temperature", mode="before")
    @classmethod
    def _temperature(cls, value: Any) -> Any:
        if isinstance(value, int | float):
            return (float(value),)
        if isinstance(value, str):
            parts = [p for p in value.replace("|", ",").split(",") if p.strip()]
            return tuple(parts)
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature_range(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0.0 <= t <= 1.0 for t in value):
            raise ValueError("each temperature must be between 0 and 1")
        return value

    @field_validator("initial_prompt", "hotwords")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value or None

    @model_validator(mode="after")
    def _speakers(self) -> TranscribeOptions:
        if self.min_speakers and self.max_speakers and self.min_speakers > self.max_speakers:
            raise ValueError("min_speakers must not be more than max_speakers")
        if self.num_speakers and (self.min_speakers or self.max_speakers):
            raise ValueError("give num_speakers, or min_speakers/max_speakers, not both")
        if not self.diarize and (self.num_speakers or self.min_speakers or self.max_speakers):
            object.__setattr__(self, "diarize", True)  # a speaker count only makes sense with speaker labels
        if self.diarize and not self.word_timestamps:
            # Each word gets a speaker, and segments are split where the speaker changes between words.
            object.__setattr__(self, "word_timestamps", True)
        return self

    def merged(self, **changes: Any) -> TranscribeOptions:
        """A copy with `changes` applied and validated."""
        return parse_options({**self.model_dump(exclude_unset=True), **changes})


def parse_options(values: Mapping[str, Any]) -> TranscribeOptions:
    """Validate `values` (strings are coerced: "true", "5", "0|0.2") into options, or raise OptionsError."""
    try:
        return TranscribeOptions.model_validate(dict(values))
    except ValidationError as exc:
        raise OptionsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One readable line per problem, naming the field: "beam_size: Input should be less than or equal to 16"."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "options"
        message = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        problems.append(f"{field}: {message}")
    return "; ".join(problems)


def parse_custom_attributes(header: str | None) -> dict[str, str]:
    """Split a SageMaker custom-attributes string into `{key: value}` (no validation of the keys)."""
    if not header:
        return {}
    if len(header) > MAX_CUSTOM_ATTRIBUTES:
        raise OptionsError(f"custom attributes are longer than {MAX_CUSTOM_ATTRIBUTES} characters")
    pairs: dict[str, str] = {}
    for item in header.replace(",", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionsError(f"custom attribute {item!r} is not key=value")
        if key in pairs:
            raise OptionsError(f"custom attribute {key!r} is given twice")
        pairs[key] = value.strip()
    return pairs


def format_custom_attributes(options: Mapping[str, Any]) -> str:
    """The inverse of `parse_custom_attributes`, for clients (`koe invoke`)."""

    def text(value: Any) -> str:
        if isinstance(value, list | tuple):
            return "|".join(str(v) for v in value)
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    return ";".join(f"{key}={text(value)}" for key, value in options.items() if value is not None)
