"""Settings: read once from the environment (prefix `KOE_`) in `main()` / `create_app()` and passed down.

Nothing below this module reads the environment itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    # base, not tiny.en: koe's users speak Japanese as much as English, and English-only models turn other
    # languages into made-up English ("Thank you for watching"); base detects the language (issue 17).
    model: str = Field(
        "base", description="Model name, CTranslate2 folder or model.tar.gz to serve (base: multilingual, bundled)."
    )
    device: Device = Field("auto", description="auto: CUDA when CTranslate2 sees a GPU, else CPU.")
    compute_type: str = Field("auto", description="auto: float16 on CUDA, int8 on CPU.")
    cpu_threads: int = Field(0, ge=0, description="CTranslate2 intra-op threads on CPU (0: its default).")
    num_workers: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Model replicas that may run at once. None: 2 on a CPU (each with half the cores: measured "
        "faster than one replica with all of them), 1 on a GPU.",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Joined and downloaded models.")
    batch_size: int = Field(16, ge=1, le=256, description="Chunks per batch in batched mode.")

    # Input limits
    max_input_bytes: int = Field(1 * GB, ge=1, description="Largest accepted input (SageMaker async: 1 GB).")
    max_duration_s: float = Field(4 * 3600.0, gt=0, description="Longest accepted audio, in seconds.")
    max_audio_memory: int = Field(
        2 * GB,
        ge=1,
        description="Decoded audio (float32) all requests and jobs may hold at once; past it synchronous routes "
        "answer 503 with Retry-After and jobs wait.",
    )

    # Server
    host: str = "127.0.0.1"
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the server answers to besides loopback ones (localhost, 127.0.0.1, ::1) and the "
        "address it binds (env: comma-separated). `*`: any Host (the SageMaker container, behind its proxy). "
        "Guards against DNS rebinding; state-changing requests from another site's page are refused too.",
    )
    insecure: bool = Field(
        False,
        description="Allow `koe serve` to listen beyond loopback without API keys (it refuses otherwise).",
    )
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir, description="Queue database and file:// store.")
    spool_dir: Path | None = Field(None, description="Where request bodies are spooled (None: the system temp).")
    shutdown_grace_s: float = Field(
        25.0, ge=0, description="On SIGTERM, how long in-flight requests may finish (SageMaker kills at 30 s)."
    )

    # Local async endpoint (koe serve / koe worker): queue, workers, storage, notifications
    jobs_enabled: bool = Field(
        False,
        description="Run the job queue, a worker pool and /v1/jobs in the app. `koe serve` turns it on unless "
        "KOE_JOBS_ENABLED is set; the SageMaker container leaves it off (SageMaker has its own queue).",
    )
    endpoint_name: str = Field("local", description="Endpoint name in notifications and metrics.")
    worker_concurrency: int | None = Field(
        None,
        ge=0,
        le=256,
        description="Jobs one worker pool runs at once (0: none). None: as many as one batch holds (batch_size on "
        "a GPU, 4 on a CPU), so that queued jobs share the model's batches.",
    )
    model_idle_s: float = Field(300.0, ge=0, description="Unload the model after this long idle (0: never).")
    lease_s: float = Field(30.0, gt=0, description="A claimed job returns to the queue if not renewed this long.")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a worker renews its leases.")
    poll_s: float = Field(0.5, gt=0, description="How often an idle worker looks for queued jobs.")
    reap_interval_s: float = Field(5.0, gt=0, description="How often lapsed leases and expired jobs are swept.")
    max_attempts: int = Field(3, ge=1, le=100, description="Runs a job gets before its lapsed lease fails it.")
    request_ttl_s: int = Field(21600, ge=1, le=21600, description="Default queue TTL (SageMaker: 6 h).")
    invocation_timeout_s: int = Field(900, ge=1, le=3600, description="Default processing limit (15 min).")
    output_path: str | None = Field(None, description="Where results go (None: file://<data_dir>/outputs).")
    failure_path: str | None = Field(None, description="Where errors go (None: file://<data_dir>/failures).")
    storage_roots: list[Path] = Field(default_factory=list, description="Extra folders file:// may reach.")
    s3_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Buckets a client may name in s3:// locations (env: comma-separated); `*`: any bucket. The "
        "buckets of output_path and failure_path are allowed too. Empty: clients may name none.",
    )
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); None: AWS.")
    s3_region: str | None = Field(None, description="S3 region (None: boto3's default chain).")
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_session_token: SecretStr | None = None
    storage_attempts: int = Field(4, ge=1, le=20, description="Tries per storage call on transient errors.")
    s3_timeout_s: float = Field(60.0, gt=0, le=3600, description="S3 read timeout per call (then it is retried).")
    webhook_url: str | None = Field(None, description="Endpoint-wide webhook for job notifications.")
    webhook_attempts: int = Field(5, ge=1, le=20, description="Tries per webhook delivery (with backoff).")
    webhook_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Hosts a job's own webhook_url may name (env: comma-separated). `*`: any host whose addresses "
        "are all public; a host named here may resolve to loopback or private addresses too. Empty: jobs may not "
        "set a webhook. (The endpoint-wide webhook_url is the operator's and is not checked.)",
    )
    keep_uploads: bool = Field(False, description="Keep uploaded audio in the data folder after its job ends.")
    sns_success_topic: str | None = Field(None, description="SNS topic ARN for completed jobs.")
    sns_error_topic: str | None = Field(None, description="SNS topic ARN for failed jobs.")

    # HTTP APIs people already use (OpenAI audio API, SageMaker runtime API) and API keys
    max_sync_bytes: int = Field(
        100 * 1024**2,
        ge=1,
        description="Largest upload on the synchronous routes (/v1/audio/*, InvokeEndpoint); larger: use async.",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="`koe serve` only: when set, every route but /ping needs `Authorization: Bearer <key>` or "
        "`X-Api-Key: <key>` (env: comma-separated). The SageMaker container ignores it: IAM guards it.",
    )
    strict_endpoint_name: bool = Field(
        False,
        description="SageMaker runtime API: answer only for `endpoint_name` (others: ValidationError, as AWS "
        "does for unknown endpoints). Default: any valid endpoint name, so ported code keeps its names.",
    )

    @field_validator("api_keys", "allowed_hosts", "s3_buckets", "webhook_hosts", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):  # a JSON list, as pydantic-settings reads list settings
                return json.loads(value)
            return [key.strip() for key in value.split(",") if key.strip()]
        return value
