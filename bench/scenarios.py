"""The configurations, and the scenarios that need only the engine (no HTTP server): S1 and S3 (one request at
a time) and S2e (many requests from N threads straight into the engine, the GPU run's S2).

Every configuration runs in this one process, on the same audio and the same loaded model. CPU time is this
process's (all threads): on a GPU it is the host work that feeds the device, on a CPU all of the work.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

from bench.data import Clip
from koe.audio import Audio
from koe.engine import Engine
from koe.options import parse_options
from koe.scoring import normalize_en

Transcribe = Callable[[Clip], str]
Log = Callable[[str], None]

RECIPE = "recipe: faster-whisper sequential, no timestamps"
FW_SEQUENTIAL = "faster-whisper sequential, timestamps"
FW_BATCHED = "faster-whisper batched, bs {}"
KOE_TEXT = "koe batched, text-only"
KOE_TIMESTAMPS = "koe batched, timestamps"
KOE_NO_FALLBACK = "koe batched, text-only, no fallback"
PEER = "peer: a batched pipeline per request (bs 8)"
FW_PER_REQUEST = "faster-whisper sequential per request"


@dataclass(frozen=True)
class Decoding:
    """How every configuration decodes: beam size, and the benchmark's fixed-length decoding for random-weight
    models (`fixed_tokens`: every chunk is capped at that many new tokens with end-of-text suppressed, one
    temperature, language fixed to English) so that all configurations do the same work per chunk.

    The cap is faster-whisper's `max_new_tokens` (max_length = prompt + N for CTranslate2), which koe's runner
    passes the same way; CTranslate2 4.8.5 then returns (prompt + N) / 2 tokens for Whisper (N=24: 14, asserted
    by tests/test_bench.py; N=200 gave the anchor bench's "about 100 tokens per chunk"), the same for every
    configuration."""

    beam_size: int = 5
    fixed_tokens: int | None = None

    def faster_whisper(self, model: WhisperModel, sequential: bool = False) -> dict[str, Any]:
        """Keyword arguments for faster-whisper's transcribe (both pipelines)."""
        extra: dict[str, Any] = {"beam_size": self.beam_size}
        if self.fixed_tokens is not None:
            eot = model.hf_tokenizer.token_to_id("<|endoftext|>")
            extra.update(max_new_tokens=self.fixed_tokens, suppress_tokens=[-1, eot], temperature=0.0, language="en")
            if sequential:
                extra["condition_on_previous_text"] = False  # a random model's text would only grow the prompt
        return extra

    def koe(self) -> dict[str, Any]:
        """koe options (the engine's `bench_decoding` carries the token count, see `apply`)."""
        options: dict[str, Any] = {"beam_size": self.beam_size}
        if self.fixed_tokens is not None:
            options.update(temperature=0, language="en")
        return options

    def apply(self, engine: Engine) -> None:
        engine.bench_decoding = (
            {"max_new_tokens": self.fixed_tokens, "suppress_eot": True} if self.fixed_tokens is not None else {}
        )

    def as_dict(self) -> dict[str, Any]:
        return {"beam_size": self.beam_size, "fixed_tokens": self.fixed_tokens}


# -- the configurations -----------------------------------------------------------------------------


def recipe(model: WhisperModel, decoding: Decoding) -> Transcribe:
    """The original recipe: one file at a time, sequential, VAD, no timestamps (loses text, see DESIGN.md)."""
    extra = decoding.faster_whisper(model, sequential=True)

    def run(clip: Clip) -> str:
        segments, _ = model.transcribe(clip.samples, vad_filter=True, without_timestamps=True, **extra)
        return "".join(s.text for s in segments).strip()

    return run


def fw_sequential(model: WhisperModel, decoding: Decoding) -> Transcribe:
    """faster-whisper's sequential transcribe as its README shows it: VAD, timestamps on."""
    extra = decoding.faster_whisper(model, sequential=True)

    def run(clip: Clip) -> str:
        segments, _ = model.transcribe(clip.samples, vad_filter=True, **extra)
        return "".join(s.text for s in segments).strip()

    return run


def fw_batched(model: WhisperModel, batch_size: int, decoding: Decoding) -> Transcribe:
    """faster-whisper's own BatchedInferencePipeline (its defaults: VAD, text-only), one per request."""
    extra = decoding.faster_whisper(model)

    def run(clip: Clip) -> str:
        segments, _ = BatchedInferencePipeline(model).transcribe(clip.samples, batch_size=batch_size, **extra)
        return "".join(s.text for s in segments).strip()

    return run


def koe(engine: Engine, decoding: Decoding, **options: Any) -> Transcribe:
    """koe's Engine.transcribe with its defaults (VAD, temperature fallback) plus `options`."""
    parsed = parse_options({**decoding.koe(), **options})

    def run(clip: Clip) -> str:
        return engine.transcribe(Audio(clip.samples), parsed).text

    return run


def one_request_configs(
    engine: Engine, decoding: Decoding, batch_sizes: list[int], no_fallback: bool = False
) -> dict[str, Transcribe]:
    """S1 and S3: the recipe, faster-whisper sequential with timestamps, its batched pipeline, and koe
    batched text-only and with timestamps."""
    model = engine.model
    configs = {RECIPE: recipe(model, decoding), FW_SEQUENTIAL: fw_sequential(model, decoding)}
    for size in batch_sizes:
        configs[FW_BATCHED.format(size)] = fw_batched(model, size, decoding)
    configs[KOE_TEXT] = koe(engine, decoding, mode="batched", timestamps=False)
    configs[KOE_TIMESTAMPS] = koe(engine, decoding, mode="batched", timestamps=True)
    if no_fallback:
        configs[KOE_NO_FALLBACK] = koe(engine, decoding, mode="batched", timestamps=False, temperature=0)
    return configs


def concurrent_configs(engine: Engine, decoding: Decoding) -> dict[str, Transcribe]:
    """S2e: what servers do per request (faster-whisper sequential; a batched pipeline per request, as the
    open-source faster-whisper servers do) against koe's engine, whose batcher shares batches across requests."""
    model = engine.model
    return {
        FW_PER_REQUEST: fw_sequential(model, decoding),
        PEER: fw_batched(model, 8, decoding),
        KOE_TEXT: koe(engine, decoding, timestamps=False),
        KOE_TIMESTAMPS: koe(engine, decoding, timestamps=True),
    }


# -- measuring -------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float = 0.0  # wall clock
    cpu_s: float = 0.0  # CPU time of this process (all threads)
    audio_s: float = 0.0
    wer: float | None = None
    fallbacks: int | None = None  # chunks decoded again at a higher temperature (koe's batcher counts them)
    chunks: int | None = None  # items koe's batcher decoded (chunks, continuations and fallbacks)
    texts: dict[str, str] = field(default_factory=dict)
    rounds_s: list[float] = field(default_factory=list)  # wall seconds of every round

    def as_dict(self) -> dict[str, Any]:
        return figures(self.audio_s, self.seconds, self.cpu_s) | {
            "wer": _round(self.wer),
            "fallbacks": self.fallbacks,
            "chunks": self.chunks,
            "rounds_s": self.rounds_s,
        }


def figures(audio_s: float, wall_s: float, cpu_s: float) -> dict[str, Any]:
    """The figures every result carries: x real time beside CPU seconds per audio second."""
    return {
        "audio_s": round(audio_s, 1),
        "seconds": round(wall_s, 2),
        "cpu_s": round(cpu_s, 2),
        "x_real_time": round(audio_s / wall_s, 2) if wall_s > 0 else None,
        "cpu_s_per_audio_s": round(cpu_s / audio_s, 4) if audio_s > 0 else None,
    }


def corpus_wer(clips: list[Clip], texts: dict[str, str]) -> float | None:
    """Word error rate over the clips with exact references (None without jiwer, as on a bare GPU machine)."""
    try:
        import jiwer
    except ImportError:
        return None
    pairs = [(normalize_en(c.reference), normalize_en(texts.get(c.name, ""))) for c in clips if c.reference]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def one_request(
    engine: Engine, configs: dict[str, Transcribe], clips: list[Clip], warmup: Clip, log: Log, rounds: int = 1
) -> dict[str, Run]:
    """Each clip through every configuration, one request at a time, interleaved clip by clip (the order of
    the configurations rotates) so that a change in the machine's load touches every configuration alike.
    With several rounds, each configuration keeps its fastest round; the others are kept in `rounds_s`."""
    for transcribe in configs.values():
        transcribe(warmup)
    best: dict[str, Run] = {}
    names = list(configs)
    for r in range(rounds):
        runs = {name: Run() for name in configs}
        for i, clip in enumerate(clips):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                run, stats = runs[name], engine.batcher.stats
                requeued, items = stats.requeued, stats.items
                wall, cpu = time.perf_counter(), time.process_time()
                run.texts[clip.name] = configs[name](clip)
                run.seconds += time.perf_counter() - wall
                run.cpu_s += time.process_time() - cpu
                run.audio_s += clip.duration
                if name.startswith("koe"):
                    run.fallbacks = (run.fallbacks or 0) + stats.requeued - requeued
                    run.chunks = (run.chunks or 0) + stats.items - items
        for name, run in runs.items():
            run.wer = corpus_wer(clips, run.texts)
            kept = best.get(name)
            run.rounds_s = [*(kept.rounds_s if kept else []), round(run.seconds, 2)]
            if kept is None or run.seconds < kept.seconds:
                best[name] = run
            else:
                kept.rounds_s = run.rounds_s
    for name, run in best.items():
        log(f"  {name}: {brief(run.as_dict())}")
    return best


def brief(record: dict[str, Any]) -> str:
    keys = ("x_real_time", "cpu_s_per_audio_s", "wer", "p50_s", "p95_s", "fallbacks", "chunks", "errors")
    return ", ".join(f"{k}={record[k]}" for k in keys if record.get(k) is not None)


def noisy(clips: list[Clip], snr_db: float = 0.0, seed: int = 0) -> list[Clip]:
    """The clips with white noise added at `snr_db` (the same noise for every configuration)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in clips:
        power = float(np.mean(c.samples**2)) / 10 ** (snr_db / 10)
        noise = rng.normal(0.0, np.sqrt(power), len(c.samples))
        out.append(Clip(c.name, (c.samples + noise).astype(np.float32), c.reference, c.path))
    return out


def s1_results(long: Clip, runs: dict[str, Run], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "audio": long.name,
        "audio_s": round(long.duration, 1),
        "rounds": rounds,
        "runs": {name: run.as_dict() for name, run in runs.items()},
    }
    best, base = best_fw_batched(out)
    out["best_fw_batched"] = best
    for record in out["runs"].values():
        record["vs_best_fw_batched"] = (
            round(record["x_real_time"] / base, 3) if base and record["x_real_time"] else None
        )
    return out


def best_fw_batched(s1: dict[str, Any]) -> tuple[str | None, float | None]:
    """The name and x real time of faster-whisper's fastest batched configuration in S1."""
    batched = {n: r["x_real_time"] for n, r in s1["runs"].items() if n.startswith("faster-whisper batched")}
    if not batched:
        return None, None
    name = max(batched, key=lambda n: batched[n])
    return name, batched[name]


# -- S2e: N threads calling the engine (no HTTP) ---------------------------------------------------


def latency_figures(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_s": 0.0, "p95_s": 0.0}
    if len(latencies) < 2:
        return {"p50_s": round(latencies[0], 2), "p95_s": round(latencies[0], 2)}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"p50_s": round(cuts[49], 2), "p95_s": round(cuts[94], 2)}


def threaded(transcribe: Transcribe, clips: list[Clip], threads: int) -> tuple[dict[str, Any], dict[str, str]]:
    """`threads` closed-loop callers send every clip once; returns the figures and the texts."""
    work = deque(clips)
    lock = threading.Lock()
    latencies: list[float] = []
    texts: dict[str, str] = {}
    errors: list[str] = []
    start = threading.Barrier(threads + 1)

    def caller() -> None:
        start.wait()
        while True:
            with lock:
                if not work:
                    return
                clip = work.popleft()
            sent = time.perf_counter()
            try:
                text = transcribe(clip)
            except Exception as exc:  # counted, and the first few kept, so a broken configuration shows
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - sent)
                texts[clip.name] = text

    pool = [threading.Thread(target=caller, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    start.wait()
    wall, cpu = time.perf_counter(), time.process_time()
    for t in pool:
        t.join()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    record = figures(sum(c.duration for c in clips), wall, cpu) | latency_figures(latencies)
    record |= {"requests": len(clips), "errors": len(errors), "error_samples": errors[:3]}
    return record, texts


def concurrent_engine(
    engine: Engine,
    configs: dict[str, Transcribe],
    clips: list[Clip],
    levels: list[int],
    log: Log,
    rounds: int = 1,
    stop: Callable[[], bool] = lambda: False,
    warm: bool = True,
) -> dict[str, dict[str, Any]]:
    """Every configuration at each number of threads (each keeps its fastest of `rounds` runs). `stop()`
    ends the scenario early (the GPU run's time budget); what was measured stays. `warm`: run each
    configuration once on the first clip before measuring."""
    for transcribe in configs.values() if warm else ():
        transcribe(clips[0])
    out: dict[str, dict[str, Any]] = {name: {} for name in configs}
    names = list(configs)
    for n in levels:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                if stop():
                    log(f"  time budget spent: skipped {name} at {n} threads")
                    continue
                stats = engine.batcher.stats
                before = (stats.batches, stats.items)
                record, texts = threaded(configs[name], clips, n)
                batches, items = stats.batches - before[0], stats.items - before[1]
                record["wer"] = _round(corpus_wer(clips, texts)) if not record["errors"] else None
                record["mean_batch"] = round(items / batches, 2) if name.startswith("koe") and batches else None
                kept = out[name].get(str(n))
                walls = [*(kept["rounds_wall_s"] if kept else []), record["seconds"]]
                if kept is None or record["seconds"] < kept["seconds"]:
                    out[name][str(n)] = kept = record
                kept["rounds_wall_s"] = walls
                log(f"  {n:>3} threads, {name}: {brief(record)}")
    return out
