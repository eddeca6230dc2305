"""koe (声, "voice"): a fast speech-to-text endpoint on faster-whisper.

The names below are imported on first use, so that `import koe.handler` or `koe deploy` pay for neither
CTranslate2 nor the HTTP server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from koe.audio import Audio, AudioLimits, decode
    from koe.client import Client
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

_MODULES = {
    "Audio": "koe.audio",
    "AudioLimits": "koe.audio",
    "decode": "koe.audio",
    "Client": "koe.client",
    "Settings": "koe.config",
    "Engine": "koe.engine",
    "render": "koe.formats",
    "TranscribeOptions": "koe.options",
    "parse_options": "koe.options",
    "Segment": "koe.transcript",
    "Transcript": "koe.transcript",
    "Word": "koe.transcript",
    **{
        name: "koe.errors"
        for name in (
            "AudioTooLongError",
            "EmptyInputError",
            "EngineError",
            "InputError",
            "InputTooLargeError",
            "KoeError",
            "ModelError",
            "NoAudioStreamError",
            "OptionsError",
            "UndecodableAudioError",
            "UnknownModelError",
        )
    },
}

__all__ = [
    "Audio",
    "AudioLimits",
    "AudioTooLongError",
    "Client",
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


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module 'koe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
