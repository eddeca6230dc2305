"""Decode anything FFmpeg reads to 16 kHz mono float32 with PyAV, within size and duration limits.

faster-whisper 1.2.1's own `decode_audio` breaks on PyAV 19, and it has no limits; this module replaces it.
Duration is enforced while decoding, so a tiny file that expands to days of silence is refused early.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import av.error
import numpy as np
import numpy.typing as npt

from koe.errors import (
    AudioTooLongError,
    EmptyInputError,
    InputNotFoundError,
    InputTooLargeError,
    NoAudioStreamError,
    UndecodableAudioError,
)

SAMPLE_RATE = 16_000

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


def decode(source: AudioSource, limits: AudioLimits | None = None) -> Audio:
    """Decode `source` (a path, bytes or a binary file object) to 16 kHz mono float32."""
    limits = limits or AudioLimits()
    stream = _open_source(source, limits)
    try:
        container = av.open(stream, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise UndecodableAudioError(f"cannot decode the input as audio: {_reason(exc)}") from exc
    with container:
        if not container.streams.audio:
            raise NoAudioStreamError("the input has no audio stream")
        samples = np.concatenate(list(_decode_stream(container, limits)) or [np.zeros(0, np.float32)])
    if samples.size == 0:
        raise UndecodableAudioError("the input holds no decodable audio samples")
    return Audio(samples=samples)


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


def _decode_stream(container: av.container.InputContainer, limits: AudioLimits) -> Iterator[np.ndarray]:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    max_samples = int(limits.max_duration_s * SAMPLE_RATE)
    total = 0
    decoded_any = False
    error: Exception | None = None
    for frame in _frames(container):
        if isinstance(frame, Exception):
            error = error or frame
            continue
        decoded_any = True
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
            total += chunk.size
            if total > max_samples:
                raise AudioTooLongError(f"the audio is longer than the limit of {limits.max_duration_s:g} seconds")
            yield chunk
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
