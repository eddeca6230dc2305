"""`python -m bench [--full] [--model M]`: koe against the original recipe, faster-whisper's batched pipeline
and per-request servers, on real speech from ../shared/audio.

- S1: one long file (x real time, WER).
- S2: concurrent clients sending short clips through HTTP (aggregate x real time, p50/p95 latency).
- S3: word error rate of each configuration on the clips with exact references, and the effect of koe's
  temperature fallback.

The default run is quick, for the 2-core CPU (S1 on the first ~3 min, S2 on 16 clips with 1/4/16 clients,
S3 on 24 clips); `--full` is for a GPU (S1 on 22 min, S2 on 64 clips with 1/8/32/64 clients, all clips).
Writes bench/results/<date>-<host>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any

import ctranslate2
import faster_whisper

from bench import data, report, scenarios
from koe.engine import Engine

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the full run (for a GPU): long audio, 64 clients")
    parser.add_argument("--model", default="tiny.en", help="model name or CTranslate2 folder (default tiny.en)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--only", default="S1,S2,S3", help="comma list of scenarios to run (default all)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument(
        "--rounds", type=int, default=1, help="S1 and S2: run each configuration this many times, keep the fastest"
    )
    args = parser.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",")}
    began = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f}s] {line}", flush=True)

    engine = Engine.load(args.model, device=args.device, cpu_threads=os.cpu_count() or 0)
    model = engine.model
    full = args.full
    batch_sizes = [8, 16, 32, 64] if full else [16]
    koe_sizes = [16, 64] if full else [4, 16]
    log(f"model {args.model} on {engine.placement.device}/{engine.placement.compute_type}")
    results: dict[str, Any] = {"hardware": hardware(), "run": {}}

    clips = data.short_clips(None if full else 24)
    warmup = data.warmup_clip()
    if "S1" in only:
        long = data.long_audio(None if full else 180.0)
        log(f"S1: {long.name}, {long.duration:.0f} s")
        configs = scenarios.configurations(model, engine, batch_sizes, koe_sizes)
        runs = scenarios.one_request(engine, configs, [long], warmup, log, args.rounds)
        results["S1"] = {
            "audio": long.name,
            "audio_s": round(long.duration, 1),
            "rounds": args.rounds,
            "runs": {name: run.as_dict() for name, run in runs.items()},
        }
    if "S2" in only:
        s2_clips = data.short_clips(None if full else 16)
        clients = [1, 8, 32, 64] if full else [1, 4, 16]
        log(f"S2: {len(s2_clips)} clips, {sum(c.duration for c in s2_clips):.0f} s, clients {clients}")
        runs2 = scenarios.concurrent_http(model, engine, s2_clips, clients, koe_sizes, log, args.rounds)
        results["S2"] = {
            "requests": len(s2_clips),
            "audio_s": round(sum(c.duration for c in s2_clips), 1),
            "clients": clients,
            "rounds": args.rounds,
            "runs": runs2,
        }
    if "S3" in only:
        scored = [c for c in clips if c.reference]
        log(f"S3: {len(scored)} clips with references, {sum(c.duration for c in scored):.0f} s")
        configs = scenarios.configurations(model, engine, batch_sizes[:1], koe_sizes[:1])
        runs3 = scenarios.one_request(engine, configs, scored, warmup, log)
        log("S3, the same clips with white noise at 0 dB SNR (where the temperature fallback triggers)")
        keep = ("recipe", "koe sequential", f"koe batched, bs {koe_sizes[0]}")
        noisy_configs = {name: fn for name, fn in configs.items() if name.startswith(keep)}
        runs3n = scenarios.one_request(engine, noisy_configs, scenarios.noisy(scored), warmup, log)
        results["S3"] = {
            "clips": len(scored),
            "audio_s": round(sum(c.duration for c in scored), 1),
            "runs": {name: run.as_dict() for name, run in runs3.items()},
            "noisy_runs": {name: run.as_dict() for name, run in runs3n.items()},
        }
    today = dt.date.today().isoformat()
    results["run"] = {
        "date": today,
        "model": args.model,
        "device": engine.placement.device,
        "compute_type": engine.placement.compute_type,
        "full": full,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": round(time.perf_counter() - began, 1),
    }
    paths = report.write_all(results, args.out / f"{today}-{hardware()['host']}")
    for path in paths:
        log(f"wrote {path}")
    return 0


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = pages * size / 1024**3
    except (ValueError, OSError):
        pass
    gpu = None
    try:
        if ctranslate2.get_cuda_device_count() > 0:
            import subprocess

            gpu = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
                ).stdout.strip()
                or "CUDA device"
            )
    except Exception:
        gpu = None
    return {
        "host": socket.gethostname().split(".")[0],
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
    }


if __name__ == "__main__":
    raise SystemExit(main())
