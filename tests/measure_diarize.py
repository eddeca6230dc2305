"""Measure diarization once: CPU time against transcription's, and the error rate, on a long real file.

    .venv/bin/python tests/measure_diarize.py [../shared/audio/long/en_read_speech_concat.opus]

The file's `.segments.tsv` gives each utterance's clip, hence its reader (LibriSpeech speaker id, LJ Speech,
the LibriVox readers, JFK): the reference for the diarization error rate (pyannote.metrics, no collar).
Prints one line of figures; the README quotes it as measured once.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from pyannote.core import Annotation, Segment, Timeline
from pyannote.metrics.diarization import DiarizationErrorRate

from koe import diarize
from koe.audio import decode
from koe.engine import Engine
from koe.options import TranscribeOptions
from koe.speaker_encoder import shared_encoder

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "audio" / "long" / "en_read_speech_concat.opus"


def reader(clip: str) -> str:
    """The reader of a clip of ../shared/audio/en by its name."""
    if clip.startswith("ls_"):
        return "librispeech-" + clip.split("_")[2].split("-")[0]
    if clip.startswith("librivox_shakespeare"):
        return "librivox-sonnets"
    return clip.split("_")[0]  # jfk, ljspeech, librivox (Sense and Sensibility)


def reference(path: Path) -> Annotation:
    ann = Annotation()
    with open(path.with_suffix(".segments.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            ann[Segment(float(row["start_s"]), float(row["end_s"]))] = reader(row["segment_id"])
    return ann


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    audio = decode(path)
    shared_encoder()
    engine = Engine.load("tiny.en", device="cpu")
    plain = TranscribeOptions(word_timestamps=True)  # what diarize=true asks of the model
    engine.transcribe(audio, TranscribeOptions())  # warm up

    cpu = time.process_time()
    wall = time.perf_counter()
    engine.transcribe(audio, plain)
    transcribe_cpu, transcribe_wall = time.process_time() - cpu, time.perf_counter() - wall

    cpu = time.process_time()
    wall = time.perf_counter()
    turns = diarize.diarize(audio.samples)
    diarize_cpu, diarize_wall = time.process_time() - cpu, time.perf_counter() - wall

    wall = time.perf_counter()
    engine.transcribe(audio, TranscribeOptions(diarize=True))
    both_wall = time.perf_counter() - wall

    hyp = Annotation()
    for t in turns:
        hyp[Segment(t.start, t.end)] = t.speaker
    ref = reference(path)
    der = DiarizationErrorRate()(ref, hyp, uem=Timeline([Segment(0, audio.duration)]))
    print(
        f"{path.name}: {audio.duration:.0f} s, {len(ref.labels())} readers, found {len(hyp.labels())}; "
        f"DER {der:.1%}; diarization CPU {diarize_cpu:.1f} s (wall {diarize_wall:.1f} s); tiny.en transcription "
        f"with word timestamps CPU {transcribe_cpu:.1f} s (wall {transcribe_wall:.1f} s); "
        f"transcription + diarization together wall {both_wall:.1f} s"
    )


if __name__ == "__main__":
    main()
