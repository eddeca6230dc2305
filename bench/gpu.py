"""`python -m bench gpu`: the whole GPU comparison in one short run (bench/gpu.sh runs it on the lent machine).

For each model (tiny.en and base from their folders, random-weight large-v3 and large-v3-turbo shapes built
here by bench/random_model.py) and each beam size (5, then greedy): S1 (one long file: the recipe,
faster-whisper sequential with timestamps, its batched pipeline, koe text-only and with timestamps) and S2
at engine level (N threads calling the engine: faster-whisper per request, the per-request batched pipeline
of the peer servers, koe). Needs only the engine and its dependencies (no HTTP server, no matplotlib).

Random-weight models decode a fixed number of tokens per chunk (end of text suppressed) so every
configuration does the same work; their figures time a large model's compute and say nothing about accuracy.
Results are written after every step; a time budget (`--budget-s`, from the start of the script) skips what
would not fit, and the report lists what was skipped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data, report, scenarios
from bench.environment import hardware, koe_batch_size
from bench.random_model import build
from bench.scenarios import FW_PER_REQUEST, KOE_TIMESTAMPS, Decoding, s1_results
from koe.engine import Engine

STARTED = time.time()


@dataclass(frozen=True)
class Profile:
    """How much of each scenario a model gets (large models are slow per request: less audio, fewer levels)."""

    s1_seconds: float
    fw_batch_sizes: tuple[int, ...]
    clips: int
    levels: tuple[int, ...]
    s1_tokens: int | None = None  # fixed-length decoding (random models): tokens per S1 chunk (30 s of speech)
    s2_tokens: int | None = None  # ... and per S2 request (one short clip: 1-30 s, 6.6 s on average)
    s2_timestamps: bool = True  # koe with timestamps in S2 (random timestamps only add continuations)
    per_request: bool = True  # faster-whisper sequential per request in S2 (slow on large models)


REAL = Profile(s1_seconds=300, fw_batch_sizes=(16, 32), clips=64, levels=(1, 8, 32, 64))
# 128 new tokens: CTranslate2 returns (4 + 128) / 2 = 66 per chunk (see Decoding), about what 30 s of speech
# holds, and at least koe's 2 tokens per second of a 30 s chunk, below which text-only decoding suspects a
# lost tail and decodes it again (work the others never do)
LARGE = Profile(
    s1_seconds=120,
    fw_batch_sizes=(16,),
    clips=32,
    levels=(8, 32),
    s1_tokens=128,
    s2_tokens=128,
    s2_timestamps=False,
    per_request=False,
)
SMOKE = Profile(s1_seconds=12, fw_batch_sizes=(4,), clips=2, levels=(1, 2), s1_tokens=24, s2_tokens=24)
PER_REQUEST_MAX_LEVEL = 8  # faster-whisper sequential per request: more threads only queue on the model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[], help="NAME=FOLDER of a real model (repeatable)")
    p.add_argument("--random", action="append", default=None, help="random-weight shape (repeatable; default "
                   "large-v3-turbo and large-v3)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/tmp/koe-bench-models"), help="where random models go")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    p.add_argument("--name", default=None, help="results file stem (default <date>-gpu-<host>)")
    p.add_argument("--beams", default="5,1", help="beam sizes, in order (default 5,1)")
    p.add_argument("--batch-size", type=int, default=16, help="koe's batch size (default 16, the server's)")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--budget-s", type=float, default=420, help="stop measuring this long after the start")
    p.add_argument("--started", type=float, default=None, help="the start, epoch seconds (default: now)")
    p.add_argument("--smoke", action="store_true", help="tiny amounts of everything (a CPU check of the plan)")
    args = p.parse_args(argv)
    began = time.perf_counter()
    started = args.started or STARTED

    def log(line: str) -> None:
        print(f"[{time.time() - started:6.0f}s] {line}", flush=True)

    def stop() -> bool:
        return bool(time.time() - started > args.budget_s)

    models = [(name, Path(folder), REAL) for name, folder in (m.split("=", 1) for m in args.model)]
    for shape in args.random if args.random is not None else ["large-v3-turbo", "large-v3"]:
        folder = args.work / f"random-{shape}"
        if not (folder / "model.bin").is_file():
            log(f"building random-weight {shape} in {folder}")
            build(shape, folder)
        models.append((f"random {shape}", folder, LARGE))
    if args.smoke:
        models = [(name, folder, SMOKE) for name, folder, _ in models]
    beams = [int(b) for b in args.beams.split(",")]
    results: dict[str, Any] = {
        "hardware": hardware(),
        "run": {
            "date": dt.date.today().isoformat(),
            "command": "python -m bench gpu " + " ".join(argv or []),
            "budget_s": args.budget_s,
            "batch_size": args.batch_size,
            "finished": False,
        },
        "steps": [],
    }
    stem = args.out / (args.name or f"{results['run']['date']}-gpu-{results['hardware']['host']}")

    def save() -> None:
        results["run"]["seconds"] = round(time.perf_counter() - began, 1)
        for path in report.write(results, stem, markdown=markdown):
            log(f"wrote {path}")

    warmup = data.warmup_clip()
    long_audio: dict[float, data.Clip] = {}
    clip_sets: dict[int, list[data.Clip]] = {}
    engines: dict[str, Engine] = {}
    # beam 5 for every model first, then greedy: the budget, if short, cuts the greedy repeats
    for beam in beams:
        for name, folder, profile in models:
            step: dict[str, Any] = {"model": name, "beam_size": beam, "skipped": []}
            results["steps"].append(step)
            if stop():
                step["skipped"].append("all (time budget)")
                save()
                continue
            if name not in engines:
                for other in list(engines):  # one model in memory at a time
                    engines.pop(other).close()
                engines[name] = Engine.load(str(folder), device=args.device, batch_size=args.batch_size)
            engine = engines[name]
            step["device"] = f"{engine.placement.device}/{engine.placement.compute_type}"
            step["koe_batch_size"] = koe_batch_size(engine)
            s1_decoding = Decoding(beam, profile.s1_tokens)
            s1_decoding.apply(engine)
            step["S1_decoding"] = s1_decoding.as_dict()
            long = long_audio.get(profile.s1_seconds) or data.long_audio(profile.s1_seconds)
            long_audio[profile.s1_seconds] = long
            log(f"{name}, beam {beam}: S1 on {long.duration:.0f} s")
            configs = scenarios.one_request_configs(engine, s1_decoding, list(profile.fw_batch_sizes))
            runs = scenarios.one_request(engine, configs, [long], warmup, log)
            step["S1"] = s1_results(long, runs, 1)
            save()
            if stop():
                step["skipped"].append("S2 (time budget)")
                continue
            s2_decoding = Decoding(beam, profile.s2_tokens)
            s2_decoding.apply(engine)
            step["S2_decoding"] = s2_decoding.as_dict()
            clips = clip_sets.get(profile.clips) or data.short_clips(profile.clips)
            clip_sets[profile.clips] = clips
            log(f"{name}, beam {beam}: S2 on {len(clips)} clips, threads {list(profile.levels)}")
            s2_configs = scenarios.concurrent_configs(engine, s2_decoding)
            if not profile.s2_timestamps:
                s2_configs.pop(KOE_TIMESTAMPS)
            if not profile.per_request:
                s2_configs.pop(FW_PER_REQUEST)
            step["S2"] = engine_s2(engine, s2_configs, clips, profile, log, stop, step["skipped"])
            save()
    for engine in engines.values():
        engine.close()
    results["run"]["finished"] = True
    save()
    return 0


def engine_s2(
    engine: Engine,
    configs: dict[str, scenarios.Transcribe],
    clips: list[data.Clip],
    profile: Profile,
    log: scenarios.Log,
    stop: Any,
    skipped: list[str],
) -> dict[str, Any]:
    levels = list(profile.levels)
    runs: dict[str, dict[str, Any]] = {name: {} for name in configs}
    for n in levels:
        # faster-whisper sequential per request gains nothing past a few threads (they queue on the model)
        here = {k: v for k, v in configs.items() if k != FW_PER_REQUEST or n <= PER_REQUEST_MAX_LEVEL}
        measured = scenarios.concurrent_engine(engine, here, clips, [n], log, stop=stop, warm=n == levels[0])
        for name, by_n in measured.items():
            runs[name].update(by_n)
            if str(n) not in by_n:
                skipped.append(f"S2 {name} at {n} threads (time budget)")
    return {
        "transport": "engine",
        "unit": "threads",
        "requests": len(clips),
        "audio_s": round(sum(c.duration for c in clips), 1),
        "levels": levels,
        "rounds": 1,
        "runs": runs,
    }


def markdown(results: dict[str, Any]) -> str:
    hw, run = results["hardware"], results["run"]
    lines = [
        f"# koe GPU benchmark, {run['date']} on {hw['host']}",
        "",
        f"{hw['gpu'] or 'no GPU'}; {hw['cpu']} ({hw['cores']} cores). faster-whisper {hw['faster_whisper']}, "
        f"CTranslate2 {hw['ctranslate2']}. Command: `{run['command']}` ({run.get('seconds', 0):.0f} s, budget "
        f"{run['budget_s']:.0f} s{'' if run.get('finished') else ', not finished'}); koe batch size "
        f"{run['batch_size']}. Random-weight models decode a fixed number of tokens per chunk (S1 / S2 decoding "
        "below each heading): their figures time the compute of that shape, not its accuracy.",
        "",
        report.FIGURES,
        "",
        "## Summary",
        "",
        "| model | beam | S1 best fw batched | S1 koe text-only | S1 koe timestamps | S2 peer, most threads | "
        "S2 koe text-only, most threads |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for step in results["steps"]:
        lines.append(summary_row(step))
    lines.append("")
    for step in results["steps"]:
        lines += [f"## {step['model']}, beam {step['beam_size']}", ""]
        if step.get("S1_decoding") or step.get("S2_decoding"):
            lines += [f"S1 decoding {step.get('S1_decoding')}; S2 decoding {step.get('S2_decoding')}.", ""]
        if step["skipped"]:
            lines += ["Skipped: " + "; ".join(step["skipped"]) + ".", ""]
        lines += report.sections(step, "###")
    return "\n".join(lines)


def summary_row(step: dict[str, Any]) -> str:
    def cell(record: dict[str, Any] | None) -> str:
        if not record or record.get("x_real_time") is None:
            return "-"
        return f"{record['x_real_time']:.1f} · {record['cpu_s_per_audio_s']:.3f}"

    s1, s2 = step.get("S1"), step.get("S2")
    best = s1["runs"].get(s1.get("best_fw_batched") or "") if s1 else None
    koe_text = s1["runs"].get(scenarios.KOE_TEXT) if s1 else None
    koe_ts = s1["runs"].get(scenarios.KOE_TIMESTAMPS) if s1 else None
    peer = koe2 = None
    if s2:
        top = str(s2["levels"][-1])
        peer = s2["runs"].get(scenarios.PEER, {}).get(top)
        koe2 = s2["runs"].get(scenarios.KOE_TEXT, {}).get(top)
    cells = [cell(best), cell(koe_text), cell(koe_ts), cell(peer), cell(koe2)]
    return f"| {step['model']} | {step['beam_size']} | " + " | ".join(cells) + " |"
