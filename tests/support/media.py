"""Make test media with PyAV: other containers/codecs, video with and without audio, odd channel layouts."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_audio(
    samples: np.ndarray, path: Path, *, codec: str, rate: int = 16_000, layout: str = "mono", fmt: str | None = None
) -> Path:
    """Write float32 mono `samples` (at `rate`) to `path` with `codec`, repeated across `layout`'s channels."""
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)  # type: ignore[call-overload]
        channels = stream.codec_context.layout.nb_channels
        frame_size = stream.codec_context.frame_size or 1024
        sample_fmt = stream.codec_context.format.name
        pts = 0
        for start in range(0, len(samples), frame_size):
            block = samples[start : start + frame_size]
            data = np.tile(block, (channels, 1)).astype(np.float32)
            frame = _frame(data, sample_fmt, layout, rate)
            frame.pts = pts
            pts += block.shape[0]
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _frame(planar: np.ndarray, sample_fmt: str, layout: str, rate: int) -> av.AudioFrame:
    if sample_fmt.startswith("s16"):
        ints = (np.clip(planar, -1, 1) * 32767).astype(np.int16)
        data = ints if sample_fmt.endswith("p") else ints.T.reshape(1, -1)
    elif sample_fmt.startswith("s32"):
        ints = (np.clip(planar.astype(np.float64), -1, 1) * 2147483647).astype(np.int32)
        data = ints if sample_fmt.endswith("p") else ints.T.reshape(1, -1)
    else:
        data = planar if sample_fmt.endswith("p") else planar.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=sample_fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def video_only(path: Path, seconds: int = 2) -> Path:
    """An mp4 with a video track and no audio track."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * 10):
            img = np.full((48, 64, 3), i * 10 % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def video_with_audio(samples: np.ndarray, path: Path) -> Path:
    """An mp4 with an mpeg4 video track and an AAC audio track."""
    rate = 16_000
    with av.open(str(path), "w") as out:
        video = out.add_stream("mpeg4", rate=5)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")  # type: ignore[call-overload]
        seconds = int(np.ceil(len(samples) / rate))
        for i in range(seconds * 5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            out.mux(video.encode(frame))
        size = audio.codec_context.frame_size or 1024
        for start in range(0, len(samples), size):
            block = samples[start : start + size][None, :].astype(np.float32)
            frame = _frame(block, audio.codec_context.format.name, "mono", rate)
            frame.pts = start
            out.mux(audio.encode(frame))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    return path
