"""The three scenarios. Every configuration of a scenario runs in this one process, on the same audio and
the same loaded model, one after the other (S2: one concurrency level at a time, all configurations)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jiwer
import numpy as np
from faster_whisper import BatchedInferencePipeline, WhisperModel

from bench.data import Clip, upload
from bench.servers import Served, koe_app, load, peer_app
from koe.audio import Audio
from koe.engine import Engine
from koe.options import parse_options
from koe.scoring import normalize_en

Transcribe = Callable[[Clip], str]

# -- the configurations -----------------------------------------------------------------------------


def recipe(model: WhisperModel) -> Transcribe:
    """The original recipe: one file at a time, sequential, beam 5, VAD, no timestamps."""

    def run(clip: Clip) -> str:
        segments, _ = model.transcribe(clip.samples, beam_size=5, vad_filter=True, without_timestamps=True)
        return "".join(s.text for s in segments).strip()

    return run


def fw_batched(model: WhisperModel, batch_size: int) -> Transcribe:
    """faster-whisper's own BatchedInferencePipeline (its defaults: beam 5, VAD)."""

    def run(clip: Clip) -> str:
        segments, _ = BatchedInferencePipeline(model).transcribe(clip.samples, batch_size=batch_size, beam_size=5)
        return "".join(s.text for s in segments).strip()

    return run


def koe(engine: Engine, **options: Any) -> Transcribe:
    """koe's Engine.transcribe with its defaults (beam 5, VAD, timestamps, temperature fallback) plus `options`."""
    parsed = parse_options(options)

    def run(clip: Clip) -> str:
        return engine.transcribe(Audio(clip.samples), parsed).text

    return run


def configurations(
    model: WhisperModel, engine: Engine, batch_sizes: list[int], koe_sizes: list[int]
) -> dict[str, Transcribe]:
    configs = {"recipe (sequential, beam 5)": recipe(model)}
    for size in batch_sizes:
        configs[f"faster-whisper batched, bs {size}"] = fw_batched(model, size)
    configs["koe sequential"] = koe(engine, mode="sequential")
    for size in koe_sizes:
        configs[f"koe batched, bs {size}"] = koe(engine, mode="batched", batch_size=size)
    configs[NO_FALLBACK.format(koe_sizes[0])] = koe(engine, mode="batched", batch_size=koe_sizes[0], temperature=0)
    return configs


NO_FALLBACK = "koe batched, bs {}, no fallback"


# -- S1 and S3: one request at a time ----------------------------------------------------------------


@dataclass
class Run:
    seconds: float = 0.0  # wall clock
    cpu_s: float = 0.0  # CPU time of this process (all threads): robust when other work shares the machine
    audio_s: float = 0.0
    wer: float | None = None
    fallbacks: int | None = 0
    texts: dict[str, str] = field(default_factory=dict)
    rounds_s: list[float] = field(default_factory=list)  # wall seconds of every round

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 2),
            "cpu_s": round(self.cpu_s, 2),
            "audio_s": round(self.audio_s, 1),
            "x_real_time": round(self.x_real_time, 2),
            "x_real_time_per_cpu_s": round(self.audio_s / self.cpu_s, 2) if self.cpu_s else None,
            "wer": None if self.wer is None else round(self.wer, 4),
            "fallbacks": self.fallbacks,
            "rounds_s": self.rounds_s,
        }


def corpus_wer(clips: list[Clip], texts: dict[str, str]) -> float | None:
    pairs = [(normalize_en(c.reference), normalize_en(texts[c.name])) for c in clips if c.reference]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


def one_request(
    engine: Engine,
    configs: dict[str, Transcribe],
    clips: list[Clip],
    warmup: Clip,
    log: Callable[[str], None],
    rounds: int = 1,
) -> dict[str, Run]:
    """Each clip through every configuration, one request at a time, interleaved clip by clip (the order of
    the configurations rotates) so that a change in the machine's load touches every configuration alike.
    With several rounds, each configuration keeps its fastest round (the one least disturbed by other work
    on the machine); the others are kept in `rounds_s`."""
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
                requeued, wall, cpu = stats.requeued, time.perf_counter(), time.process_time()
                run.texts[clip.name] = configs[name](clip)
                run.seconds += time.perf_counter() - wall
                run.cpu_s += time.process_time() - cpu
                run.audio_s += clip.duration
                run.fallbacks = (run.fallbacks or 0) + stats.requeued - requeued
        for name, run in runs.items():
            run.wer = corpus_wer(clips, run.texts)
            if not name.startswith("koe batched"):
                run.fallbacks = None  # only koe's batcher counts them
            kept = best.get(name)
            run.rounds_s = [*(kept.rounds_s if kept else []), round(run.seconds, 2)]
            if kept is None or run.seconds < kept.seconds:
                best[name] = run
            else:
                kept.rounds_s = run.rounds_s
    for name, run in best.items():
        log(f"  {name}: {run.as_dict()}")
    return best


def noisy(clips: list[Clip], snr_db: float = 0.0, seed: int = 0) -> list[Clip]:
    """The clips with white noise added at `snr_db` (the same noise for every configuration)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in clips:
        power = float(np.mean(c.samples**2)) / 10 ** (snr_db / 10)
        noise = rng.normal(0.0, np.sqrt(power), len(c.samples))
        out.append(Clip(c.name, (c.samples + noise).astype(np.float32), c.reference, c.path))
    return out


# -- S2: concurrent clients through HTTP ------------------------------------------------------------


def concurrent_http(
    model: WhisperModel,
    engine: Engine,
    clips: list[Clip],
    clients: list[int],
    koe_sizes: list[int],
    log: Callable[[str], None],
    rounds: int = 1,
) -> dict[str, Any]:
    """Every configuration at each number of clients (keeping each one's fastest of `rounds` runs)."""
    peer, koe_server = Served(peer_app(model, batch_size=8)), Served(koe_app(engine))
    setups = {
        "peer: a batched pipeline per request (bs 8)": (peer.url, None),
        "koe sequential (per request)": (koe_server.url, "mode=sequential"),
    }
    for size in koe_sizes:
        setups[f"koe shared batcher, bs {size}"] = (koe_server.url, f"mode=batched;batch_size={size}")
    uploads = [(c.name, upload(c), c.duration) for c in clips]
    out: dict[str, Any] = {name: {} for name in setups}
    try:
        for url, attributes in setups.values():  # warm-up
            load(url, uploads[:1], 1, attributes)
        names = list(setups)
        for n in clients:
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    url, attributes = setups[name]
                    stats = engine.batcher.stats
                    before = (stats.batches, stats.items, stats.mixed_batches)
                    result = load(url, uploads, n, attributes)
                    after = (stats.batches, stats.items, stats.mixed_batches)
                    batches, items, mixed = (a - b for a, b in zip(after, before, strict=True))
                    record = {
                        "x_real_time": round(result.x_real_time, 2),
                        "p50_s": round(result.percentile(50), 2),
                        "p95_s": round(result.percentile(95), 2),
                        "wall_s": round(result.wall_s, 2),
                        "cpu_s": round(result.cpu_s, 2),
                        "requests": result.requests,
                        "errors": result.errors,
                        "wer": _round(corpus_wer(clips, result.texts) if not result.errors else None),
                        "mean_batch": round(items / batches, 2) if "batcher" in name and batches else None,
                        "mixed_batches": mixed if "batcher" in name else None,
                    }
                    kept = out[name].get(str(n))
                    walls = [*(kept["rounds_wall_s"] if kept else []), record["wall_s"]]
                    if kept is None or record["wall_s"] < kept["wall_s"]:
                        out[name][str(n)] = kept = record
                    kept["rounds_wall_s"] = walls
                    log(f"  {n:>3} clients, round {r + 1}, {name}: {record}")
    finally:
        peer.close()
        koe_server.close()
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
