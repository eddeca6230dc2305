"""`python -m bench.layouts`: koe's CPU layouts side by side (model replicas x threads, and the CPU batch cap),
with faster-whisper's batched pipeline beside them, on the first 420 s of the long English prompts file, text-only
and with timestamps, best of 2 rounds, all in one process. What `Engine.cpu_layout` was chosen by."""

from __future__ import annotations

import time

from faster_whisper import BatchedInferencePipeline

import koe.engine as engine_module
from bench import data
from koe.audio import SAMPLE_RATE, Audio, decode
from koe.options import parse_options


def main() -> None:
    samples = decode(data.AUDIO_DIR / "long" / "en_asterisk_prompts_even.opus").samples[: 420 * SAMPLE_RATE]
    duration = len(samples) / SAMPLE_RATE
    engines = {}
    for replicas, threads in ((1, 2), (2, 1)):
        for cap in (4, 8):
            engine_module.CPU_BATCH_SIZE = cap  # read when the batcher starts, just below
            engine = engine_module.Engine.load("tiny.en", cpu_threads=threads, num_workers=replicas)
            _ = engine.batcher
            engines[f"{replicas}x{threads} cap{cap}"] = engine
    model = engine_module.Engine.load("tiny.en", cpu_threads=2, num_workers=1).model

    def pipeline() -> str:
        segments, _ = BatchedInferencePipeline(model).transcribe(samples, batch_size=8, beam_size=5)
        return "".join(s.text for s in segments)

    configs = {"faster-whisper batched, bs 8": pipeline}
    for name, engine in engines.items():
        for timestamps in (False, True):
            options = parse_options({"mode": "batched", "timestamps": timestamps})
            configs[f"koe {name} timestamps={timestamps}"] = lambda e=engine, o=options: (
                e.transcribe(Audio(samples), o).text
            )
    for run in configs.values():  # warm-up
        run()
    best: dict[str, tuple[float, float]] = {}
    for _ in range(2):
        for name, run in configs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            kept = best.get(name)
            best[name] = (min(wall, kept[0]), min(cpu, kept[1])) if kept else (wall, cpu)
    for name, (wall, cpu) in best.items():
        print(f"{name:40s} x real time {duration / wall:5.1f}   CPU s/audio s {cpu / duration:.4f}")


if __name__ == "__main__":
    main()
