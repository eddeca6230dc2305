"""What the default model costs on this CPU: base against tiny.en, on the same audio, in one process.

    .venv/bin/python tests/measure_default_model.py [AUDIO_DIR]

Prints a Markdown table (x real time, CPU seconds per audio second) for the README's Accuracy section. Each
model transcribes jfk.flac once first (warm-up), then the first 180 s of long/en_read_speech_concat.opus with
the defaults (batched, VAD, beam 5); base also the six Japanese clips of ja/ (tiny.en cannot do Japanese).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from koe import Engine, decode
from koe.audio import Audio

RATE = 16_000


def main(audio_dir: Path) -> None:
    english = Audio(decode(audio_dir / "long" / "en_read_speech_concat.opus").samples[: 180 * RATE])
    japanese = Audio(np.concatenate([decode(p).samples for p in sorted((audio_dir / "ja").iterdir())]))
    runs = {
        "tiny.en": {"en 180 s (long/en_read_speech_concat.opus)": english},
        "base": {
            "en 180 s (long/en_read_speech_concat.opus)": english,
            f"ja {japanese.duration:.0f} s (ja/, 6 clips)": japanese,
        },
    }
    print("| model | audio | x real time | CPU s per audio s |\n| --- | --- | --- | --- |")
    for name, clips in runs.items():
        engine = Engine.load(name, device="cpu")
        engine.transcribe(decode(audio_dir / "en" / "jfk.flac"))  # warm-up
        for label, audio in clips.items():
            wall, cpu = time.perf_counter(), time.process_time()
            engine.transcribe(audio)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"| {name} | {label} | {audio.duration / wall:.1f}x | {cpu / audio.duration:.3f} |", flush=True)
        engine.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1].parent / "shared" / "audio")
