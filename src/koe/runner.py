"""The scheduler side of batched transcription: what one batch of chunks (from any number of requests) costs
the model, and how each chunk's output is judged.

One batch: encode once -> detect the language of the items that ask (same encoder pass) -> generate once with
one prompt per item -> per item: accept, fall back to the next temperature (`Requeue`), or settle as silent ->
segments (with timestamps, or one per chunk text-only) -> where the model stopped early, the point to resume
from -> word timings for the whole batch in one call.

The quality safeguards of the sequential path are kept: a chunk whose result fails
`compression_ratio_threshold` or `log_prob_threshold` is decoded again at the next temperature (re-queued, so
it is batched with other items at that temperature); when every temperature fails the best attempt is kept
(as `WhisperModel.generate_with_fallback` does), and a chunk judged silent by `no_speech_threshold` yields
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

from koe.batcher import Requeue
from koe.options import TranscribeOptions

MIN_RESUME_S = 1.0  # audio left after the model stopped early that is worth decoding again
SILENT_TAIL_S = 3.0  # a "nothing after this" ending is doubted only when this much chunk is left
TEXT_RATE = 2.0  # tokens per second of speech below which a text-only chunk is checked for a lost tail
STRETCHED_WORD_S = 3.0  # an aligned word this long (and 6x the median) means the alignment cannot be trusted
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"

Floats = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DecodeKey:
    """What items must share to be decoded in one CTranslate2 call. Language, task and prompt text are not
    here: they go in each item's own prompt."""

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
    timestamps: bool = True
    words: str | None = None  # word timings: "language/task", one tokenizer (word splitting) per batch
    batch_size: int | None = None  # a request's own batch size (None: the batcher's; never above it)
    max_new_tokens: int | None = None  # benchmark only: fixed-length decoding of random-weight models
    suppress_eot: bool = False  # benchmark only: never stop early, so every item decodes max_new_tokens


@dataclass(frozen=True)
class RequestSpec:
    """The decode settings one request's chunks share (for one language)."""

    tokenizer: Tokenizer
    task: str
    prompt: tuple[int, ...]
    temperatures: tuple[float, ...]
    compression_ratio_threshold: float | None
    log_prob_threshold: float | None
    no_speech_threshold: float | None
    base_key: DecodeKey

    @property
    def timestamps(self) -> bool:
        return self.base_key.timestamps

    @property
    def word_timestamps(self) -> bool:
        return self.base_key.words is not None

    def key(self, attempt: int) -> DecodeKey:
        return replace(self.base_key, temperature=self.temperatures[attempt])

    def with_timestamps(self) -> RequestSpec:
        """The same settings decoding timestamp tokens (a text-only chunk whose lost tail cannot be located)."""
        if self.timestamps:
            return self
        prompt = self.prompt[:-1] if self.prompt[-1] == self.tokenizer.no_timestamps else self.prompt
        return replace(self, prompt=prompt, base_key=replace(self.base_key, timestamps=True))

    def with_language(self, code: str) -> RequestSpec:
        """The same settings for a language found by detection: its token swapped into the prompt."""
        tokenizer = Tokenizer(self.tokenizer.tokenizer, True, task=self.task, language=code)
        prompt = list(self.prompt)
        prompt[self.base_key.prefix_len + 1] = tokenizer.language
        words = self.base_key.words
        key = replace(self.base_key, words=f"{code}/{self.task}" if words is not None else None)
        return replace(self, tokenizer=tokenizer, prompt=tuple(prompt), base_key=key)


def request_spec(
    model: WhisperModel, options: TranscribeOptions, language: str, *, timestamps: bool, **bench: Any
) -> RequestSpec:
    """The spec of one request. `bench` may set `max_new_tokens` / `suppress_eot` (benchmark only)."""
    multilingual = bool(model.model.is_multilingual)
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task=options.task, language=language)
    previous = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    prompt = model.get_prompt(tokenizer, previous, without_timestamps=not timestamps, hotwords=options.hotwords)
    temperatures = tuple(options.temperature)
    suppressed = list(get_suppressed_tokens(tokenizer, [-1]) or ())
    if bench.get("suppress_eot"):
        suppressed.append(tokenizer.eot)
    key = DecodeKey(
        beam_size=options.beam_size,
        temperature=temperatures[0],
        suppress_tokens=tuple(suppressed),
        prefix_len=prompt.index(tokenizer.sot),
        timestamps=timestamps,
        words=f"{language}/{options.task}" if options.word_timestamps else None,
        batch_size=options.batch_size,
        **bench,
    )
    return RequestSpec(
        tokenizer=tokenizer,
        task=options.task,
        prompt=tuple(prompt),
        temperatures=temperatures,
        compression_ratio_threshold=options.compression_ratio_threshold,
        log_prob_threshold=options.log_prob_threshold,
        no_speech_threshold=options.no_speech_threshold,
        base_key=key,
    )


@dataclass(frozen=True)
class Attempt:
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    temperature: float


@dataclass
class ChunkJob:
    """One chunk of speech, as submitted to the batcher (the runner records its attempts on it).

    `detect`: find the language in this item's encoder pass and decode in it (the request's first chunk when
    no language was given); the runner then replaces `spec` by the language's spec."""

    features: Floats  # (n_mels, 3000)
    offset: float  # seconds, in speech time (silence removed)
    duration: float
    spec: RequestSpec
    detect: bool = False
    language: tuple[str, float] | None = None  # what detection found
    attempts: list[Attempt] = field(default_factory=list)


@dataclass
class ChunkResult:
    """A decoded chunk: its segments (dicts as faster-whisper builds them, times in speech time)."""

    segments: list[dict[str, Any]]
    attempt: Attempt | None  # None when the chunk was judged silent
    fallbacks: int = 0  # how many temperatures were tried after the first
    resume_at: float | None = None  # the model stopped here (seconds into the chunk): decode the rest again
    language: tuple[str, float] | None = None  # detected in this chunk's encoder pass
    spec: RequestSpec | None = None  # the spec it was decoded with (the detected language's, after detection)
    redo: bool = False  # text-only, stopped early at a point alignment cannot find: decode again with timestamps


class WhisperRunner:
    """Runs one batch of chunks on a faster-whisper model: encode once, then generate once."""

    def __init__(self, model: WhisperModel) -> None:
        self.model = model

    def run(self, key: Hashable, payloads: Sequence[ChunkJob]) -> list[ChunkResult | Requeue | BaseException]:
        assert isinstance(key, DecodeKey)
        encoder_output = self.model.encode(np.stack([p.features for p in payloads]))
        if any(p.detect for p in payloads):
            self._detect(payloads, encoder_output)
        results = self._generate(key, payloads, encoder_output)
        before = [len(p.attempts) for p in payloads]
        try:
            answers: list[ChunkResult | Requeue | BaseException] = []
            for job, result in zip(payloads, results, strict=True):
                try:
                    answers.append(self._judge(key, job, result))
                except Exception as exc:  # one chunk's bad output fails only its request
                    answers.append(exc)
            if not key.timestamps:
                self._find_lost_tails(payloads, answers, encoder_output)
            if key.words is not None:
                self._add_words(payloads, answers, encoder_output)
        except BaseException:
            for job, n in zip(payloads, before, strict=True):  # the items will be run again
                del job.attempts[n:]
            raise
        return answers

    def _detect(self, payloads: Sequence[ChunkJob], encoder_output: Any) -> None:
        """Language of the items that ask, from this batch's encoder output (one decoder step per item)."""
        found = self.model.model.detect_language(encoder_output)
        for job, languages in zip(payloads, found, strict=True):
            if job.detect:
                token, probability = languages[0]
                code = token[2:-2]
                job.spec = job.spec.with_language(code)
                job.language = (code, float(probability))
                job.detect = False

    def _generate(self, key: DecodeKey, payloads: Sequence[ChunkJob], encoder_output: Any) -> list[Any]:
        model = self.model
        prompts = [list(p.spec.prompt) for p in payloads]
        max_length = model.max_length
        if key.max_new_tokens is not None:
            max_length = min(max_length, max(len(p) for p in prompts) + key.max_new_tokens)
        sampling: dict[str, Any] = (
            {"beam_size": 1, "num_hypotheses": key.best_of, "sampling_topk": 0, "sampling_temperature": key.temperature}
            if key.temperature > 0
            else {"beam_size": key.beam_size, "patience": key.patience}
        )  # as WhisperModel.generate_with_fallback
        if key.timestamps:
            sampling["max_initial_timestamp_index"] = round(1.0 / model.time_precision)
        return list(
            model.model.generate(
                encoder_output,
                prompts,
                length_penalty=key.length_penalty,
                repetition_penalty=key.repetition_penalty,
                no_repeat_ngram_size=key.no_repeat_ngram_size,
                max_length=max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=key.suppress_blank,
                suppress_tokens=list(key.suppress_tokens),
                **sampling,
            )
        )

    def _judge(self, key: DecodeKey, job: ChunkJob, result: Any) -> ChunkResult | Requeue:
        """Accept this attempt, send the chunk round again at the next temperature, or settle."""
        spec = job.spec
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
        fallbacks = len(job.attempts) - 1
        if is_silent(spec, attempt):
            return ChunkResult([], None, fallbacks, language=job.language, spec=spec)
        if key.timestamps:
            segments, resume_at = self._segments(spec.tokenizer, job, attempt)
        else:
            segments, resume_at = text_segment(spec.tokenizer, job, attempt), None
        return ChunkResult(segments, attempt, fallbacks, resume_at, job.language, spec)

    def _segments(
        self, tokenizer: Tokenizer, job: ChunkJob, attempt: Attempt
    ) -> tuple[list[dict[str, Any]], float | None]:
        """The chunk's segments, and where to resume decoding (seconds into the chunk) when the model stopped
        before the end of the chunk's speech (the sequential path's seek)."""
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
        tail = attempt.tokens[sum(len(p["tokens"]) for p in pieces) :]
        tail_text = [t for t in tail if t < tokenizer.eot]
        resume_at: float | None = seek / model.frames_per_second
        if single_ending:
            # "No speech after this": the chunk is VAD speech, so doubt it only when much is left.
            last = pieces[-1]["end"] - job.offset if pieces else 0.0
            resume_at = last if job.duration - last > SILENT_TAIL_S else None
        elif resume_at is not None and tail_text:
            left = job.duration - resume_at
            if left <= MIN_RESUME_S or resume_at <= 0 or len(tail_text) >= TEXT_RATE * left:
                resume_at = None  # the unfinished segment carries text enough for the rest: keep it
        elif resume_at is not None and not 0 < resume_at < job.duration - MIN_RESUME_S:
            resume_at = None
        if resume_at is None and tail_text:
            first = tail[0] - tokenizer.timestamp_begin if tail[0] >= tokenizer.timestamp_begin else None
            start = job.offset + first * model.time_precision if first is not None else job.offset
            if pieces and first is None:
                start = pieces[-1]["end"]
            pieces.append({"seek": 0, "start": start, "end": job.offset + job.duration, "tokens": tail})
        return [finish(tokenizer, job, p) for p in pieces], resume_at

    def _find_lost_tails(self, payloads: Sequence[ChunkJob], answers: list[Any], encoder_output: Any) -> None:
        """Text-only chunks whose text is short for their speech: align the text to the audio (one call for
        the batch) and, where the last word ends well before the chunk does, resume there."""
        suspects = [i for i, (job, a) in enumerate(zip(payloads, answers, strict=True)) if short_text(job, a)]
        if not suspects:
            return
        tokenizer = payloads[suspects[0]].spec.tokenizer
        texts = [_text_tokens(a) or [tokenizer.eot] for a in answers]
        frames = [int(math.ceil(p.duration) * self.model.frames_per_second) for p in payloads]
        aligned = self.model.find_alignment(tokenizer, texts, encoder_output, frames)
        for i in suspects:
            answer, job, words = answers[i], payloads[i], aligned[i]
            if not words:
                continue
            durations = [float(w["end"]) - float(w["start"]) for w in words]
            median = float(np.median(durations))
            if max(durations) > max(STRETCHED_WORD_S, 6 * median):
                answer.redo = True  # DTW smeared the text over audio it does not cover: where it ends is unknown
                continue
            last = float(words[-1]["end"])
            if job.duration - last > MIN_RESUME_S:
                answer.resume_at = last
                answer.segments[0]["end"] = job.offset + last

    def _add_words(self, payloads: Sequence[ChunkJob], answers: list[Any], encoder_output: Any) -> None:
        """Word timings for every settled chunk of the batch, aligned on this batch's encoder output (a
        chunk's encoder output is the same whichever batch computed it); one call per language."""
        num_frames = [int(math.ceil(p.duration) * self.model.frames_per_second) for p in payloads]
        languages = {p.spec.tokenizer.language_code for p in payloads}
        for language in sorted(languages):
            rows: list[list[dict[str, Any]]] = []
            for job, answer in zip(payloads, answers, strict=True):
                settled = isinstance(answer, ChunkResult) and answer.segments
                ours = job.spec.tokenizer.language_code == language
                rows.append(
                    answer.segments if settled and ours else [{"seek": 0, "start": 0.0, "end": 0.0, "tokens": []}]
                )
            tokenizer = next(p.spec.tokenizer for p in payloads if p.spec.tokenizer.language_code == language)
            self.model.add_word_timestamps(
                rows, tokenizer, encoder_output, num_frames, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS, 0.0
            )


def finish(tokenizer: Tokenizer, job: ChunkJob, piece: dict[str, Any]) -> dict[str, Any]:
    """A segment's final shape: text decoded, times inside the chunk's audio (a timestamp may point into the
    padding past it)."""
    end = job.offset + job.duration
    return {
        **piece,
        "seek": int(job.offset * 100),
        "start": min(piece["start"], end),
        "end": min(piece["end"], end),
        "text": tokenizer.decode([t for t in piece["tokens"] if t < tokenizer.eot]),
    }


def text_segment(tokenizer: Tokenizer, job: ChunkJob, attempt: Attempt) -> list[dict[str, Any]]:
    """Text-only decoding: the chunk's text as one segment spanning the chunk."""
    if not any(t < tokenizer.eot for t in attempt.tokens):
        return []
    piece = {"seek": 0, "start": job.offset, "end": job.offset + job.duration, "tokens": attempt.tokens}
    return [finish(tokenizer, job, piece)]


def short_text(job: ChunkJob, answer: Any) -> bool:
    """True when a text-only chunk's text is too short for its speech (the model may have stopped early)."""
    if not isinstance(answer, ChunkResult) or not answer.segments or job.duration <= 2 * MIN_RESUME_S:
        return False
    return len(_text_tokens(answer)) < TEXT_RATE * job.duration


def _text_tokens(answer: Any) -> list[int]:
    if not isinstance(answer, ChunkResult) or not answer.segments or answer.spec is None:
        return []
    eot = answer.spec.tokenizer.eot
    return [t for t in answer.segments[0]["tokens"] if t < eot]


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
