"""Engine: owns one loaded faster-whisper model and turns audio into a Transcript.

Thread-safe: any number of threads may call `transcribe` at once; CTranslate2 queues their work on the
model's `num_workers` replicas.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ctranslate2
from faster_whisper import WhisperModel
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.vad import VadOptions

from koe.audio import Audio
from koe.batcher import Batcher
from koe.config import Settings, default_cache_dir
from koe.errors import EngineError, ModelUnavailableError, OptionsError
from koe.model_files import resolve
from koe.options import TranscribeOptions
from koe.pipeline import BatchedResult, make_batcher, transcribe_batched
from koe.runner import ChunkJob, ChunkResult
from koe.transcript import Segment, Transcript, Word

logger = logging.getLogger("koe.engine")

SEQUENTIAL_MIN_SILENCE_MS = 2000  # faster-whisper's own default for its sequential path
CPU_BATCH_SIZE = 4
"""Largest batch the cross-request batcher forms on a CPU (a request's own `batch_size` may only lower it)."""

Progress = Callable[[float, float], None]
"""Called with (audio seconds done, audio seconds in all) as a transcription advances."""


@dataclass(frozen=True)
class Placement:
    """Where the model runs: device and compute type, after `auto` is decided."""

    device: str
    compute_type: str

    @classmethod
    def choose(cls, device: str = "auto", compute_type: str = "auto") -> Placement:
        if device == "auto":
            device = "cuda" if cuda_available() else "cpu"
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        return cls(device, compute_type)


def cpu_layout(replicas: int | None, threads: int) -> tuple[int, int]:
    """(model replicas, threads each) on a CPU, unless set: two replicas with half the cores each.

    Measured once on the 2-core CPU with `python -m bench.layouts` (tiny.en int8, the first 420 s of the long
    English prompts file, best of 2 rounds, all layouts in one process, 2026-11-29): 2 x 1 ran text-only
    decoding at 31.8x real time against 25.4x for 1 x 2 (1.25x), and with timestamps 27.3x against 17.0x
    (the script in its first form, before the batcher kept batches filling): one replica with all the cores idles while
    Python stacks features and judges results, and small batches scale badly over threads; two replicas keep
    both cores busy. README "Performance" has the benchmark's side-by-side figures with this layout."""
    cores = os.cpu_count() or 1
    replicas = replicas or min(2, cores)
    return replicas, threads or max(1, cores // replicas)


def batch_limit(batch_size: int, placement: Placement) -> int:
    """The largest batch the model's batcher forms: `batch_size` on a GPU, at most `CPU_BATCH_SIZE` on a CPU.

    A CPU gains nothing from batches past a few items (CPU time per audio second was the same for 4 and 16),
    and a batch finishes all at once: 16 concurrent clients waited 16.9 s (p50) with batches of 16 and 10.1 s
    with batches of 4, at the same throughput."""
    return batch_size if placement.device == "cuda" else min(batch_size, CPU_BATCH_SIZE)


def job_slots(settings: Settings) -> int:
    """Jobs a worker pool runs at once: the setting, or by default as many as one batch holds (each job's
    chunks join the same batches; one job at a time would leave most of every batch empty)."""
    if settings.worker_concurrency is not None:
        return settings.worker_concurrency
    return batch_limit(settings.batch_size, Placement.choose(settings.device, settings.compute_type))


def cuda_available() -> bool:
    try:
        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:  # a CPU-only CTranslate2 build, or no driver
        return False


# Issue 18 hook: CUDA errors after which the context stays broken (every later call fails); out-of-memory is
# not among them (the next, smaller batch can succeed).
CUDA_FATAL = (
    "illegal memory access", "unspecified launch failure", "device-side assert", "misaligned address",
    "uncorrectable ecc error", "fallen off the bus", "cuda_error_launch_failed", "cublas_status_execution_failed",
    "cuda driver version is insufficient", "context is destroyed", "unknown error",
)  # fmt: skip


def cuda_fatal(exc: BaseException) -> str | None:
    """The message of a fatal CUDA error, else None."""
    text = str(exc)
    lowered = text.lower()
    gpu = any(lib in lowered for lib in ("cuda", "cublas", "cudnn"))
    return text if gpu and any(p in lowered for p in CUDA_FATAL) else None


class Engine:
    """One loaded Whisper model. Build it with `Engine.load(...)` or `Engine.from_settings(settings)`."""

    def __init__(
        self, model: WhisperModel, *, name: str, path: Path, placement: Placement, batch_size: int = 16
    ) -> None:
        self.model = model
        self.name = name
        self.path = path
        self.placement = placement
        self.batch_size = batch_size
        self.multilingual: bool = bool(model.model.is_multilingual)
        self._closed = threading.Event()
        # Issue 18 hook: set (to CUDA's message) once a fatal, sticky CUDA error is seen; the CUDA context is
        # then unusable, so the SageMaker /ping answers 503 and SageMaker replaces the instance.
        self.failed: str | None = None
        self._batcher: Batcher[ChunkJob, ChunkResult] | None = None
        # Benchmark only: fixed-length decoding of random-weight models (`max_new_tokens`, `suppress_eot`).
        self.bench_decoding: dict[str, Any] = {}
        self._batcher_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str = "base",
        *,
        cache_dir: Path | None = None,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        num_workers: int | None = None,
        batch_size: int = 16,
    ) -> Engine:
        path = resolve(model, cache_dir or default_cache_dir())
        placement = Placement.choose(device, compute_type)
        if placement.device == "cpu":
            num_workers, cpu_threads = cpu_layout(num_workers, cpu_threads)
        started = time.perf_counter()
        try:
            whisper = WhisperModel(
                str(path),
                device=placement.device,
                compute_type=placement.compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers or 1,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelUnavailableError(f"cannot load model {model!r} from {path}: {exc}") from exc
        logger.info(
            "loaded %s from %s on %s/%s in %.1fs",
            model, path, placement.device, placement.compute_type, time.perf_counter() - started,
        )  # fmt: skip
        return cls(whisper, name=model, path=path, placement=placement, batch_size=batch_size)

    @classmethod
    def from_settings(cls, settings: Settings, model: str | None = None) -> Engine:
        return cls.load(
            model or settings.model,
            cache_dir=settings.cache_dir,
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
            num_workers=settings.num_workers,
            batch_size=settings.batch_size,
        )

    def resolve_mode(self, options: TranscribeOptions) -> str:
        """`auto` is batched, on a GPU and on a CPU alike.

        Measured on the 2-core CPU with tiny.en int8 (`make bench ARGS="--rounds 2"`, bench/results/
        2026-11-29-vm.md, README "Performance"): on a long file (174 s) the batched path ran at 21.0x real time
        text-only and 25.9x with timestamps, against 12.4x for faster-whisper's sequential path with timestamps
        (what `mode=sequential` runs): 1.7-2.1x. On a GPU batching is what the device is for. On a CPU batches
        are capped at `CPU_BATCH_SIZE` (see `batcher`)."""
        if options.mode != "auto":
            return options.mode
        return "batched"

    def check(self, options: TranscribeOptions) -> None:
        """Reject options this model cannot honour, before any audio work."""
        if not self.multilingual:
            if options.language not in (None, "en"):
                raise OptionsError(f"language: model {self.name} is English-only; use a multilingual model")
            if options.task == "translate":
                raise OptionsError(f"task: model {self.name} is English-only and cannot translate")

    def transcribe(
        self, audio: Audio, options: TranscribeOptions | None = None, progress: Progress | None = None
    ) -> Transcript:
        """Transcribe `audio` with `options`, calling `progress(done_s, total_s)` as segments finish."""
        options = options or TranscribeOptions()
        self.check(options)
        speakers = None
        if options.diarize:  # issue 16 hook: speaker labels, computed on the CPU while the model transcribes
            from koe import diarize  # imported only when asked: requests without diarize pay nothing

            speakers = diarize.start(audio.samples, options)
        mode = self.resolve_mode(options)
        try:
            if mode == "batched":
                info = self._batched(audio, options, progress)  # progress is reported chunk by chunk
                result = info.segments
            else:
                segments, info = self._sequential(audio, options)
                result = _collect(segments, audio.duration, progress)
        except (RuntimeError, ValueError) as exc:
            self.failed = self.failed or cuda_fatal(exc)  # issue 18 hook (see __init__)
            raise EngineError(f"transcription failed: {exc}") from exc
        if progress:
            progress(audio.duration, audio.duration)
        transcript = Transcript.from_segments(
            result,
            language=info.language,
            language_probability=float(info.language_probability),
            duration=audio.duration,
            task=options.task,
        )
        # issue 17 hook: drop Whisper's stock-phrase hallucinations, and warn when an English-only model heard
        # another language (koe.hallucination)
        from koe.hallucination import review

        transcript = review(transcript, model=self.name, multilingual=self.multilingual)
        return speakers.label(transcript) if speakers else transcript  # issue 16 hook

    def stream(self, audio: Audio, options: TranscribeOptions | None = None) -> Iterator[Segment]:
        """Segments as the model finishes them (blocking; consume it in a worker thread).

        Decoding window after window is what yields the first segment early, so `auto` streams sequentially;
        an explicit `batched` mode finishes all chunks together and yields its segments at the end."""
        options = options or TranscribeOptions()
        self.check(options)
        if options.mode == "batched":
            yield from self.transcribe(audio, options).segments
            return
        try:
            segments, _info = self._sequential(audio, options)
            # issue 17 hook: drop Whisper's stock-phrase hallucinations as they stream (koe.hallucination)
            from koe.hallucination import spoken

            yield from spoken(_segment(index, segment) for index, segment in enumerate(segments))
        except (RuntimeError, ValueError) as exc:
            raise EngineError(f"transcription failed: {exc}") from exc

    def _common_kwargs(self, options: TranscribeOptions) -> dict[str, Any]:
        return {
            "language": options.language,
            "task": options.task,
            "beam_size": options.beam_size,
            "temperature": list(options.temperature),
            "compression_ratio_threshold": options.compression_ratio_threshold,
            "log_prob_threshold": options.log_prob_threshold,
            "no_speech_threshold": options.no_speech_threshold,
            "word_timestamps": options.word_timestamps,
            "initial_prompt": options.initial_prompt,
            "hotwords": options.hotwords,
            "vad_filter": options.vad,
        }

    def _sequential(self, audio: Audio, options: TranscribeOptions) -> tuple[Iterable[FwSegment], Any]:
        segments, info = self.model.transcribe(
            audio.samples, vad_parameters=vad_parameters(options), **self._common_kwargs(options)
        )
        return segments, info

    @property
    def batcher(self) -> Batcher[ChunkJob, ChunkResult]:
        """The cross-request batcher of this model (started on first use): every batched request of every
        thread shares its batches."""
        with self._batcher_lock:
            if self._batcher is None:
                if self._closed.is_set():
                    raise EngineError("the engine is closed")
                self._batcher = make_batcher(self.model, batch_limit(self.batch_size, self.placement))
            return self._batcher

    def _batched(self, audio: Audio, options: TranscribeOptions, progress: Progress | None = None) -> BatchedResult:
        return transcribe_batched(self.model, self.batcher, audio.samples, options, progress, **self.bench_decoding)

    def close(self) -> None:
        """Release the model (its GPU or CPU memory goes when the last reference does)."""
        self._closed.set()
        with self._batcher_lock:
            if self._batcher is not None:
                self._batcher.close()
        self.model.model.unload_model()


def vad_parameters(options: TranscribeOptions) -> VadOptions:
    return VadOptions(
        threshold=options.vad_threshold,
        min_speech_duration_ms=options.vad_min_speech_ms,
        min_silence_duration_ms=SEQUENTIAL_MIN_SILENCE_MS
        if options.vad_min_silence_ms is None
        else options.vad_min_silence_ms,
        speech_pad_ms=options.vad_speech_pad_ms,
    )


def _collect(segments: Iterable[FwSegment], duration: float, progress: Progress | None) -> list[Segment]:
    """Consume faster-whisper's lazy generator (the work happens here) into koe segments."""
    out: list[Segment] = []
    for seg in segments:
        out.append(_segment(len(out), seg))
        if progress:
            progress(min(seg.end, duration), duration)
    return out


def _segment(index: int, seg: FwSegment) -> Segment:
    words = None
    if seg.words is not None:
        words = [
            Word(word=w.word, start=round(w.start, 3), end=round(w.end, 3), probability=round(w.probability, 4))
            for w in seg.words
        ]
    return Segment(
        id=index,
        seek=seg.seek,
        start=round(seg.start, 3),
        end=round(seg.end, 3),
        text=seg.text,
        tokens=list(seg.tokens),
        temperature=float(seg.temperature or 0.0),
        avg_logprob=float(seg.avg_logprob),
        compression_ratio=float(seg.compression_ratio),
        no_speech_prob=float(seg.no_speech_prob),
        words=words,
    )
