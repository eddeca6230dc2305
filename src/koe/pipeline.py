"""Batched transcription on the shared batcher: what a request does in its own thread (VAD, chunks, log-mel
features, the prompt) and what the scheduler does per batch (encode + generate once, temperature fallback,
segments and word timings).

One request:

    audio ─ VAD (Silero) ─ chunks of speech <= 30 s ─ features ─┐ submitted as they are computed, so
                                                                │ the CPU work overlaps running batches
    [language is None on a multilingual model: the first chunk ─> a `detect` item, batched with others]
                                                                v
    batcher ── WhisperRunner.run(key, chunks of many requests) ── per chunk: segments in speech time
                                                                v
    restore_speech_timestamps (speech time -> file time) ─ faster-whisper Segments, in order

Quality safeguards of the sequential path, kept here: a chunk whose result fails
`compression_ratio_threshold` or `log_prob_threshold` is decoded again at the next temperature of
`options.temperature` (re-queued, so it is batched with other items at that temperature); when every
temperature fails the best attempt is kept (as `WhisperModel.generate_with_fallback` does), and a chunk
judged silent by `no_speech_threshold` yields nothing.
What batching cannot keep: conditioning on the previous chunk's text (chunks are decoded in parallel), as in
faster-whisper's `BatchedInferencePipeline`.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import (
    Word as FwWord,
)
from faster_whisper.transcribe import (
    get_compression_ratio,
    get_suppressed_tokens,
    restore_speech_timestamps,
)
from faster_whisper.vad import VadOptions, get_speech_timestamps

from koe.batcher import Batcher, Requeue, Ticket
from koe.options import TranscribeOptions

SAMPLE_RATE = 16_000
CHUNK_S = 30
VAD_BLOCK_S = 300.0  # long audio: VAD runs on blocks about this long, in parallel, ahead of decoding
PREP_WORKERS = max(1, min(4, os.cpu_count() or 1))  # the preparation pool's threads (VAD, features)
FEATURES_AHEAD = 8  # chunks whose features a request computes ahead of submitting them
MIN_RESUME_S = 1.0  # audio left after the model stopped early that is worth a continuation item
MAX_CONTINUATIONS = 4  # per chunk
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"

Floats = npt.NDArray[np.float32]
Progress = Callable[[float, float], None]


# -- keys and items -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeKey:
    """What items must share to be decoded in one CTranslate2 call. Language, task and prompt text are not
    here: they go in each item's own prompt."""

    kind: Literal["decode", "detect"] = "decode"
    beam_size: int = 5
    best_of: int = 5
    patience: float = 1.0
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    temperature: float = 0.0
    suppress_blank: bool = True
    suppress_tokens: tuple[int, ...] = ()
    prefix_len: int = 0  # tokens before <|startoftranscript|>: CTranslate2 needs the same in a batch
    words: str | None = None  # word timings: "language/task", one tokenizer (word splitting) per batch
    batch_size: int | None = None  # a request's own batch size (None: the batcher's)


DETECT = DecodeKey(kind="detect")


@dataclass(frozen=True)
class RequestSpec:
    """The decode settings one request's chunks share."""

    tokenizer: Tokenizer
    prompt: tuple[int, ...]
    temperatures: tuple[float, ...]
    compression_ratio_threshold: float | None
    log_prob_threshold: float | None
    no_speech_threshold: float | None
    word_timestamps: bool
    base_key: DecodeKey

    def key(self, attempt: int) -> DecodeKey:
        return replace(self.base_key, temperature=self.temperatures[attempt])


@dataclass(frozen=True)
class Attempt:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float


@dataclass
class ChunkJob:
    """One chunk of speech, as submitted to the batcher (the runner records its attempts on it)."""

    features: Floats  # (n_mels, 3000)
    offset: float  # seconds, in speech time (silence removed)
    duration: float
    spec: RequestSpec | None = None  # None for a language-detection item
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class ChunkResult:
    """A decoded chunk: its segments (dicts as faster-whisper builds them, times in speech time)."""

    segments: list[dict[str, Any]]
    attempt: Attempt | None  # None when the chunk was judged silent
    fallbacks: int = 0  # how many temperatures were tried after the first
    resume_at: float | None = None  # the model stopped here (seconds into the chunk): decode the rest again


Languages = list[tuple[str, float]]
Answer = ChunkResult | Languages


# -- the scheduler side: one batch ------------------------------------------------------------------


class WhisperRunner:
    """Runs one batch of chunks on a faster-whisper model: encode once, then detect or generate once."""

    def __init__(self, model: WhisperModel) -> None:
        self.model = model

    def run(self, key: Hashable, payloads: Sequence[ChunkJob]) -> list[Answer | Requeue | BaseException]:
        assert isinstance(key, DecodeKey)
        model = self.model
        encoder_output = model.encode(np.stack([p.features for p in payloads]))
        if key.kind == "detect":
            found = model.model.detect_language(encoder_output)
            return [[(token[2:-2], float(prob)) for token, prob in langs] for langs in found]
        sampling: dict[str, Any] = (
            {
                "beam_size": 1,
                "num_hypotheses": key.best_of,
                "sampling_topk": 0,
                "sampling_temperature": key.temperature,
            }
            if key.temperature > 0
            else {"beam_size": key.beam_size, "patience": key.patience}
        )  # as WhisperModel.generate_with_fallback
        results = model.model.generate(
            encoder_output,
            [list(p.spec.prompt) for p in payloads if p.spec],
            length_penalty=key.length_penalty,
            repetition_penalty=key.repetition_penalty,
            no_repeat_ngram_size=key.no_repeat_ngram_size,
            max_length=model.max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=key.suppress_blank,
            suppress_tokens=list(key.suppress_tokens),
            max_initial_timestamp_index=round(1.0 / model.time_precision),
            **sampling,
        )
        before = [len(p.attempts) for p in payloads]
        try:
            answers: list[Answer | Requeue | BaseException] = []
            for job, result in zip(payloads, results, strict=True):
                try:
                    answers.append(self._judge(key, job, result))
                except Exception as exc:  # one chunk's bad output fails only its request
                    answers.append(exc)
            if key.words is not None:
                self._add_words(payloads, answers, encoder_output)
        except BaseException:
            for job, n in zip(payloads, before, strict=True):  # the items will be run again
                del job.attempts[n:]
            raise
        return answers

    def _judge(self, key: DecodeKey, job: ChunkJob, result: Any) -> ChunkResult | Requeue:
        """Accept this attempt, send the chunk round again at the next temperature, or settle."""
        spec = job.spec
        assert spec is not None
        tokens = list(result.sequences_ids[0])
        seq_len = len(tokens)
        avg_logprob = result.scores[0] * (seq_len**key.length_penalty) / (seq_len + 1)
        text = spec.tokenizer.decode(tokens).strip()
        attempt = Attempt(tokens, avg_logprob, result.no_speech_prob, get_compression_ratio(text), key.temperature)
        job.attempts.append(attempt)
        if needs_fallback(spec, attempt):
            if len(job.attempts) < len(spec.temperatures):
                return Requeue(spec.key(len(job.attempts)))
            attempt = best_attempt(spec, job.attempts)
        if is_silent(spec, attempt):
            return ChunkResult([], None, len(job.attempts) - 1)
        segments, resume_at = self._segments(spec.tokenizer, job, attempt)
        return ChunkResult(segments, attempt, len(job.attempts) - 1, resume_at)

    def _segments(
        self, tokenizer: Tokenizer, job: ChunkJob, attempt: Attempt
    ) -> tuple[list[dict[str, Any]], float | None]:
        """The chunk's segments, and where to resume decoding (seconds into the chunk) when the model
        stopped early, expecting the next window to carry on (the sequential path's seek)."""
        model = self.model
        segment_size = int(math.ceil(job.duration) * model.frames_per_second)
        pieces, seek, single_ending = model._split_segments_by_timestamps(
            tokenizer=tokenizer,
            tokens=attempt.tokens,
            time_offset=job.offset,
            segment_size=segment_size,
            segment_duration=job.duration,
            seek=0,
        )
        resume_at: float | None = seek / model.frames_per_second
        if single_ending or not 0 < resume_at < job.duration - MIN_RESUME_S:  # type: ignore[operator]
            resume_at = None
        tail = attempt.tokens[sum(len(p["tokens"]) for p in pieces) :]
        if resume_at is None and any(t < tokenizer.eot for t in tail):
            # Text after the last closed segment, too close to the chunk's end to decode again: keep it.
            first = tail[0] - tokenizer.timestamp_begin if tail[0] >= tokenizer.timestamp_begin else None
            start = job.offset + first * model.time_precision if first is not None else pieces[-1]["end"]
            pieces.append({"seek": 0, "start": start, "end": job.offset + job.duration, "tokens": tail})
        offset_frames, end = int(job.offset * model.frames_per_second), job.offset + job.duration
        segments = [
            {
                **p,
                "seek": offset_frames,
                "start": min(p["start"], end),
                "end": min(p["end"], end),  # a timestamp past the chunk's audio (into its padding)
                "text": tokenizer.decode(p["tokens"]),
            }
            for p in pieces
        ]
        return segments, resume_at

    def _add_words(self, payloads: Sequence[ChunkJob], answers: list[Any], encoder_output: Any) -> None:
        """Word timings for every settled chunk of the batch, aligned in one call on this batch's encoder
        output (a chunk's encoder output is the same whichever batch computed it)."""
        rows: list[list[dict[str, Any]]] = []
        for answer in answers:
            settled = isinstance(answer, ChunkResult) and answer.segments
            rows.append(answer.segments if settled else [{"seek": 0, "start": 0.0, "end": 0.0, "tokens": []}])
        tokenizer = next(p.spec.tokenizer for p in payloads if p.spec)
        num_frames = [int(math.ceil(p.duration) * self.model.frames_per_second) for p in payloads]
        self.model.add_word_timestamps(
            rows, tokenizer, encoder_output, num_frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
        )


def needs_fallback(spec: RequestSpec, attempt: Attempt) -> bool:
    """The sequential path's rule: too repetitive or too unlikely, unless the chunk is silence."""
    failed = False
    if spec.compression_ratio_threshold is not None and attempt.compression_ratio > spec.compression_ratio_threshold:
        failed = True
    low_logprob = spec.log_prob_threshold is not None and attempt.avg_logprob < spec.log_prob_threshold
    if low_logprob:
        failed = True
    if low_logprob and spec.no_speech_threshold is not None and attempt.no_speech_prob > spec.no_speech_threshold:
        failed = False  # silence: nothing to gain from a higher temperature
    return failed


def best_attempt(spec: RequestSpec, attempts: list[Attempt]) -> Attempt:
    """Every temperature failed: the most likely attempt among those not too repetitive (else among all),
    reported at the last temperature tried, as faster-whisper does."""
    threshold = spec.compression_ratio_threshold
    fine = [a for a in attempts if threshold is not None and a.compression_ratio <= threshold]
    best = max(fine or attempts, key=lambda a: a.avg_logprob)
    return replace(best, temperature=attempts[-1].temperature)


def is_silent(spec: RequestSpec, attempt: Attempt) -> bool:
    if spec.no_speech_threshold is None or attempt.no_speech_prob <= spec.no_speech_threshold:
        return False
    return not (spec.log_prob_threshold is not None and attempt.avg_logprob > spec.log_prob_threshold)


# -- the request side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    samples: Floats
    offset: float  # seconds in speech time
    duration: float
    end: float  # where the chunk ends in the file, seconds (for progress)


class Plan:
    """Cuts a request's audio into chunks of at most 30 s, lazily: speech found by VAD and packed together
    in order (as `faster_whisper.vad.collect_chunks` packs it), or plain 30 s windows without VAD.

    Long audio is cut into blocks of about `VAD_BLOCK_S` at the quietest point near each cut, and VAD runs
    on the blocks in the preparation pool, a few blocks ahead of the chunks being decoded: the first chunks
    reach the batcher before VAD has seen the whole file, and VAD of one file uses several cores.
    """

    def __init__(self, samples: Floats, options: TranscribeOptions) -> None:
        self.samples = samples
        self.vad: VadOptions | None = None
        if options.vad:
            self.vad = VadOptions(
                threshold=options.vad_threshold,
                min_speech_duration_ms=options.vad_min_speech_ms,
                min_silence_duration_ms=options.vad_min_silence_ms,
                speech_pad_ms=options.vad_speech_pad_ms,
                max_speech_duration_s=CHUNK_S,
            )
        # Speech timestamps (samples) found so far, in order: what maps speech time back to file time.
        self.speech: list[dict[str, int]] | None = [] if options.vad else None

    def chunks(self) -> Iterator[Chunk]:
        if self.speech is None:
            yield from self._windows()
            return
        limit = CHUNK_S * SAMPLE_RATE
        packed: list[dict[str, int]] = []
        size = total = 0
        for segment in self._speech():
            length = segment["end"] - segment["start"]
            if packed and size + length > limit:
                yield self._chunk(packed, size, total)
                total += size
                packed, size = [], 0
            self.speech.append(segment)
            packed.append(segment)
            size += length
        if packed:
            yield self._chunk(packed, size, total)

    def _chunk(self, segments: list[dict[str, int]], size: int, before: int) -> Chunk:
        pieces = [self.samples[s["start"] : s["end"]] for s in segments]
        samples = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        return Chunk(samples, before / SAMPLE_RATE, size / SAMPLE_RATE, segments[-1]["end"] / SAMPLE_RATE)

    def _windows(self) -> Iterator[Chunk]:
        step = CHUNK_S * SAMPLE_RATE
        for a in range(0, len(self.samples), step):
            b = min(a + step, len(self.samples))
            yield Chunk(self.samples[a:b], a / SAMPLE_RATE, (b - a) / SAMPLE_RATE, b / SAMPLE_RATE)

    def _speech(self) -> Iterator[dict[str, int]]:
        """Speech timestamps of the whole file, block by block, VAD running a few blocks ahead."""
        cuts = block_cuts(self.samples)
        pool = prep_pool()
        pending: deque[tuple[int, Future[list[dict[str, int]]]]] = deque()
        blocks = itertools.pairwise(cuts)
        while True:
            while len(pending) < PREP_WORKERS and (block := next(blocks, None)) is not None:
                a, b = block
                pending.append((a, pool.submit(get_speech_timestamps, self.samples[a:b], self.vad)))
            if not pending:
                return
            start, found = pending.popleft()
            for segment in found.result():
                yield {"start": segment["start"] + start, "end": segment["end"] + start}


def block_cuts(samples: Floats) -> list[int]:
    """Where to cut long audio for VAD: about every `VAD_BLOCK_S`, at the quietest 50 ms within 5 s."""
    n, block = len(samples), int(VAD_BLOCK_S * SAMPLE_RATE)
    if n <= 2 * block:
        return [0, n]
    cuts = [0]
    frame, reach = SAMPLE_RATE // 20, 5 * SAMPLE_RATE
    while n - cuts[-1] > 2 * block:
        lo = cuts[-1] + block - reach
        window = samples[lo : lo + 2 * reach]
        frames = window[: len(window) // frame * frame].reshape(-1, frame)
        cuts.append(lo + int(np.argmin(np.square(frames).mean(axis=1))) * frame)
    return [*cuts, n]


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def prep_pool() -> ThreadPoolExecutor:
    """The small pool every request's CPU preparation (VAD blocks, log-mel features) shares."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(PREP_WORKERS, thread_name_prefix="koe-prep")
        return _pool


def features(model: WhisperModel, samples: Floats) -> Floats:
    """Log-mel features of one chunk, padded to 30 s: (n_mels, 3000)."""
    out: Floats = pad_or_trim(model.feature_extractor(samples)[..., :-1])
    return out


def request_spec(model: WhisperModel, options: TranscribeOptions, language: str) -> RequestSpec:
    multilingual = bool(model.model.is_multilingual)
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task=options.task, language=language)
    previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    prompt = model.get_prompt(tokenizer, previous, without_timestamps=False, hotwords=options.hotwords)
    temperatures = tuple(options.temperature)
    key = DecodeKey(
        beam_size=options.beam_size,
        temperature=temperatures[0],
        suppress_tokens=tuple(get_suppressed_tokens(tokenizer, [-1]) or ()),
        prefix_len=prompt.index(tokenizer.sot),
        words=f"{tokenizer.language_code}/{options.task}" if options.word_timestamps else None,
        batch_size=options.batch_size,
    )
    return RequestSpec(
        tokenizer=tokenizer,
        prompt=tuple(prompt),
        temperatures=temperatures,
        compression_ratio_threshold=options.compression_ratio_threshold,
        log_prob_threshold=options.log_prob_threshold,
        no_speech_threshold=options.no_speech_threshold,
        word_timestamps=options.word_timestamps,
        base_key=key,
    )


@dataclass
class BatchedResult:
    segments: list[FwSegment]
    language: str
    language_probability: float
    fallbacks: int  # chunks decoded again at a higher temperature


def transcribe_batched(
    model: WhisperModel,
    batcher: Batcher[ChunkJob, Answer],
    samples: Floats,
    options: TranscribeOptions,
    progress: Progress | None = None,
) -> BatchedResult:
    """Transcribe one request's audio through the shared batcher. The calling thread plans the chunks and
    submits them; VAD and features run in the preparation pool a few chunks ahead."""
    duration = len(samples) / SAMPLE_RATE
    plan = Plan(samples, options)
    prepared = _prepared(model, plan.chunks())
    language, probability = options.language, 1.0
    if not model.model.is_multilingual:
        language = "en"
    first = next(prepared, None)
    if first is None:
        return BatchedResult([], language or "en", 1.0 if language else 0.0, 0)
    with batcher.open() as ticket:
        if language is None:
            index = ticket.submit(DETECT, ChunkJob(first[1], 0.0, 0.0))
            found = ticket.wait(index)
            assert isinstance(found, list)
            language, probability = found[0]
        spec = request_spec(model, options, language)
        results = _decode_all(model, ticket, spec, itertools.chain([first], prepared), duration, progress)
    segments = _to_segments(results, spec)
    if plan.speech is not None:
        segments = list(restore_speech_timestamps(segments, plan.speech, SAMPLE_RATE))
    fallbacks = sum(r.fallbacks for r in results)
    return BatchedResult(segments, language, probability, fallbacks)


def _prepared(model: WhisperModel, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, Floats]]:
    """The chunks with their features, computed in the preparation pool a few chunks ahead."""
    pool = prep_pool()
    pending: deque[tuple[Chunk, Future[Floats]]] = deque()
    try:
        for chunk in chunks:
            pending.append((chunk, pool.submit(features, model, chunk.samples)))
            if len(pending) > FEATURES_AHEAD:
                chunk, future = pending.popleft()
                yield chunk, future.result()
        while pending:
            chunk, future = pending.popleft()
            yield chunk, future.result()
    finally:
        for _, future in pending:
            future.cancel()


@dataclass
class _Slot:
    """One chunk of the plan as it is decoded: its first item, then any continuations."""

    chunk: Chunk
    handles: list[int]
    parts: list[ChunkResult] = field(default_factory=list)
    consumed: float = 0.0  # seconds of the chunk before the current item
    done: bool = False


def _decode_all(
    model: WhisperModel,
    ticket: Ticket[ChunkJob, Answer],
    spec: RequestSpec,
    prepared: Iterator[tuple[Chunk, Floats]],
    duration: float,
    progress: Progress | None,
) -> list[ChunkResult]:
    """Submit every chunk as its features are ready (blocking when the queue is full), collect results as
    they come (submitting a continuation where the model stopped early), and report progress as chunks
    finish in order."""
    key = spec.key(0)
    slots: list[_Slot] = []
    reported = 0

    def collect() -> bool:
        """Take every result that has arrived; True if any did."""
        nonlocal reported
        moved = False
        for slot in slots[reported:]:
            while not slot.done:
                answer = ticket.poll(slot.handles[-1])
                if answer is None:
                    break
                assert isinstance(answer, ChunkResult)
                moved = True
                slot.parts.append(answer)
                if answer.resume_at is None or len(slot.parts) > MAX_CONTINUATIONS:
                    slot.done = True
                    continue
                slot.consumed += answer.resume_at
                rest = slot.chunk.samples[int(slot.consumed * SAMPLE_RATE) :]
                job = ChunkJob(features(model, rest), slot.chunk.offset + slot.consumed, len(rest) / SAMPLE_RATE, spec)
                slot.handles.append(ticket.submit(key, job))
        while reported < len(slots) and slots[reported].done:
            if progress:
                progress(min(slots[reported].chunk.end, duration), duration)
            reported += 1
        return moved

    for chunk, feats in prepared:
        slots.append(_Slot(chunk, [ticket.submit(key, ChunkJob(feats, chunk.offset, chunk.duration, spec))]))
        collect()
    while reported < len(slots):
        seen = ticket.delivered
        if not collect():
            ticket.wait_delivered(seen)
    return [part for slot in slots for part in slot.parts]


def _to_segments(results: list[ChunkResult], spec: RequestSpec) -> list[FwSegment]:
    out: list[FwSegment] = []
    for result in results:
        attempt = result.attempt
        if attempt is None:
            continue
        for seg in result.segments:
            if seg["start"] == seg["end"] or not seg["text"].strip():
                continue
            words = None
            if spec.word_timestamps:
                words = [FwWord(w["start"], w["end"], w["word"], w["probability"]) for w in seg.get("words", [])]
            out.append(
                FwSegment(
                    id=len(out) + 1,
                    seek=seg["seek"],
                    start=seg["start"],
                    end=seg["end"],
                    text=seg["text"],
                    tokens=seg["tokens"],
                    avg_logprob=attempt.avg_logprob,
                    compression_ratio=attempt.compression_ratio,
                    no_speech_prob=attempt.no_speech_prob,
                    words=words,
                    temperature=attempt.temperature,
                )
            )
    return out


def make_batcher(model: WhisperModel, batch_size: int, **kwargs: Any) -> Batcher[ChunkJob, Answer]:
    """The batcher for one loaded model."""

    def size_of(key: Hashable) -> int | None:
        return key.batch_size if isinstance(key, DecodeKey) else None

    workers = max(1, int(getattr(model.model, "num_workers", 1) or 1))
    kwargs.setdefault("workers", workers)
    return Batcher(WhisperRunner(model), batch_size=batch_size, batch_size_of=size_of, **kwargs)
