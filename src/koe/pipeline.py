"""One request's batched transcription on the shared batcher: plan the chunks, submit them as their features
are ready, resume where the model stopped early, and turn the results into koe Segments in file time.

    audio ─ Plan (VAD, chunks <= 30 s) ─ features (prep pool) ─┐ submitted as they are computed, so
                                                               │ the CPU work overlaps running batches
    [no language given on a multilingual model: the first chunk detects it in its own encoder pass; the
     request's other chunks wait for that answer and go out in the language found]
                                                               v
    batcher ── WhisperRunner.run(key, chunks of many requests) ── per chunk: segments in speech time
       ^                                                       │
       └── continuation (the rest of a chunk the model ended early), at the front of the queue
                                                               v
    speech time -> file time ─ koe Segments, in order

What batching cannot keep: conditioning on the previous chunk's text (chunks are decoded in parallel), as in
faster-whisper's `BatchedInferencePipeline`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from faster_whisper import WhisperModel
from faster_whisper.vad import SpeechTimestampsMap

from koe.batcher import Batcher, Ticket
from koe.chunking import SAMPLE_RATE, Chunk, Floats, Plan, features, prepared, vad_options
from koe.options import TranscribeOptions
from koe.runner import ChunkJob, ChunkResult, DecodeKey, RequestSpec, WhisperRunner, request_spec
from koe.transcript import Segment, Word

MAX_CONTINUATIONS = 4  # per chunk

Progress = Callable[[float, float], None]


@dataclass
class BatchedResult:
    segments: list[Segment]
    language: str
    language_probability: float
    fallbacks: int  # chunks decoded again at a higher temperature
    continuations: int = 0  # chunk tails decoded again because the model stopped early


def wants_timestamps(options: TranscribeOptions) -> bool:
    """Timestamp tokens are decoded unless the request says it needs none (word timings always need them)."""
    return options.word_timestamps or options.timestamps is not False


def transcribe_batched(
    model: WhisperModel,
    batcher: Batcher[ChunkJob, ChunkResult],
    samples: Floats,
    options: TranscribeOptions,
    progress: Progress | None = None,
    **bench: Any,
) -> BatchedResult:
    """Transcribe one request's audio through the shared batcher. The calling thread plans the chunks and
    submits them; VAD and features run in the preparation pool a few chunks ahead. `bench` passes the
    benchmark's fixed-length decoding settings to `request_spec`."""
    plan = Plan(samples, vad_options(options))
    language = options.language if model.model.is_multilingual else "en"
    chunks = prepared(model, plan.chunks())
    first = next(chunks, None)
    if first is None:
        return BatchedResult([], language or "en", 1.0 if language else 0.0, 0)
    spec = request_spec(model, options, language or "en", timestamps=wants_timestamps(options), **bench)
    with batcher.open() as ticket:
        ticket.expect(plan.expected_chunks())
        request = _Request(model, ticket, spec, plan.duration, progress)
        request.run(first, chunks, detect=language is None)
    results = [part for slot in request.slots for part in slot.parts]
    found = next((r.language for r in results if r.language), None)
    code, probability = found or (language or "en", 1.0)
    segments = to_segments(results, plan.time_map())
    fallbacks = sum(r.fallbacks for r in results)
    return BatchedResult(segments, code, probability, fallbacks, len(results) - len(request.slots))


@dataclass
class _Slot:
    """One chunk of the plan as it is decoded: its first item, then any continuations."""

    chunk: Chunk
    handles: list[int]
    parts: list[ChunkResult] = field(default_factory=list)
    consumed: float = 0.0  # seconds of the chunk before the current item
    done: bool = False


class _Request:
    """The decode loop of one request: submit every chunk as its features are ready (blocking while the
    queue is full), collect results as they come (submitting a continuation where the model stopped early),
    and report progress as chunks finish in order."""

    def __init__(
        self,
        model: WhisperModel,
        ticket: Ticket[ChunkJob, ChunkResult],
        spec: RequestSpec,
        duration: float,
        progress: Progress | None,
    ) -> None:
        self.model = model
        self.ticket = ticket
        self.spec = spec
        self.key: Hashable = spec.key(0)
        self.duration = duration
        self.progress = progress
        self.slots: list[_Slot] = []
        self.reported = 0

    def run(self, first: tuple[Chunk, Floats], rest: Iterator[tuple[Chunk, Floats]], detect: bool) -> None:
        self._submit(*first, detect=detect)
        if detect:
            self._language_of_first()
        for chunk, feats in rest:
            self._submit(chunk, feats)
            self._collect()
        self.ticket.expect(0)
        while self.reported < len(self.slots):
            seen = self.ticket.delivered
            if not self._collect():
                self.ticket.wait_delivered(seen)

    def _submit(self, chunk: Chunk, feats: Floats, detect: bool = False) -> None:
        job = ChunkJob(feats, chunk.offset, chunk.duration, self.spec, detect=detect)
        self.slots.append(_Slot(chunk, [self.ticket.submit(self.key, job)]))

    def _language_of_first(self) -> None:
        """Wait for the first chunk (it found the language); later chunks are decoded in that language."""
        answer = self.ticket.wait(self.slots[0].handles[0])
        if answer.spec is not None:
            self.spec = answer.spec
            self.key = self.spec.key(0)
        self._collect()

    def _collect(self) -> bool:
        """Take every result that has arrived; True if any did."""
        moved = False
        for slot in self.slots[self.reported :]:
            while not slot.done:
                answer = self.ticket.poll(slot.handles[-1])
                if answer is None:
                    break
                moved = True
                self._settle(slot, answer)
        while self.reported < len(self.slots) and self.slots[self.reported].done:
            if self.progress:
                self.progress(min(self.slots[self.reported].chunk.end, self.duration), self.duration)
            self.reported += 1
        return moved

    def _settle(self, slot: _Slot, answer: ChunkResult) -> None:
        spec = answer.spec or self.spec
        if answer.redo and len(slot.parts) < MAX_CONTINUATIONS:
            spec = spec.with_timestamps()  # the text lost its tail somewhere alignment cannot say: decode again
        else:
            slot.parts.append(answer)
            if answer.resume_at is None or len(slot.parts) > MAX_CONTINUATIONS:
                slot.done = True
                return
            slot.consumed += answer.resume_at
        rest = slot.chunk.samples[int(slot.consumed * SAMPLE_RATE) :]
        job = ChunkJob(features(self.model, rest), slot.chunk.offset + slot.consumed, len(rest) / SAMPLE_RATE, spec)
        # At the front: the request's result waits for this item more than for any later chunk.
        slot.handles.append(self.ticket.submit(spec.key(0), job, front=True))


def to_segments(results: list[ChunkResult], time_map: SpeechTimestampsMap | None) -> list[Segment]:
    """koe Segments in file time from the chunks' segments in speech time."""
    out: list[Segment] = []
    for result in results:
        attempt = result.attempt
        if attempt is None:
            continue
        for seg in result.segments:
            if seg["start"] >= seg["end"] or not seg["text"].strip():
                continue
            words = [_word(w, time_map) for w in seg["words"]] if "words" in seg else None
            start, end = _file_time(seg["start"], seg["end"], time_map)
            if words:
                start, end = min(start, words[0].start), max(end, words[-1].end)
            out.append(
                Segment(
                    id=len(out),
                    seek=seg["seek"],
                    start=round(start, 3),
                    end=round(end, 3),
                    text=seg["text"],
                    tokens=list(seg["tokens"]),
                    temperature=attempt.temperature,
                    avg_logprob=round(float(attempt.avg_logprob), 4),
                    compression_ratio=round(float(attempt.compression_ratio), 4),
                    no_speech_prob=round(float(attempt.no_speech_prob), 4),
                    words=words,
                )
            )
    return out


def _file_time(start: float, end: float, time_map: SpeechTimestampsMap | None) -> tuple[float, float]:
    if time_map is None:
        return start, end
    return time_map.get_original_time(start), time_map.get_original_time(end, is_end=True)


def _word(word: dict[str, Any], time_map: SpeechTimestampsMap | None) -> Word:
    start, end = float(word["start"]), float(word["end"])
    if time_map is not None:
        # Both ends in the speech span of the word's middle, so a word never straddles a removed silence.
        index = time_map.get_chunk_index((start + end) / 2)
        start, end = time_map.get_original_time(start, index), time_map.get_original_time(end, index)
    return Word(word=word["word"], start=round(start, 3), end=round(end, 3), probability=round(word["probability"], 4))


def make_batcher(model: WhisperModel, batch_size: int, **kwargs: Any) -> Batcher[ChunkJob, ChunkResult]:
    """The batcher for one loaded model: one scheduler thread per replica, plus one, so that the next
    CTranslate2 call is already queued while Python judges the last one's results."""

    def size_of(key: Hashable) -> int | None:
        return key.batch_size if isinstance(key, DecodeKey) else None

    replicas = max(1, int(getattr(model.model, "num_workers", 1) or 1))
    kwargs.setdefault("workers", replicas + 1)
    kwargs.setdefault("replicas", replicas)
    return Batcher(WhisperRunner(model), batch_size=batch_size, batch_size_of=size_of, **kwargs)
