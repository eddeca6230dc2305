"""Speaker diarization: who spoke when, and the speaker of every segment and word of a transcript.

    speech regions (Silero VAD, finer than transcription's)  ->  1.6 s windows every 0.8 s inside them
    ->  GE2E embeddings (speaker_encoder)  ->  agglomerative clustering (scipy, average linkage, cosine)
    ->  each 10 ms of speech takes the label of the nearest window centre  ->  turns "Speaker 1", ...

The number of speakers is `num_speakers` when given; otherwise the clustering stops merging at a cosine
distance threshold (measured on real speech, see DISTANCE_THRESHOLD), clamped to [min_speakers,
max_speakers]. Labels are numbered in order of first appearance.

`start()` runs diarization in a background thread (numpy, on the CPU) so it overlaps the model's work;
its `label()` waits for it and writes the speakers into the transcript.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps
from scipy.cluster.hierarchy import fcluster, linkage
from threadpoolctl import threadpool_limits

from koe.options import TranscribeOptions
from koe.speaker_encoder import (
    HOP,
    PARTIAL_FRAMES,
    SAMPLE_RATE,
    Array,
    SpeakerEncoder,
    mel_frames,
    normalize_volume,
    shared_encoder,
)
from koe.transcript import Segment, Transcript, Word

MAX_SPEAKERS = 32
WINDOW_STEP = 80  # frames (0.8 s) between window starts: half a window
MIN_WINDOW = 50  # frames: speech regions shorter than 0.5 s get no window of their own
BATCH = 64  # windows per LSTM pass
MAX_REGION_S = 30
MAX_CLUSTERED = 3000  # windows clustered pairwise (40 minutes of speech); the rest join the nearest cluster
MIN_RUN_S = 0.6  # a speaker run of words shorter than this inside a segment is taken as boundary noise
DISTANCE_THRESHOLD = 0.42
"""Average-linkage cosine distance above which two clusters are different speakers. On 1.6 s windows of the
test mixes (tests/test_diarize.py) windows of one reader were within 0.25-0.35 of each other's clusters and
different readers 0.45-0.65 apart; see the closing note of issue 16 for the sweep."""

_VAD = VadOptions(threshold=0.5, min_speech_duration_ms=250, min_silence_duration_ms=300, speech_pad_ms=100)
_FRAME_S = HOP / SAMPLE_RATE


@dataclass(frozen=True)
class Turn:
    """One stretch of speech by one speaker (seconds)."""

    start: float
    end: float
    speaker: str


def speaker_name(index: int) -> str:
    return f"Speaker {index + 1}"


# Who spoke when ------------------------------------------------------------------------------------------


def diarize(
    samples: Array,
    *,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    encoder: SpeakerEncoder | None = None,
) -> list[Turn]:
    """Speaker turns of 16 kHz mono `samples`, in time order."""
    encoder = encoder or shared_encoder()
    regions = speech_regions(samples)
    windows, mels = _windows(samples, regions)
    if not windows:
        return [Turn(start / SAMPLE_RATE, end / SAMPLE_RATE, speaker_name(0)) for start, end in regions]
    embeddings = _embed(encoder, mels)
    labels = cluster(embeddings, num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers)
    return _turns(regions, windows, labels)


def speech_regions(samples: Array) -> list[tuple[int, int]]:
    """(start, end) sample offsets of speech, cut at pauses of 0.3 s (turn changes are often that short), and
    into pieces of at most MAX_REGION_S (so the spectrogram of one region stays small)."""
    regions = []
    for r in get_speech_timestamps(samples, _VAD):
        start, end = int(r["start"]), int(r["end"])
        pieces = max(1, -(-(end - start) // (MAX_REGION_S * SAMPLE_RATE)))
        bounds = np.linspace(start, end, pieces + 1).astype(int)
        regions += [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    return regions


@dataclass(frozen=True)
class _Window:
    region: int
    start: int  # frame offsets in the whole audio
    end: int


def _windows(samples: Array, regions: list[tuple[int, int]]) -> tuple[list[_Window], list[Array]]:
    """Windows of up to 1.6 s over each speech region (the last one aligned to the region's end), with their
    mel frames."""
    windows: list[_Window] = []
    mels: list[Array] = []
    for index, (start, end) in enumerate(regions):
        frames = mel_frames(normalize_volume(samples[start:end]))
        count = len(frames)
        if count < MIN_WINDOW:
            continue
        length = min(PARTIAL_FRAMES, count)
        offsets = list(range(0, count - length + 1, WINDOW_STEP))
        if offsets[-1] != count - length:
            offsets.append(count - length)
        first = start // HOP
        for offset in offsets:
            windows.append(_Window(index, first + offset, first + offset + length))
            mels.append(frames[offset : offset + length])
    return windows, mels


_POOL_SIZE = max(1, min(8, (os.cpu_count() or 2) // 2))
_embed_pool = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="koe-embed")
_blas_once = threading.Lock()
_blas_limited = False


def _embed(encoder: SpeakerEncoder, mels: list[Array]) -> Array:
    """Embeddings of every window: equal-length windows go through the LSTM in batches, spread over a few
    threads (numpy releases the GIL in its kernels)."""
    _one_blas_thread()
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(mels):
        groups.setdefault(len(m), []).append(i)
    jobs = []
    for indices in groups.values():
        for k in range(0, len(indices), BATCH):
            batch = indices[k : k + BATCH]
            jobs.append((batch, _embed_pool.submit(encoder.embed, np.stack([mels[i] for i in batch]))))
    out = np.zeros((len(mels), encoder.linear_w.shape[1]), np.float32)
    for batch, future in jobs:
        out[batch] = future.result()
    return out


def _one_blas_thread() -> None:
    """The LSTM's matrix products are small: one BLAS thread each is 2-4x less CPU time than OpenBLAS's
    thread team (measured on the 2-core machine), and leaves the other cores to the model. Set once for the
    process (koe does no other BLAS work)."""
    global _blas_limited
    with _blas_once:
        if not _blas_limited:
            threadpool_limits(limits=1, user_api="blas")
            _blas_limited = True


def cluster(
    embeddings: Array,
    *,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
) -> list[int]:
    """A speaker index per embedding (0-based, numbered by first appearance)."""
    n = len(embeddings)
    if n <= 1 or num_speakers == 1:
        return [0] * n
    if n > MAX_CLUSTERED:  # pairwise distances grow as n^2: cluster an even sample, then place every window
        sample = np.linspace(0, n - 1, MAX_CLUSTERED).astype(int)
        labels = cluster(
            embeddings[sample], num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
        )
        centroids = np.stack([embeddings[sample][np.array(labels) == k].mean(axis=0) for k in range(max(labels) + 1)])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        nearest = (embeddings @ centroids.T).argmax(axis=1)
        order: dict[int, int] = {}
        return [order.setdefault(int(k), len(order)) for k in nearest]
    tree = linkage(embeddings.astype(np.float64), method="average", metric="cosine")
    if num_speakers is not None:
        count = num_speakers
    else:
        count = len(set(fcluster(tree, t=DISTANCE_THRESHOLD, criterion="distance")))
        count = max(min_speakers or 1, min(count, max_speakers or MAX_SPEAKERS))
    raw = fcluster(tree, t=min(count, n), criterion="maxclust")
    first: dict[int, int] = {}
    return [first.setdefault(int(label), len(first)) for label in raw]


def _turns(regions: list[tuple[int, int]], windows: list[_Window], labels: list[int]) -> list[Turn]:
    """Each 10 ms frame of speech takes the label of the nearest window centre (in its own region when it has
    windows, else overall); runs of one label are turns."""
    centres = np.array([(w.start + w.end) / 2 for w in windows])
    label_of = np.array(labels)
    region_of = np.array([w.region for w in windows])
    turns: list[Turn] = []
    for index, (start, end) in enumerate(regions):
        frames = np.arange(start // HOP, max(start // HOP + 1, end // HOP)) + 0.5
        own = region_of == index
        pool_centres, pool_labels = (centres[own], label_of[own]) if own.any() else (centres, label_of)
        nearest = np.abs(frames[:, None] - pool_centres[None, :]).argmin(axis=1)
        frame_labels = pool_labels[nearest]
        cuts = np.flatnonzero(np.diff(frame_labels)) + 1
        bounds = [0, *cuts.tolist(), len(frame_labels)]
        for a, b in itertools.pairwise(bounds):
            t0 = start / SAMPLE_RATE if a == 0 else (frames[a] - 0.5) * _FRAME_S
            t1 = end / SAMPLE_RATE if b == len(frame_labels) else (frames[b] - 0.5) * _FRAME_S
            turns.append(Turn(round(t0, 3), round(t1, 3), speaker_name(int(frame_labels[a]))))
    return _renumbered(turns)


def _renumbered(turns: list[Turn]) -> list[Turn]:
    """Speaker names in order of first appearance in time, merging touching turns of one speaker."""
    names: dict[str, str] = {}
    out: list[Turn] = []
    for turn in sorted(turns, key=lambda t: t.start):
        name = names.setdefault(turn.speaker, speaker_name(len(names)))
        if out and out[-1].speaker == name and turn.start - out[-1].end < 1e-6:
            out[-1] = Turn(out[-1].start, turn.end, name)
        else:
            out.append(Turn(turn.start, turn.end, name))
    return out


# Who said what -------------------------------------------------------------------------------------------


def speaker_at(turns: Sequence[Turn], start: float, end: float) -> str | None:
    """The speaker who talks most within [start, end]; if nobody does, the one whose turn is nearest."""
    if not turns:
        return None
    talk: dict[str, float] = {}
    for turn in turns:
        overlap = min(end, turn.end) - max(start, turn.start)
        if overlap > 0:
            talk[turn.speaker] = talk.get(turn.speaker, 0.0) + overlap
    if talk:
        return max(talk, key=lambda s: talk[s])
    middle = (start + end) / 2
    return min(turns, key=lambda t: max(t.start - middle, middle - t.end)).speaker


def assign_speakers(transcript: Transcript, turns: Sequence[Turn]) -> Transcript:
    """The transcript with a speaker on every segment and word. A word's speaker is the one who talks most
    while it is said; a segment whose words change speaker is split there (Whisper's segments follow
    sentences and pauses, not turns), so each segment has one speaker. Without words a segment takes the
    speaker who talks most during it."""
    segments: list[Segment] = []
    for segment in transcript.segments:
        for piece in _split(segment, turns):
            segments.append(piece.model_copy(update={"id": len(segments)}))
    return transcript.model_copy(update={"segments": segments})


def _split(segment: Segment, turns: Sequence[Turn]) -> list[Segment]:
    if not segment.words:
        return [segment.model_copy(update={"speaker": speaker_at(turns, segment.start, segment.end)})]
    words = [w.model_copy(update={"speaker": speaker_at(turns, w.start, w.end)}) for w in segment.words]
    runs = _steady(words)
    if len(runs) == 1:
        return [segment.model_copy(update={"speaker": runs[0][0].speaker, "words": runs[0]})]
    pieces: list[Segment] = []
    for run in runs:
        pieces.append(
            segment.model_copy(
                update={
                    "start": run[0].start if pieces else segment.start,
                    "end": run[-1].end if len(pieces) < len(runs) - 1 else segment.end,
                    "text": "".join(w.word for w in run),
                    "tokens": [],  # the token ids cannot be cut at word boundaries
                    "speaker": run[0].speaker,
                    "words": run,
                }
            )
        )
    return pieces


def _steady(words: list[Word]) -> list[list[Word]]:
    """Runs of words by one speaker. The shortest run under MIN_RUN_S joins its longer neighbour, until none is
    left (a word at a turn boundary often overlaps the other speaker's turn by a few frames)."""
    runs = _joined([[w] for w in words])
    while len(runs) > 1:
        spans = [run[-1].end - run[0].start for run in runs]
        k = min(range(len(runs)), key=lambda i: spans[i])
        if spans[k] >= MIN_RUN_S:
            break
        later = k == 0 or (k + 1 < len(runs) and spans[k + 1] > spans[k - 1])
        target = k + 1 if later else k - 1
        speaker = runs[target][0].speaker
        runs[k] = [w.model_copy(update={"speaker": speaker}) for w in runs[k]]
        runs = _joined(runs)
    return runs


def _joined(runs: list[list[Word]]) -> list[list[Word]]:
    out: list[list[Word]] = []
    for run in runs:
        if out and out[-1][0].speaker == run[0].speaker:
            out[-1] = out[-1] + run
        else:
            out.append(run)
    return out


# Running beside the model --------------------------------------------------------------------------------

_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="koe-diarize")


class Diarization:
    """Diarization of one request, running in a background thread (see `start`)."""

    def __init__(self, future: Future[list[Turn]]) -> None:
        self.future = future

    def turns(self) -> list[Turn]:
        return self.future.result()

    def label(self, transcript: Transcript) -> Transcript:
        """Wait for the speaker turns and put them into `transcript`."""
        return assign_speakers(transcript, self.turns())


def start(samples: Array, options: TranscribeOptions) -> Diarization:
    """Diarize `samples` in a background thread, with the speaker counts of `options`. The encoder is loaded
    here, first, so missing weights fail the request before the model starts."""
    encoder = shared_encoder()
    future = _pool.submit(
        diarize,
        samples,
        num_speakers=options.num_speakers,
        min_speakers=options.min_speakers,
        max_speakers=options.max_speakers,
        encoder=encoder,
    )
    return Diarization(future)
