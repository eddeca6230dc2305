"""koe (声, "voice"): a fast speech-to-text endpoint on faster-whisper."""

from koe.audio import Audio, AudioLimits, decode
from koe.config import Settings
from koe.engine import Engine
from koe.errors import (
    AudioTooLongError,
    EmptyInputError,
    EngineError,
    InputError,
    InputTooLargeError,
    KoeError,
    ModelError,
    NoAudioStreamError,
    OptionsError,
    UndecodableAudioError,
    UnknownModelError,
)
from koe.formats import render
from koe.options import TranscribeOptions, parse_options
from koe.transcript import Segment, Transcript, Word

__version__ = "0.1.0"

__all__ = [
    "Audio",
    "AudioLimits",
    "AudioTooLongError",
    "EmptyInputError",
    "Engine",
    "EngineError",
    "InputError",
    "InputTooLargeError",
    "KoeError",
    "ModelError",
    "NoAudioStreamError",
    "OptionsError",
    "Segment",
    "Settings",
    "TranscribeOptions",
    "Transcript",
    "UndecodableAudioError",
    "UnknownModelError",
    "Word",
    "decode",
    "parse_options",
    "render",
]
