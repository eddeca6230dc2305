"""Decoding real speech in every container koe promises, and every kind of bad input with its own error."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from koe.audio import SAMPLE_RATE, AudioLimits, decode
from koe.errors import (
    AudioTooLongError,
    EmptyInputError,
    InputNotFoundError,
    InputTooLargeError,
    NoAudioStreamError,
    UndecodableAudioError,
)
from support.media import encode_audio, video_only, video_with_audio


@pytest.fixture(scope="module")
def jfk_samples(jfk: Path) -> np.ndarray:
    return decode(jfk).samples


def test_decodes_shared_formats_to_16k_mono(manifest: list) -> None:  # type: ignore[type-arg]
    seen = set()
    for clip in manifest:
        suffix = clip.path.suffix
        if suffix in seen or clip.duration > 60:
            continue
        seen.add(suffix)
        audio = decode(clip.path)
        assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
        assert audio.duration == pytest.approx(clip.duration, abs=0.1), clip.path
        assert np.abs(audio.samples).max() > 0.01  # real sound, not zeros
    assert {".wav", ".flac", ".mp3"} <= seen


@pytest.mark.parametrize(
    ("name", "codec", "fmt", "rate", "layout"),
    [
        ("a.m4a", "aac", "mp4", 16_000, "mono"),
        ("a.webm", "libopus", "webm", 48_000, "mono"),
        ("a.ogg", "libopus", "ogg", 48_000, "stereo"),
        ("a.mp3", "libmp3lame", "mp3", 44_100, "stereo"),
        ("a8.wav", "pcm_s16le", "wav", 192_000, "7.1"),  # 8 channels at 192 kHz
    ],
)
def test_decodes_other_containers(
    tmp_path: Path, jfk_samples: np.ndarray, name: str, codec: str, fmt: str, rate: int, layout: str
) -> None:
    source = np.interp(
        np.arange(int(len(jfk_samples) * rate / SAMPLE_RATE)) * SAMPLE_RATE / rate,
        np.arange(len(jfk_samples)),
        jfk_samples,
    ).astype(np.float32)
    path = encode_audio(source, tmp_path / name, codec=codec, rate=rate, layout=layout, fmt=fmt)
    audio = decode(path)
    assert audio.duration == pytest.approx(11.0, abs=0.1)
    # Same speech: the decoded waveform correlates with the original.
    n = min(len(audio.samples), len(jfk_samples)) - 2000
    corr = np.corrcoef(audio.samples[1000:n], jfk_samples[1000:n])[0, 1]
    assert corr > 0.5 or codec in ("libopus", "aac", "libmp3lame")  # lossy codecs shift phase a little


def test_video_with_audio_track(tmp_path: Path, jfk_samples: np.ndarray) -> None:
    audio = decode(video_with_audio(jfk_samples, tmp_path / "talk.mp4"))
    assert audio.duration == pytest.approx(11.0, abs=0.1)


def test_sources_path_bytes_and_file_objects(jfk: Path) -> None:
    data = jfk.read_bytes()
    by_path, by_bytes, by_file = decode(jfk), decode(data), decode(io.BytesIO(data))
    assert len(by_path.samples) == len(by_bytes.samples) == len(by_file.samples)


class _Pipe(io.RawIOBase):
    """A non-seekable stream, like a socket or stdin."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_stream(jfk: Path) -> None:
    assert decode(io.BufferedReader(_Pipe(jfk.read_bytes()))).duration == pytest.approx(11.0, abs=0.1)  # type: ignore[arg-type]


def _png() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + b"\x00" * 17 + b"IEND\xaeB`\x82"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", EmptyInputError),
        (bytes(range(256)) * 40, UndecodableAudioError),
        (_png(), NoAudioStreamError),  # FFmpeg reads it as an image: a container without audio
        (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", UndecodableAudioError),
        (b"PK\x03\x04" + b"\x00" * 100, UndecodableAudioError),
        (b"\x00" * 4096, UndecodableAudioError),
    ],
    ids=["empty", "random", "png", "pdf", "zip", "zeros"],
)
def test_bad_bytes_have_specific_errors(payload: bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        decode(payload)
    assert str(info.value)


@pytest.mark.parametrize("name", ["jfk.flac", "librivox_shakespeare_sonnet_1.mp3", "azure_whatstheweatherlike.wav"])
def test_truncated_files_decode_what_is_there_or_fail_clearly(name: str) -> None:
    from conftest import AUDIO_DIR

    data = (AUDIO_DIR / "en" / name).read_bytes()
    for cut in (64, len(data) // 2):
        try:
            audio = decode(data[:cut])
        except UndecodableAudioError as exc:
            assert "decode" in str(exc)
        else:
            assert 0 < audio.duration < 60


def test_corrupted_middle_still_decodes(jfk: Path) -> None:
    data = bytearray(jfk.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(2000, len(data) - 2000, 50):
        data[pos] ^= 0xFF
    audio = decode(bytes(data))
    assert audio.duration > 5


def test_wav_header_claiming_huge_length_decodes_real_content(jfk_samples: np.ndarray) -> None:
    pcm = (jfk_samples[:SAMPLE_RATE] * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFF0) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    data = b"data" + struct.pack("<I", 0xFFFFFFE0) + pcm
    audio = decode(header + fmt + data)
    assert audio.duration == pytest.approx(1.0, abs=0.05)


def test_video_without_audio(tmp_path: Path) -> None:
    with pytest.raises(NoAudioStreamError):
        decode(video_only(tmp_path / "silent.mp4"))


def test_missing_file() -> None:
    with pytest.raises(InputNotFoundError):
        decode("/nonexistent/koe/audio.wav")


def test_too_large_refused_before_decoding(jfk: Path) -> None:
    limits = AudioLimits(max_bytes=1000)
    for source in (jfk, jfk.read_bytes(), io.BytesIO(jfk.read_bytes())):
        with pytest.raises(InputTooLargeError, match="limit is 1000 bytes"):
            decode(source, limits)  # type: ignore[arg-type]


def test_small_file_expanding_to_long_silence_is_refused_early(tmp_path: Path) -> None:
    # 20 minutes of silence is a few kilobytes of FLAC; with a 60 s limit decoding must stop near 60 s.
    path = encode_audio(np.zeros(SAMPLE_RATE * 1200, np.float32), tmp_path / "quiet.flac", codec="flac")
    assert path.stat().st_size < 2_000_000
    started = time.perf_counter()
    with pytest.raises(AudioTooLongError, match="60 seconds"):
        decode(path, AudioLimits(max_duration_s=60))
    full = time.perf_counter()
    decode(path)
    # Refusing at 60 s must cost a fraction of decoding all 1200 s.
    assert (full - started) < (time.perf_counter() - full)
