"""The container side of a SageMaker deploy: the entrypoint's CUDA forward-compatibility decision (the real
shell script, run by /bin/sh) and /ping turning unhealthy after a fatal CUDA error (real server, real model)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from koe.api import create_app
from koe.config import Settings
from koe.engine import Engine, cuda_fatal
from support.serving import server_in_thread, wait_ready

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPAT = "570.124.06"  # the driver CUDA 12.8's compat libraries come from (libcuda.so.570.124.06)
NVRM = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Tue Mar  4 21:52:05 UTC 2025\nGCC version:  gcc 11\n"


def sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(["sh", "-c", script], env=base, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    ("host", "compat", "needed"),
    [
        ("550.163.01", COMPAT, True),  # al2-ami-sagemaker-inference-gpu-3-1: older driver, compat libs needed
        ("535.230.02", COMPAT, True),
        ("470.256.02", COMPAT, True),
        (COMPAT, COMPAT, False),  # the same driver: the host's own libcuda
        ("570.133.20", COMPAT, False),  # newer: compat libs would shadow the newer libcuda
        ("580.65.06", COMPAT, False),  # al2023-ami-sagemaker-inference-gpu-4-1
        ("", COMPAT, False),  # no GPU (a CPU instance)
        ("550.163.01", "", False),  # no compat libraries in the image
    ],
)
def test_cuda_compat_decision(host: str, compat: str, needed: bool) -> None:
    result = sh(f'. "{DOCKER}/cuda-compat.sh"; cuda_compat_needed "$H" "$C"', H=host, C=compat)
    assert result.returncode == (0 if needed else 1), result.stderr


@pytest.fixture
def fake_host(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A compat folder like the nvidia/cuda image's, a /proc/driver/nvidia/version, and a koe-container that
    prints what it was started with."""
    compat = tmp_path / "compat"
    compat.mkdir()
    (compat / f"libcuda.so.{COMPAT}").write_bytes(b"")
    (compat / "libcuda.so.1").symlink_to(f"libcuda.so.{COMPAT}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "koe-container"
    fake.write_text('#!/bin/sh\necho "args=$*"\necho "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"\n')
    fake.chmod(0o755)
    yield {"compat": compat, "version": tmp_path / "nvidia-version", "bin": bin_dir}


def entrypoint(host: dict[str, Any], driver: str | None, library_path: str = "") -> subprocess.CompletedProcess[str]:
    if driver is not None:
        host["version"].write_text(NVRM.format(driver))
    else:
        host["version"].unlink(missing_ok=True)
    env = {
        "PATH": f"{host['bin']}:{os.environ['PATH']}", "KOE_CUDA_COMPAT_DIR": str(host["compat"]),
        "KOE_NVIDIA_VERSION_FILE": str(host["version"]),
    }  # fmt: skip
    if library_path:
        env["LD_LIBRARY_PATH"] = library_path
    return subprocess.run(
        [str(DOCKER / "entrypoint.sh"), "serve"], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_entrypoint_puts_compat_first_only_for_an_older_driver(fake_host: dict[str, Any]) -> None:
    older = entrypoint(fake_host, "550.163.01", "/usr/local/nvidia/lib64")
    assert older.returncode == 0, older.stderr
    assert "args=serve" in older.stdout
    assert f"LD_LIBRARY_PATH={fake_host['compat']}:/usr/local/nvidia/lib64" in older.stdout
    assert f"550.163.01 is older than {COMPAT}" in older.stderr

    newer = entrypoint(fake_host, "580.65.06", "/usr/local/nvidia/lib64")
    assert "LD_LIBRARY_PATH=/usr/local/nvidia/lib64\n" in newer.stdout and "no CUDA compat needed" in newer.stderr

    cpu = entrypoint(fake_host, None)  # no /proc/driver/nvidia/version: a CPU instance
    assert cpu.returncode == 0 and "LD_LIBRARY_PATH=\n" in cpu.stdout and cpu.stderr == ""


def test_entrypoint_without_compat_libraries_changes_nothing(fake_host: dict[str, Any]) -> None:
    for item in fake_host["compat"].iterdir():
        item.unlink()
    result = entrypoint(fake_host, "550.163.01")
    assert result.returncode == 0 and "LD_LIBRARY_PATH=\n" in result.stdout and "args=serve" in result.stdout


def test_cuda_fatal_tells_sticky_errors_from_recoverable_ones() -> None:
    assert cuda_fatal(RuntimeError("CUDA failed with error an illegal memory access was encountered"))
    assert cuda_fatal(RuntimeError("cuBLAS failed with status CUBLAS_STATUS_EXECUTION_FAILED"))
    assert cuda_fatal(RuntimeError("CUDA error: device-side assert triggered"))
    assert cuda_fatal(RuntimeError("CUDA failed with error out of memory")) is None  # the next batch may fit
    assert cuda_fatal(ValueError("illegal memory access")) is None  # not from CUDA
    assert cuda_fatal(RuntimeError("unsupported language")) is None


def test_ping_turns_unhealthy_after_a_fatal_cuda_error(
    cache_dir: Path, jfk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine.load("tiny.en", cache_dir=cache_dir, device="cpu", cpu_threads=2)
    settings = Settings(model="tiny.en", device="cpu")
    app = create_app(settings, engine_factory=lambda _: engine)
    headers = {
        "Content-Type": "audio/flac",
        "Accept": "text/plain",
        "X-Amzn-SageMaker-Custom-Attributes": "beam_size=1",
    }
    with server_in_thread(app) as url:
        wait_ready(url)
        first = httpx.post(f"{url}/invocations", content=jfk.read_bytes(), headers=headers, timeout=120)
        assert first.status_code == 200 and "country" in first.text.lower()

        # A recoverable GPU error fails the request only.
        def out_of_memory(*_: Any, **__: Any) -> Any:
            raise RuntimeError("CUDA failed with error out of memory")

        monkeypatch.setattr(engine, "_batched", out_of_memory)
        assert (
            httpx.post(f"{url}/invocations", content=jfk.read_bytes(), headers=headers, timeout=120).status_code == 500
        )
        assert httpx.get(f"{url}/ping").status_code == 200

        # A sticky one (the GPU itself is gone here; CPU-only CI can only raise it as CTranslate2 reports it).
        def illegal_access(*_: Any, **__: Any) -> Any:
            raise RuntimeError("CUDA failed with error an illegal memory access was encountered")

        monkeypatch.setattr(engine, "_batched", illegal_access)
        failed = httpx.post(f"{url}/invocations", content=jfk.read_bytes(), headers=headers, timeout=120)
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "engine_error"
        ping = httpx.get(f"{url}/ping")
        assert ping.status_code == 503, ping.text
        assert ping.json()["error"]["type"] == "model_unavailable"
        assert "must be replaced" in ping.json()["error"]["message"] and "illegal memory access" in ping.text
    engine.close()
