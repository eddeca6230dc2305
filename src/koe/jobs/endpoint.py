"""LocalEndpoint: the local async endpoint's parts, built from Settings and wired together.

The queue (SQLite in the data folder), the object store, the notifier, the metrics, the models (loaded on
demand) and a worker pool. `koe serve` runs one in the app's lifespan; `koe worker` runs one without HTTP;
both share the same database, so any number of worker processes may serve one queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from koe.audio import AudioMemory
from koe.config import Settings
from koe.errors import JobConflictError, JobNotFinishedError, OptionsError, UnknownModelError
from koe.formats import CONTENT_TYPES, check_format, render
from koe.jobs.effects import remove_upload
from koe.jobs.job import Job, JobRequest, JobStatus, valid_job_id
from koe.jobs.notify import Notifier
from koe.jobs.queue import JobQueue, new_job_id
from koe.jobs.worker import WorkerConfig, WorkerPool
from koe.metrics import Metrics
from koe.ondemand import OnDemandModels
from koe.options import TranscribeOptions, describe_validation_error, parse_options
from koe.storage import ObjectStore, file_location, make_private_dir, object_name
from koe.transcript import Transcript

if TYPE_CHECKING:
    from koe.engine import Engine

logger = logging.getLogger("koe.jobs")

DB_NAME = "koe.db"
ORPHAN_AGE_S = 600.0


def database_path(settings: Settings) -> Path:
    return settings.data_dir / DB_NAME


class LocalEndpoint:
    """Everything the jobs API and `koe worker` use. `start()` starts the worker pool; `stop()` drains it."""

    def __init__(
        self,
        settings: Settings,
        *,
        load_model: Callable[[str], Engine] | None = None,
        unload_model: Callable[[Engine], None] | None = None,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        store: ObjectStore | None = None,
        queue: JobQueue | None = None,
        audio_memory: AudioMemory | None = None,
        engines: OnDemandModels | None = None,
    ) -> None:
        self.settings = settings
        make_private_dir(settings.data_dir)
        self.queue = queue or JobQueue(database_path(settings))
        self.store = store or ObjectStore.from_settings(settings)
        self.notifier = notifier or Notifier.from_settings(settings)
        self.metrics = metrics or Metrics()
        self.config = WorkerConfig.from_settings(settings)
        self.engines = engines or on_demand_models(settings, load_model, unload_model)
        self.pool = WorkerPool(
            self.queue,
            self.store,
            self.engines,
            config=self.config,
            notifier=self.notifier,
            metrics=self.metrics,
            audio_memory=audio_memory or AudioMemory(settings.max_audio_memory),
        )
        self.metrics.watch_queue(lambda: self.queue.stats(self.config.stale_s).as_dict())
        self.inputs_dir = settings.data_dir / "inputs"
        self.output_path = settings.output_path or file_location(settings.data_dir / "outputs")
        self.failure_path = settings.failure_path or file_location(settings.data_dir / "failures")
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.sweep_uploads()
        self.pool.start()
        self._started = True

    def stop(self, grace_s: float | None = None) -> None:
        if self._started:
            self.pool.stop(grace_s)
            self._started = False
        self.notifier.close()
        self.queue.close()

    # -- submitting ----------------------------------------------------------------------------------

    def ingest(self, stream: IO[bytes]) -> str:
        """Store an uploaded file in the data folder (content-addressed); returns its file:// location."""
        path, _, _ = self.store.files.ingest(stream, self.inputs_dir, self.settings.max_input_bytes)
        return file_location(path)

    def ingest_upload(self, path: Path, job_id: str) -> str:
        """Move a spooled upload for job `job_id` into the data folder's inputs; returns its file:// location.

        Named after its bytes and the job id: the same job submitted again names the same file (submission stays
        idempotent), and no two jobs share one, so removing a job's upload never touches another's."""
        suffix = "-" + hashlib.sha256(job_id.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        stored, _ = self.store.files.ingest_file(path, self.inputs_dir, suffix)
        return file_location(stored)

    def release_upload(self, location: str) -> bool:
        """Remove an upload from the data folder's inputs unless uploads are kept or a queued or running job
        still reads it. True when removed."""
        return remove_upload(location, self.inputs_dir, self.queue, self.store, keep=self.settings.keep_uploads)

    def sweep_uploads(self, min_age_s: float = ORPHAN_AGE_S) -> int:
        """Remove uploads no queued or running job reads (left by a crash, or by a version that kept them all).
        Files younger than `min_age_s` are left alone: another process may be between storing one and queueing
        its job. Returns how many were removed."""
        if self.settings.keep_uploads or not self.inputs_dir.is_dir():
            return 0
        used = self.queue.inputs_in_use()
        cutoff = time.time() - min_age_s
        removed = 0
        for path in self.inputs_dir.iterdir():
            with contextlib.suppress(OSError):
                real = Path(os.path.realpath(path))  # locations are stored with real paths
                if real.is_file() and real.stat().st_mtime < cutoff and file_location(real) not in used:
                    path.unlink()
                    removed += 1
        if removed:
            logger.info("removed %d upload(s) no job reads any more", removed)
        return removed

    def submit(
        self,
        input_location: str,
        *,
        job_id: str | None = None,
        options: TranscribeOptions | dict[str, Any] | None = None,
        format: str = "verbose_json",
        model: str | None = None,
        content_type: str | None = None,
        webhook_url: str | None = None,
        ttl_s: float | None = None,
        timeout_s: float | None = None,
        output_path: str | None = None,
        failure_path: str | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job (idempotent on `job_id`). Returns (job, created)."""
        job_id = _job_id(job_id)
        if not isinstance(options, TranscribeOptions):
            options = parse_options(options or {})
        output_folder = self.store.check(output_path or self.output_path)
        failure_folder = self.store.check(failure_path or self.failure_path)
        try:
            request = JobRequest(
                input_location=self.store.check(input_location),
                model=self._model(model),
                content_type=content_type,
                options=options,
                format=check_format(format),
                output_location=self.store.join(output_folder, object_name(job_id, ".out")),
                failure_location=self.store.join(failure_folder, object_name(job_id, "-error.out")),
                webhook_url=self.notifier.policy.check(webhook_url) if webhook_url else None,
                ttl_s=ttl_s if ttl_s is not None else self.settings.request_ttl_s,
                timeout_s=timeout_s if timeout_s is not None else self.settings.invocation_timeout_s,
            )
        except ValidationError as exc:
            raise OptionsError(describe_validation_error(exc)) from None
        job, created = self.queue.submit(request, job_id, max_attempts=self.settings.max_attempts)
        if created:
            logger.info("job %r: queued (%r)", job.id, job.input_location)  # quoted: the client chose both
            self.pool.wake()
        return job, created

    def _model(self, model: str | None) -> str | None:
        """The model a job asks for: None for the server's own; else a model this server knows by name."""
        try:
            name = self.engines.check(model)
        except UnknownModelError as exc:  # an invalid field of the job (422), as every other
            raise OptionsError(exc.message) from None
        return None if name == self.engines.default else name

    # -- reading -------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        return self.queue.get(job_id)

    def list(
        self, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        try:
            wanted = JobStatus(status) if status else None
        except ValueError:
            names = ", ".join(s.value for s in JobStatus)
            raise OptionsError(f"status: {status!r} is not one of: {names}") from None
        if not 1 <= limit <= 1000:
            raise OptionsError("limit: must be between 1 and 1000")
        return self.queue.list_jobs(wanted, limit, cursor)

    def cancel(self, job_id: str) -> Job:
        job = self.queue.cancel(job_id)
        self.release_upload(job.input_location)
        return job

    def result(self, job_id: str, fmt: str | None = None) -> tuple[str, str]:
        """A completed job's transcript in `fmt` (default: the job's format), and its content type.

        Rendered from the stored transcript, so any format is available without transcribing again.
        """
        job = self.queue.get(job_id)
        name = check_format(fmt or job.format)
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            raise JobNotFinishedError(f"job {job_id!r} is {job.status.value}; its result is not ready yet")
        if job.status is not JobStatus.COMPLETED:
            reason = f": {job.error.message}" if job.error else ""
            raise JobConflictError(f"job {job_id!r} {job.status.value}{reason}; it has no result")
        stored = self.queue.transcript(job_id)
        if stored is None:  # pragma: no cover - completed jobs always store it
            raise JobConflictError(f"job {job_id!r} has no stored transcript")
        return render(Transcript.model_validate_json(stored), name), CONTENT_TYPES[name]


def on_demand_models(
    settings: Settings,
    load_model: Callable[[str], Engine] | None = None,
    unload_model: Callable[[Engine], None] | None = None,
) -> OnDemandModels:
    """The local endpoint's models: `settings.model` by default, any known model on demand, unloaded when idle."""
    return OnDemandModels(
        load_model or _loader(settings),
        default=settings.model,
        idle_s=settings.model_idle_s,
        unload=unload_model,
        cache_dir=settings.cache_dir,
    )


def _loader(settings: Settings) -> Callable[[str], Engine]:
    def load(name: str) -> Engine:
        from koe.engine import Engine

        return Engine.from_settings(settings, model=name)

    return load


def _job_id(job_id: str | None) -> str:
    if job_id is None or job_id == "":
        return new_job_id()
    try:
        return valid_job_id(job_id)
    except ValueError as exc:
        raise OptionsError(f"id: {exc}") from None
