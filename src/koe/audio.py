"""Decode anything FFmpeg reads to 16 kHz mono float32 with PyAV, within size and duration limits.

faster-whisper 1.2.1's own `decode_audio` breaks on PyAV 19, and it has no limits; this module replaces it.
A small file can expand a lot (a WAV at 8 Hz is resampled 2,000-fold), so:

- duration is enforced while decoding, so a tiny file that expands to days of silence is refused early;
- samples go into one buffer that grows by doubling up to the duration limit (no list of chunks concatenated at the
  end, which held the audio twice);
- sample rates outside `MIN_SAMPLE_RATE`..`MAX_SAMPLE_RATE` are refused before decoding;
- a `check` callback runs between frames, so a job's timeout or release stops a long decode;
- the buffer's memory is claimed from an `AudioMemory` budget shared by every request and job of a process:
  past it a synchronous request is refused (`BusyError`, 503) and a job waits.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
import numpy as np
import numpy.typing as npt

from koe.errors import (
    AudioTooLongError,
    BusyError,
    EmptyInputError,
    InputNotFoundError,
    InputTooLargeError,
    NoAudioStreamError,
    UndecodableAudioError,
)

SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE = 1_000
MAX_SAMPLE_RATE = 768_000
FIRST_BUFFER_S = 60.0
"""The decode buffer starts this long and doubles when full (large buffers grow in place: realloc uses mremap)."""
CHECK_EVERY_FRAMES = 64

AudioSource = str | os.PathLike[str] | bytes | BinaryIO


@dataclass(frozen=True)
class AudioLimits:
    """How much input koe accepts. Defaults match `Settings`."""

    max_bytes: int = 1024**3
    max_duration_s: float = 4 * 3600.0


@dataclass(frozen=True)
class Audio:
    """Decoded audio: 16 kHz mono float32 samples in [-1, 1]."""

    samples: npt.NDArray[np.float32]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class AudioMemory:
    """A budget of decoded-audio bytes that every request and job of a process draws from. Thread-safe.

    A claim is always granted while nothing else is held (one input may use the whole budget and more, up to the
    duration limit); otherwise it must fit, or `claim(wait=True)` waits for others to release."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self._cond = threading.Condition()

    def claim(self, *, wait: bool, check: Callable[[], None] | None = None) -> MemoryClaim:
        return MemoryClaim(self, wait=wait, check=check)

    def _take(self, claim: MemoryClaim, nbytes: int) -> None:
        with self._cond:
            while self.used - claim.held > 0 and self.used + nbytes > self.limit:
                if not claim.wait:
                    raise BusyError(
                        f"the server holds {self.used // 2**20} MiB of audio already (KOE_MAX_AUDIO_MEMORY is "
                        f"{self.limit // 2**20} MiB); retry shortly, or submit a job (jobs wait their turn)"
                    )
                self._cond.wait(0.25)
                if claim.check is not None:
                    claim.check()
            self.used += nbytes
            claim.held += nbytes

    def _give_back(self, claim: MemoryClaim) -> None:
        with self._cond:
            self.used -= claim.held
            claim.held = 0
            self._cond.notify_all()


class MemoryClaim:
    """One input's share of an `AudioMemory`: grows with its decode buffer, released once (also as a context)."""

    def __init__(self, memory: AudioMemory, *, wait: bool, check: Callable[[], None] | None) -> None:
        self.memory = memory
        self.wait = wait
        self.check = check
        self.held = 0

    def grow(self, nbytes: int) -> None:
        self.memory._take(self, nbytes)

    def release(self) -> None:
        self.memory._give_back(self)

    def __enter__(self) -> MemoryClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def decode(
    source: AudioSource,
    limits: AudioLimits | None = None,
    *,
    memory: MemoryClaim | None = None,
    check: Callable[[], None] | None = None,
) -> Audio:
    """Decode `source` (a path, bytes or a binary file object) to 16 kHz mono float32.

    `memory` is charged for the decoded samples (the caller releases it once done with the audio); `check` is
    called every few frames and may raise to stop the decode (a timeout, a released job)."""
    limits = limits or AudioLimits()
    stream = _open_source(source, limits)
    try:
        container = av.open(stream, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise UndecodableAudioError(f"cannot decode the input as audio: {_reason(exc)}") from exc
    with container:
        if not container.streams.audio:
            raise NoAudioStreamError("the input has no audio stream")
        _check_sample_rate(container.streams.audio[0].sample_rate)
        max_samples = int(limits.max_duration_s * SAMPLE_RATE)
        # Not sized by the container's declared duration: a tiny file may declare hours.
        first = min(max_samples, int(FIRST_BUFFER_S * SAMPLE_RATE))
        buffer = SampleBuffer(max(first, 1), max_samples, limits.max_duration_s, memory)
        for chunk in _decode_stream(container, limits, check):
            buffer.append(chunk)
        samples = buffer.finish()
    if samples.size == 0:
        raise UndecodableAudioError("the input holds no decodable audio samples")
    return Audio(samples=samples)


def _check_sample_rate(rate: int | None) -> None:
    """Refuse a sample rate outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE (an unknown rate, 0 or None, passes)."""
    if rate and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UndecodableAudioError(
            f"the audio's sample rate is {rate} Hz; koe takes {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )


class SampleBuffer:
    """float32 samples appended in place; capacity doubles (charged to `memory`) up to `max_samples`."""

    def __init__(self, capacity: int, max_samples: int, max_duration_s: float, memory: MemoryClaim | None) -> None:
        self.max_samples = max_samples
        self.max_duration_s = max_duration_s
        self.memory = memory
        self.size = 0
        self._charge(capacity)
        self.data = np.empty(capacity, np.float32)

    def _charge(self, samples: int) -> None:
        if self.memory is not None:
            self.memory.grow(samples * 4)

    def append(self, chunk: npt.NDArray[np.float32]) -> None:
        end = self.size + chunk.size
        if end > self.max_samples:
            raise AudioTooLongError(f"the audio is longer than the limit of {self.max_duration_s:g} seconds")
        if end > self.data.size:
            capacity = min(self.max_samples, max(end, 2 * self.data.size))
            self._charge(capacity - self.data.size)
            self.data.resize(capacity, refcheck=False)  # in place (realloc) where the allocator can
        self.data[self.size : end] = chunk
        self.size = end

    def finish(self) -> npt.NDArray[np.float32]:
        self.data.resize(self.size, refcheck=False)
        return self.data


def _open_source(source: AudioSource, limits: AudioLimits) -> BinaryIO | str:
    if isinstance(source, bytes | bytearray | memoryview):
        _check_size(len(source), limits)
        return io.BytesIO(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise InputNotFoundError(f"no such file: {path}")
        if not path.is_file():
            raise UndecodableAudioError(f"not a regular file: {path}")
        _check_size(path.stat().st_size, limits)
        return str(path)
    return _check_stream_size(source, limits)


def _check_size(size: int, limits: AudioLimits) -> None:
    if size == 0:
        raise EmptyInputError("the input is empty (0 bytes)")
    if size > limits.max_bytes:
        raise InputTooLargeError(f"the input is {size} bytes; the limit is {limits.max_bytes} bytes")


def _check_stream_size(stream: BinaryIO, limits: AudioLimits) -> BinaryIO:
    if stream.seekable():
        start = stream.tell()
        size = stream.seek(0, io.SEEK_END) - start
        stream.seek(start)
        _check_size(size, limits)
        return stream
    # A pipe: read it whole, but never more than the limit allows.
    data = stream.read(limits.max_bytes + 1)
    _check_size(len(data), limits)
    return io.BytesIO(data)


def _decode_stream(
    container: av.container.InputContainer, limits: AudioLimits, check: Callable[[], None] | None = None
) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    decoded_any = False
    error: Exception | None = None
    for count, frame in enumerate(_frames(container)):
        if check is not None and count % CHECK_EVERY_FRAMES == 0:
            check()
        if isinstance(frame, Exception):
            error = error or frame
            continue
        _check_sample_rate(frame.sample_rate)
        decoded_any = True
        for out in resampler.resample(frame):
            yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    if decoded_any:
        for out in resampler.resample(None):
            yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
    elif error is not None:
        raise UndecodableAudioError(f"cannot decode the audio stream: {_reason(error)}")


def _frames(container: av.container.InputContainer) -> Iterator[av.AudioFrame | Exception]:
    """Audio frames; a corrupt packet yields its error instead and decoding goes on (like FFmpeg does)."""
    stream = container.streams.audio[0]
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()  # type: ignore[misc]
            except av.error.FFmpegError as exc:
                yield exc
    except av.error.FFmpegError as exc:  # a truncated container: keep what was decoded
        yield exc


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
