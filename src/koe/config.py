"""Settings: read once from the environment (prefix `KOE_`) in `main()` / `create_app()` and passed down.

Nothing below this module reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Device = Literal["auto", "cpu", "cuda"]

GB = 1024**3


def default_data_dir() -> Path:
    return Path.home() / ".koe"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "koe"


class Settings(BaseSettings):
    """Every tunable of koe. Environment variables are `KOE_<FIELD>`, e.g. `KOE_MODEL=base`."""

    model_config = SettingsConfigDict(env_prefix="KOE_", extra="ignore")

    # Model and device
    model: str = Field("tiny.en", description="Model name, CTranslate2 folder or model.tar.gz to serve.")
    device: Device = Field("auto", description="auto: CUDA when CTranslate2 sees a GPU, else CPU.")
    compute_type: str = Field("auto", description="auto: float16 on CUDA, int8 on CPU.")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 intra-op threads on CPU (0: its default).")
    num_workers: int = Field(1, ge=1, le=64, description="Model replicas that may run at once.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Joined and downloaded models.")
    batch_size: int = Field(16, ge=1, le=256, description="Chunks per batch in batched mode.")

    # Input limits
    max_input_bytes: int = Field(1 * GB, ge=1, description="Largest accepted input (SageMaker async: 1 GB).")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="Longest accepted audio, in seconds.")

    # Server
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir, description="Queue database and file:// store.")
    spool_dir: Path | None = Field(None, description="Where request bodies are spooled (None: the system temp).")
    shutdown_grace_s: float = Field(
        25.0, ge=0, description="On SIGTERM, how long in-flight requests may finish (SageMaker kills at 30 s)."
    )
