"""Where a benchmark ran: the machine, the library versions, koe's effective batch size."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

import ctranslate2
import faster_whisper

from koe.engine import CPU_BATCH_SIZE, Engine


def koe_batch_size(engine: Engine) -> int:
    """The largest batch koe's batcher forms (the engine caps it on a CPU)."""
    return engine.batch_size if engine.placement.device == "cuda" else min(engine.batch_size, CPU_BATCH_SIZE)


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0.0
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = pages * size / 1024**3
    except (ValueError, OSError):
        pass
    gpu = None
    try:
        if ctranslate2.get_cuda_device_count() > 0:
            gpu = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
                ).stdout.strip()
                or "CUDA device"
            )
    except Exception:
        gpu = None
    return {
        "host": socket.gethostname().split(".")[0],
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory, 1),
        "gpu": gpu,
        "python": platform.python_version(),
        "faster_whisper": faster_whisper.__version__,
        "ctranslate2": ctranslate2.__version__,
    }
