"""Job and JobStatus: one asynchronous transcription request and where it stands.

queued ──claim──> running ──> completed
  │  ^              │ └─────> failed     (an error, the invocation timeout, or too many lapsed leases)
  │  └──lease lapsed┘
  ├──TTL passed───> expired
  └──DELETE───────> cancelled
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from koe.formats import Format
from koe.jobs.webhook import redact_url
from koe.options import TranscribeOptions, parse_options

ID_PATTERN = re.compile(r"\A[!-~][ -~]{0,63}\Z")
"""1..64 printable ASCII characters, the first not a space (SageMaker's InferenceId, in ASCII)."""

MAX_TTL_S = 21600
"""The longest a job may wait in the queue (SageMaker's RequestTTLSeconds maximum, 6 h)."""
MAX_TIMEOUT_S = 3600
"""The longest one attempt may run (SageMaker's InvocationTimeoutSeconds maximum, 1 h)."""


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})


def valid_job_id(value: str) -> str:
    if not ID_PATTERN.match(value):
        raise ValueError("a job id is 1 to 64 printable ASCII characters and does not start with a space")
    return value


class JobRequest(BaseModel):
    """What a caller asks for. Two submissions with the same id must carry the same request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_location: str
    model: str | None = Field(None, max_length=200, description="None: the server's model.")
    content_type: str | None = Field(None, max_length=1024)
    options: TranscribeOptions = Field(default_factory=lambda: parse_options({}))
    format: Format = "verbose_json"
    output_location: str
    failure_location: str
    webhook_url: str | None = Field(None, max_length=2048)
    ttl_s: float = Field(21600, gt=0, le=MAX_TTL_S)
    timeout_s: float = Field(900, gt=0, le=MAX_TIMEOUT_S)

    def fingerprint(self) -> str:
        """A digest of the request, for idempotent submission."""
        body = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(body.encode()).hexdigest()


class JobErrorInfo(BaseModel):
    type: str
    message: str


class Job(BaseModel):
    """A job as stored: its request plus its lifecycle."""

    model_config = ConfigDict(frozen=True)

    id: str
    status: JobStatus
    request: JobRequest
    created_at: float
    expires_at: float
    started_at: float | None = None
    finished_at: float | None = None
    deadline_at: float | None = None
    attempts: int = 0
    max_attempts: int = 3
    worker_id: str | None = None
    lease_until: float | None = None
    progress_done_s: float = 0.0
    progress_total_s: float | None = None
    error: JobErrorInfo | None = None
    output_content_type: str | None = None
    first_started_at: float | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return valid_job_id(value)

    # Shorthands for the request's fields most callers want.
    @property
    def input_location(self) -> str:
        return self.request.input_location

    @property
    def output_location(self) -> str:
        return self.request.output_location

    @property
    def failure_location(self) -> str:
        return self.request.failure_location

    @property
    def format(self) -> str:
        return self.request.format

    @property
    def options(self) -> TranscribeOptions:
        return self.request.options

    def view(self) -> dict[str, Any]:
        """The JSON the jobs API answers with."""
        total = self.progress_total_s
        done = min(self.progress_done_s, total) if total else self.progress_done_s
        backlog_s = (self.first_started_at or self.finished_at or 0) - self.created_at
        return {
            "id": self.id,
            "status": self.status.value,
            "input_location": self.input_location,
            "content_type": self.request.content_type,
            "format": self.format,
            "model": self.request.model,
            "options": self.options.model_dump(mode="json", exclude_defaults=True),
            "output_location": self.output_location,
            "failure_location": self.failure_location,
            "webhook_url": redact_url(self.request.webhook_url) if self.request.webhook_url else None,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "progress": {
                "done_s": round(done, 3),
                "total_s": None if total is None else round(total, 3),
                "fraction": round(done / total, 4) if total else (1.0 if self.status.finished else 0.0),
            },
            "timings": {
                "time_in_backlog_s": round(backlog_s, 3) if backlog_s > 0 else None,
                "processing_s": (
                    round(self.finished_at - self.started_at, 3) if self.finished_at and self.started_at else None
                ),
            },
            "error": self.error.model_dump() if self.error else None,
        }
