"""The English-only model's mean log-probability (koe.hallucination.mean_logprob) on every clip of en/ and ja/,
and whether koe warns: the margins behind NOT_ENGLISH_LOGPROB.

    .venv/bin/python tests/measure_language_warning.py [AUDIO_DIR] [MODEL]

Prints one line per clip (its score, the share of its speech decoded by temperature fallback: of the segments
kept, since the warning names only the score) and, per language, the lowest and highest score and how many
clips were warned.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from koe import Engine, decode
from koe.hallucination import fallback_share, mean_logprob
from koe.transcript import Transcript


def score(transcript: Transcript) -> float | None:
    """The score review() judged: it is in the warning when there is one (the segments it names may have been
    dropped since); otherwise nothing was made up, so the kept segments give it."""
    for warning in transcript.warnings:
        found = re.search(r"mean log-probability (-?[0-9.]+)", warning)
        if found:
            return float(found.group(1))
    measured = mean_logprob(transcript.segments)
    return measured[0] if measured else None


def main(audio_dir: Path, model: str) -> None:
    engine = Engine.load(model, device="cpu")
    for language in ("en", "ja"):
        scores: list[float] = []
        paths = sorted(p for p in (audio_dir / language).iterdir() if p.suffix in (".wav", ".flac", ".mp3"))
        warned = 0
        for path in paths:
            transcript = engine.transcribe(decode(path))
            value = score(transcript)
            warned += bool(transcript.warnings)
            if value is not None:
                scores.append(value)
            shown = "-" if value is None else f"{value:.3f}"
            fallback = f"fallback {fallback_share(transcript.segments):.0%}"
            print(f"{language} {path.name:50s} {shown:>7s} {fallback:>13s} {'warned' if transcript.warnings else ''}",
                  flush=True)  # fmt: skip
        if scores:
            print(f"{language}: {len(paths)} clips, scores {min(scores):.2f} to {max(scores):.2f}, {warned} warned")


if __name__ == "__main__":
    default_audio = Path(__file__).resolve().parents[1].parent / "shared" / "audio"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default_audio, sys.argv[2] if len(sys.argv) > 2 else "tiny.en")
