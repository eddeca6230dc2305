"""`python -m bench [--full] [--only S1,S2,S3,S4] [--model M] ...`: koe against the original recipe,
faster-whisper (sequential with timestamps, and its batched pipeline) and per-request servers, on real speech
from ../shared/audio. `python -m bench gpu ...` is the GPU comparison (bench/gpu.py).

- S1: one long file, one request at a time (x real time, CPU s per audio s, WER).
- S2: concurrent clients sending short clips through HTTP (clients in their own process): koe's server
  against the per-request peer server (aggregate x real time, CPU s per audio s, p50/p95 latency).
- S3: word error rate of each configuration on the clips with exact references, clean and noisy.
- S4: 32 jobs queued at once on the local endpoint (`koe serve`'s app, jobs API) against the same jobs one
  at a time, and against koe's S2 figure at the same concurrency.

The default run is quick, for the 2-core CPU (S1 on the first ~3 min, S2 on 16 clips with 1/4/16 clients,
S3 on 16 clips, S4 on 32 jobs with 16 job slots); `--full` is for a GPU (S1 on 22 min, S2 on 64 clips with
1/8/32/64 clients, all clips, 32 job slots). `--engine-only` needs only the engine and its dependencies (no
HTTP server; S2 then calls the engine from N threads; S4 is skipped). `--fixed-tokens N` makes every chunk
decode N tokens (for random-weight models, bench/random_model.py). Results go to bench/results/<date>-<host>
.json and .md after every scenario (a run cut short keeps what it measured), and .png at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import data, report, scenarios
from bench.environment import hardware, koe_batch_size
from bench.scenarios import KOE_TEXT, Decoding, s1_results
from koe.engine import Engine

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("S1", "S2", "S3", "S4")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--full", action="store_true", help="the full run (for a GPU): long audio, 64 clients")
    p.add_argument("--model", default="tiny.en", help="model name or CTranslate2 folder (default tiny.en)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--only", default=None, help="comma list of scenarios (default S1,S2,S3,S4; engine-only S1,S2)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--name", default=None, help="results file stem (default <date>-<host>)")
    p.add_argument("--rounds", type=int, default=1, help="S1/S2: run each configuration this often, keep the fastest")
    p.add_argument("--engine-only", action="store_true", help="no HTTP: S2 calls the engine from threads; no S4")
    p.add_argument("--fixed-tokens", type=int, default=None, help="cap chunks at N new tokens, no EOT (random models)")
    p.add_argument("--beam-size", type=int, default=5, help="beam size of every configuration (1: greedy)")
    p.add_argument("--batch-size", type=int, default=16, help="koe's batch size (the engine caps it at 4 on a CPU)")
    p.add_argument("--fw-batch-sizes", default=None, help="faster-whisper batched sizes (quick 16; full 8,16,32,64)")
    p.add_argument("--s1-seconds", type=float, default=None, help="S1 audio length (quick 180; full all 22 min)")
    p.add_argument("--clips", type=int, default=None, help="S2 requests (quick 16; full 64)")
    p.add_argument("--levels", default=None, help="S2 concurrency levels (quick 1,4,16; full 1,8,32,64)")
    p.add_argument("--s3-clips", type=int, default=None, help="S3 clips, those with references kept (quick 16)")
    p.add_argument("--jobs", type=int, default=32, help="S4 jobs")
    p.add_argument("--worker-concurrency", type=int, default=None, help="S4 job slots (quick 16; full 32)")
    return p


def _ints(text: str | None, default: list[int]) -> list[int]:
    return [int(x) for x in text.split(",")] if text else default


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gpu"]:
        from bench import gpu

        return gpu.main(argv[1:])
    args = parser().parse_args(argv)
    default_only = "S1,S2" if args.engine_only else ",".join(SCENARIOS)
    only = {s.strip().upper() for s in (args.only or default_only).split(",")}
    began = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f}s] {line}", flush=True)

    full = args.full
    engine = Engine.load(args.model, device=args.device, batch_size=args.batch_size)  # koe's own CPU layout
    decoding = Decoding(args.beam_size, args.fixed_tokens)
    decoding.apply(engine)
    log(f"model {args.model} on {engine.placement.device}/{engine.placement.compute_type}, {decoding.as_dict()}")
    results: dict[str, Any] = {
        "hardware": hardware(),
        "run": run_info(args, argv, engine, decoding),
    }
    stem = args.out / (args.name or f"{results['run']['date']}-{results['hardware']['host']}")

    def save(chart: bool = False) -> None:
        results["run"]["seconds"] = round(time.perf_counter() - began, 1)
        for path in report.write(results, stem, chart=chart):
            log(f"wrote {path}")

    fw_sizes = _ints(args.fw_batch_sizes, [8, 16, 32, 64] if full else [16])
    levels = _ints(args.levels, [1, 8, 32, 64] if full else [1, 4, 16])
    warmup = data.warmup_clip()
    if "S1" in only:
        long = data.long_audio(args.s1_seconds if args.s1_seconds is not None else (None if full else 180.0))
        log(f"S1: {long.name}, {long.duration:.0f} s")
        configs = scenarios.one_request_configs(engine, decoding, fw_sizes)
        runs = scenarios.one_request(engine, configs, [long], warmup, log, args.rounds)
        results["S1"] = s1_results(long, runs, args.rounds)
        save()
    s2_clips = data.short_clips(args.clips or (None if full else 16))
    if "S2" in only:
        log(f"S2: {len(s2_clips)} clips, {sum(c.duration for c in s2_clips):.0f} s, levels {levels}")
        results["S2"] = s2_results(engine, decoding, s2_clips, levels, log, args.rounds, args.engine_only)
        save()
    if "S3" in only:
        scored = [c for c in data.short_clips(args.s3_clips or (None if full else 16)) if c.reference]
        log(f"S3: {len(scored)} clips with references, {sum(c.duration for c in scored):.0f} s")
        configs = scenarios.one_request_configs(engine, decoding, fw_sizes[:1], no_fallback=True)
        runs3 = scenarios.one_request(engine, configs, scored, warmup, log)
        log("S3, the same clips with white noise at 0 dB SNR (where the temperature fallback triggers)")
        keep = (scenarios.RECIPE, KOE_TEXT, scenarios.KOE_NO_FALLBACK)
        noisy_configs = {name: fn for name, fn in configs.items() if name in keep}
        runs3n = scenarios.one_request(engine, noisy_configs, scenarios.noisy(scored), warmup, log)
        results["S3"] = {
            "clips": len(scored),
            "audio_s": round(sum(c.duration for c in scored), 1),
            "runs": {name: run.as_dict() for name, run in runs3.items()},
            "noisy_runs": {name: run.as_dict() for name, run in runs3n.items()},
        }
        save()
    if "S4" in only:
        if args.engine_only:
            log("S4 needs the HTTP server: skipped (--engine-only)")
        else:
            from bench import serving

            concurrency = args.worker_concurrency or (32 if full else 16)
            log(f"S4: {args.jobs} jobs from {len(s2_clips)} clips, worker_concurrency {concurrency}")
            s4 = serving.queued_jobs(engine, decoding, s2_clips, args.jobs, concurrency, log)
            add_s2_reference(s4, results.get("S2"))
            results["S4"] = s4
            save()
    results["run"]["finished"] = True
    save(chart=True)
    return 0


def s2_results(
    engine: Engine,
    decoding: Decoding,
    clips: list[data.Clip],
    levels: list[int],
    log: Callable[[str], None],
    rounds: int,
    engine_only: bool,
    stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    if engine_only:
        configs = scenarios.concurrent_configs(engine, decoding)
        runs = scenarios.concurrent_engine(engine, configs, clips, levels, log, rounds, stop)
    else:
        from bench import serving

        runs = serving.concurrent_http(engine, decoding, clips, levels, log, rounds)
    return {
        "transport": "engine" if engine_only else "http",
        "unit": "threads" if engine_only else "clients",
        "requests": len(clips),
        "audio_s": round(sum(c.duration for c in clips), 1),
        "levels": levels,
        "rounds": rounds,
        "runs": runs,
    }


def add_s2_reference(s4: dict[str, Any], s2: dict[str, Any] | None) -> None:
    """Each S4 run's ratio to koe's plain-text S2 throughput at the same concurrency (worker_concurrency
    clients for the queue, or the nearest level below; 1 client for one job at a time)."""
    from bench.serving import JOBS_QUEUED, KOE_PLAIN

    koe_runs = (s2 or {}).get("runs", {}).get(KOE_PLAIN) if (s2 or {}).get("transport") == "http" else None
    for name, record in s4["runs"].items():
        record["s2_reference"] = record["vs_s2"] = None
        if not koe_runs:
            continue
        want = s4["worker_concurrency"] if name == JOBS_QUEUED else 1
        below = [int(n) for n in koe_runs if int(n) <= want]
        if not below:
            continue
        ref = koe_runs[str(max(below))]
        record["s2_reference"] = {
            "clients": max(below),
            "x_real_time": ref["x_real_time"],
            "cpu_s_per_audio_s": ref["cpu_s_per_audio_s"],
        }
        record["vs_s2"] = round(record["x_real_time"] / ref["x_real_time"], 3) if ref["x_real_time"] else None


def run_info(args: argparse.Namespace, argv: list[str], engine: Engine, decoding: Decoding) -> dict[str, Any]:
    return {
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "device": engine.placement.device,
        "compute_type": engine.placement.compute_type,
        "batch_size": koe_batch_size(engine),
        "decoding": decoding.as_dict(),
        "full": args.full,
        "engine_only": args.engine_only,
        "command": " ".join(["python -m bench", *argv]),
        "finished": False,
    }


if __name__ == "__main__":
    raise SystemExit(main())
