"""Stand-ins for the fast tier: an engine without a model, and an in-memory object store.

Nothing here replaces a real test: every route keeps its end-to-end test on the real model and a real server
(tests/test_*.py). These let the routes' own logic (parsing, limits, errors, formats, model names) be tested in
process in milliseconds.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, cast

from koe.audio import Audio
from koe.engine import Engine, Placement
from koe.errors import InputError, InputTooLargeError
from koe.options import TranscribeOptions
from koe.storage import Location
from koe.transcript import Segment, Transcript, Word

SEGMENT_S = 5.0


class FakeEngine:
    """Duck-types `koe.engine.Engine` for the routes: `check` is the real rule (English-only models refuse other
    languages and translation); `transcribe` returns one segment per 5 s of the decoded audio, whose text names
    its span, so a test sees that the real decoder ran and which options arrived."""

    def __init__(self, name: str = "tiny.en", *, multilingual: bool = False) -> None:
        self.name = name
        self.multilingual = multilingual
        self.placement = Placement("cpu", "int8")
        self.batch_size = 16
        self.failed: str | None = None
        self.calls: list[TranscribeOptions] = []
        self._lock = threading.Lock()

    def as_engine(self) -> Engine:
        """This fake, typed as what the app's engine factory returns."""
        return cast(Engine, self)

    def check(self, options: TranscribeOptions) -> None:
        Engine.check(self.as_engine(), options)

    def transcribe(self, audio: Audio, options: TranscribeOptions | None = None, progress: object = None) -> Transcript:
        options = options or TranscribeOptions()
        self.check(options)
        with self._lock:
            self.calls.append(options)
        count = max(1, math.ceil(audio.duration / SEGMENT_S))
        segments = [self._segment(i, audio.duration, options) for i in range(count)]
        return Transcript.from_segments(
            segments,
            language=options.language or "en",
            language_probability=1.0,
            duration=audio.duration,
            task=options.task,
        )

    def stream(self, audio: Audio, options: TranscribeOptions | None = None) -> Iterator[Segment]:
        yield from self.transcribe(audio, options).segments

    def close(self) -> None:
        pass

    @staticmethod
    def _segment(index: int, duration: float, options: TranscribeOptions) -> Segment:
        start, end = index * SEGMENT_S, min(duration, (index + 1) * SEGMENT_S)
        text = f" part {index + 1} from {start:.1f} to {end:.1f}"
        words = None
        if options.word_timestamps:
            parts = text.split()
            step = (end - start) / len(parts)
            words = [
                Word(word=f" {w}", start=start + i * step, end=start + (i + 1) * step) for i, w in enumerate(parts)
            ]
        return Segment(id=index, start=start, end=end, text=text, words=words)


class MemoryStore:
    """The S3 store's interface (`koe.storage.S3Store`: check, open, read_bytes, write, exists, delete) over a
    dict: for `ObjectStore(files, s3=MemoryStore())` in tests that need s3:// locations without a server."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.content_types: dict[str, str | None] = {}

    def check(self, location: Location) -> None:
        if not location.bucket:
            raise InputError(f"{location}: no bucket")

    @contextmanager
    def open(self, location: Location, max_bytes: int) -> Iterator[BinaryIO]:
        data = self.read_bytes(location)
        if len(data) > max_bytes:
            raise InputTooLargeError(f"{location} is {len(data)} bytes; the limit is {max_bytes} bytes")
        yield io.BytesIO(data)

    def read_bytes(self, location: Location) -> bytes:
        try:
            return self.objects[str(location)]
        except KeyError:
            raise InputError(f"{location} does not exist") from None

    def write(self, location: Location, data: bytes, content_type: str | None = None) -> None:
        self.objects[str(location)] = bytes(data)
        self.content_types[str(location)] = content_type

    def exists(self, location: Location) -> bool:
        return str(location) in self.objects

    def delete(self, location: Location) -> None:
        self.objects.pop(str(location), None)
