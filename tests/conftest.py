"""Shared fixtures: the real tiny.en / base models and the real speech in ../shared/audio."""

from __future__ import annotations

import csv
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from koe.engine import Engine

# Tests never reach a model hub: faster-whisper/huggingface_hub fail fast instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
AUDIO_DIR = Path(os.environ.get("KOE_TEST_AUDIO", ROOT.parent / "shared" / "audio"))


@dataclass(frozen=True)
class Clip:
    path: Path
    language: str
    duration: float
    reference: str
    approximate: bool


def _read_manifest() -> list[Clip]:
    clips = []
    with (AUDIO_DIR / "MANIFEST.tsv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if not row["duration_s"]:  # not speech (the Open JTalk voice file)
                continue
            text = row["transcript_file_or_text"]
            if text.endswith(".txt") and (AUDIO_DIR / text).is_file():
                text = (AUDIO_DIR / text).read_text(encoding="utf-8")
            clips.append(
                Clip(AUDIO_DIR / row["file"], row["language"], float(row["duration_s"] or 0), text,
                     "approximate" in text.lower())
            )  # fmt: skip
    return clips


@pytest.fixture(scope="session")
def manifest() -> list[Clip]:
    if not (AUDIO_DIR / "MANIFEST.tsv").is_file():
        pytest.fail(f"the shared audio is missing at {AUDIO_DIR} (set KOE_TEST_AUDIO)")
    return _read_manifest()


@pytest.fixture(scope="session")
def jfk() -> Path:
    return AUDIO_DIR / "en" / "jfk.flac"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("koe-cache")


@pytest.fixture(scope="session")
def engine(cache_dir: Path) -> Engine:
    """The real tiny.en model (English-only, fast), loaded once per session."""
    from koe.engine import Engine

    return Engine.load("tiny.en", cache_dir=cache_dir, device="cpu", cpu_threads=2)


@pytest.fixture(scope="session")
def base_engine(cache_dir: Path) -> Engine:
    """The real base model (multilingual), loaded once per session."""
    from koe.engine import Engine

    return Engine.load("base", cache_dir=cache_dir, device="cpu", cpu_threads=2)


@pytest.fixture(scope="session", autouse=True)
def _no_threads_left_in_the_model() -> Iterator[None]:
    """Some tests release a running job on purpose; its thread leaves the model at its next progress report.
    Wait for those threads before the interpreter finalizes: finalizing under a thread that is inside
    CTranslate2 aborts the process (SIGABRT), which would turn a green run red."""
    yield
    deadline = time.monotonic() + 180
    for thread in threading.enumerate():
        if thread.name.startswith("koe-worker") and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
