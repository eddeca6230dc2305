"""Chunk planning: cut one request's audio into chunks of speech of at most 30 s, lazily, and compute their
log-mel features ahead of decoding in a small shared pool.

Speech found by VAD (Silero) is packed in order into chunks (as `faster_whisper.vad.collect_chunks` packs it),
or the audio is cut into plain 30 s windows without VAD. Long audio is cut into blocks at the quietest point
near each cut and VAD runs on the blocks in the preparation pool, a few blocks ahead of the chunks being
decoded. The first block is short (`FIRST_BLOCK_S`), so a long file's first chunk reaches the batcher at once.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.vad import SpeechTimestampsMap, VadOptions, get_speech_timestamps

from koe.options import TranscribeOptions

SAMPLE_RATE = 16_000
CHUNK_S = 30
FIRST_BLOCK_S = 45.0  # the first VAD block: short, so the first chunk is decoded while VAD reads the rest
VAD_BLOCK_S = 300.0  # later VAD blocks
PREP_WORKERS = max(1, min(8, os.cpu_count() or 1))  # the preparation pool's threads (VAD, features)
FEATURES_AHEAD = 8  # chunks whose features a request computes ahead of submitting them
BATCHED_MIN_SILENCE_MS = 160  # short speech spans pack chunks full (faster-whisper's batched default)

Floats = npt.NDArray[np.float32]
SpeechSpan = dict[str, int]  # {"start": sample, "end": sample}


@dataclass(frozen=True)
class Chunk:
    """Up to 30 s of speech. `offset` is in speech time (silence removed); `end` is where it ends in the
    file (for progress)."""

    samples: Floats
    offset: float
    duration: float
    end: float


def vad_options(options: TranscribeOptions) -> VadOptions | None:
    """The request's VAD settings (None: no VAD), built once per request."""
    if not options.vad:
        return None
    return VadOptions(
        threshold=options.vad_threshold,
        min_speech_duration_ms=options.vad_min_speech_ms,
        min_silence_duration_ms=(
            BATCHED_MIN_SILENCE_MS if options.vad_min_silence_ms is None else options.vad_min_silence_ms
        ),
        speech_pad_ms=options.vad_speech_pad_ms,
        max_speech_duration_s=CHUNK_S,
    )


class Plan:
    """The chunks of one request's audio, produced lazily (`chunks()`), and the map from speech time back
    to file time once they are all produced (`time_map()`)."""

    def __init__(self, samples: Floats, vad: VadOptions | None) -> None:
        self.samples = samples
        self.vad = vad
        self.speech: list[SpeechSpan] | None = [] if vad is not None else None

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def expected_chunks(self) -> int:
        """An upper estimate of how many chunks this audio makes (known before VAD has finished)."""
        return max(1, math.ceil(self.duration / CHUNK_S))

    def chunks(self) -> Iterator[Chunk]:
        if self.speech is None:
            yield from self._windows()
            return
        limit = CHUNK_S * SAMPLE_RATE
        packed: list[SpeechSpan] = []
        size = total = 0
        for span in self._speech():
            length = span["end"] - span["start"]
            if packed and size + length > limit:
                yield self._chunk(packed, size, total)
                total += size
                packed, size = [], 0
            self.speech.append(span)
            packed.append(span)
            size += length
        if packed:
            yield self._chunk(packed, size, total)

    def time_map(self) -> SpeechTimestampsMap | None:
        """Speech time -> file time (None without VAD: the two are the same)."""
        if not self.speech:
            return None
        return SpeechTimestampsMap(self.speech, SAMPLE_RATE, time_precision=3)

    def _chunk(self, spans: list[SpeechSpan], size: int, before: int) -> Chunk:
        pieces = [self.samples[s["start"] : s["end"]] for s in spans]
        samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return Chunk(samples, before / SAMPLE_RATE, size / SAMPLE_RATE, spans[-1]["end"] / SAMPLE_RATE)

    def _windows(self) -> Iterator[Chunk]:
        step = CHUNK_S * SAMPLE_RATE
        for a in range(0, len(self.samples), step):
            b = min(a + step, len(self.samples))
            yield Chunk(self.samples[a:b], a / SAMPLE_RATE, (b - a) / SAMPLE_RATE, b / SAMPLE_RATE)

    def _speech(self) -> Iterator[SpeechSpan]:
        """Speech spans of the whole file, block by block, VAD running a few blocks ahead."""
        pool = prep_pool()
        pending: deque[tuple[int, Future[list[SpeechSpan]]]] = deque()
        blocks = itertools.pairwise(block_cuts(self.samples))
        try:
            while True:
                while len(pending) < PREP_WORKERS and (block := next(blocks, None)) is not None:
                    a, b = block
                    pending.append((a, pool.submit(get_speech_timestamps, self.samples[a:b], self.vad)))
                if not pending:
                    return
                start, found = pending.popleft()
                for span in found.result():
                    yield {"start": span["start"] + start, "end": span["end"] + start}
        finally:
            for _, future in pending:
                future.cancel()


def block_cuts(samples: Floats) -> list[int]:
    """Where to cut long audio for VAD: after `FIRST_BLOCK_S`, then about every `VAD_BLOCK_S`, each at the
    quietest 50 ms within 5 s of the mark (a cut inside a word would split it between two chunks)."""
    n = len(samples)
    first, block = int(FIRST_BLOCK_S * SAMPLE_RATE), int(VAD_BLOCK_S * SAMPLE_RATE)
    if n <= first + block:
        return [0, n]
    cuts = [0, _quietest_near(samples, first)]
    while n - cuts[-1] > 2 * block:
        cuts.append(_quietest_near(samples, cuts[-1] + block))
    return [*cuts, n]


def _quietest_near(samples: Floats, mark: int) -> int:
    frame, reach = SAMPLE_RATE // 20, 5 * SAMPLE_RATE
    lo = max(0, mark - reach)
    window = samples[lo : mark + reach]
    frames = window[: len(window) // frame * frame].reshape(-1, frame)
    return lo + int(np.argmin(np.square(frames).mean(axis=1))) * frame


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def prep_pool() -> ThreadPoolExecutor:
    """The pool every request's CPU preparation (VAD blocks, log-mel features) shares, one thread per core
    (up to 8): on a GPU host this work, not the GPU, bounds small models."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PREP_WORKERS, thread_name_prefix="koe-prep")
        return _pool


def features(model: WhisperModel, samples: Floats) -> Floats:
    """Log-mel features of one chunk, padded to 30 s: (n_mels, 3000)."""
    out: Floats = pad_or_trim(model.feature_extractor(samples)[..., :-1])
    return out


def prepared(model: WhisperModel, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, Floats]]:
    """The chunks with their features, computed in the preparation pool a few chunks ahead."""
    pool = prep_pool()
    pending: deque[tuple[Chunk, Future[Floats]]] = deque()
    started = False
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(features, model, chunk.samples)))
            # The first chunk goes out at once (so decoding starts), later ones as soon as their features are
            # ready; the look-ahead only bounds how many wait.
            while pending and (not started or len(pending) > FEATURES_AHEAD or pending[0][1].done()):
                started = True
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    finally:
        for _, future in pending:
            future.cancel()
