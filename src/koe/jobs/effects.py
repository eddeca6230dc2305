"""A finished job's effects: its failure object, its notifications, the removal of its upload.

Done by a small thread pool after the job's outcome is recorded, and retried (the queue keeps them pending
under a lease of their own) until done: after a crash, whichever process's maintenance thread finds them
pending does them (`Maintenance.reap`).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from koe.errors import KoeError
from koe.jobs.job import Job, JobErrorInfo, JobStatus
from koe.jobs.notify import Notifier
from koe.jobs.queue import JobQueue
from koe.metrics import Metrics
from koe.storage import ObjectStore, parse_location

logger = logging.getLogger("koe.jobs.effects")


class Effects:
    """Runs jobs' effects two at a time; one that fails is retried after `retry_s`."""

    def __init__(
        self,
        store: ObjectStore,
        notifier: Notifier,
        queue: JobQueue,
        metrics: Metrics,
        *,
        uploads: Path | None,
        retry_s: float,
    ) -> None:
        self.store = store
        self.notifier = notifier
        self.queue = queue
        self.metrics = metrics
        self.uploads = uploads
        self.retry_s = retry_s
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="koe-effects")

    def submit(self, job: Job) -> None:
        try:
            self._pool.submit(self._do, job)
        except RuntimeError:  # the executor is shut down: do it here
            self._do(job)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _do(self, job: Job) -> None:
        try:
            run_effects(job, self.store, self.notifier, self.queue, self.metrics, uploads=self.uploads)
        except KoeError as exc:
            logger.warning("job %s: effects failed (%s: %s); retrying in %gs",
                           job.id, exc.type, exc.message, self.retry_s)  # fmt: skip
            self._later(job)
        except Exception:
            logger.exception("job %s: effects failed; they will be retried", job.id)
            self._later(job)

    def _later(self, job: Job) -> None:
        try:
            self.queue.effects_later(job.id, self.retry_s)
        except Exception:  # the effects lease lapses on its own
            logger.warning("job %s: effects will be retried when their lease lapses", job.id)


def run_effects(
    job: Job, store: ObjectStore, notifier: Notifier, queue: JobQueue, metrics: Metrics, *, uploads: Path | None = None
) -> None:
    """A finished job's effects: its failure object (failed or expired), its notifications, then the removal of its
    upload (when it was one, in `uploads`, and no other unfinished job reads it).

    A failed job has no output object: one left by an attempt that wrote it and then died (or lost its lease)
    before recording completion is removed first.
    """
    if job.status in (JobStatus.FAILED, JobStatus.EXPIRED):
        store.delete(job.output_location)
        error = job.error or JobErrorInfo(type="internal_error", message=f"the job {job.status.value}")
        body = {"error": error.model_dump()}  # the shape of koe.errors.error_body
        store.write(job.failure_location, json.dumps(body).encode("utf-8"), "application/json")
    failures = notifier.notify(job)
    if failures:
        metrics.notification_failures.inc(failures)
    if uploads is not None:
        remove_upload(job.input_location, uploads, queue, store)
    queue.effects_done(job.id)


def remove_upload(location: str, uploads: Path, queue: JobQueue, store: ObjectStore, *, keep: bool = False) -> bool:
    """Remove `location` if it is an upload in `uploads` that no queued or running job reads (and not `keep`)."""
    if keep or not location.startswith("file://"):
        return False
    path = Path(os.path.realpath(parse_location(location).key))
    if path.parent != Path(os.path.realpath(uploads)) or queue.inputs_in_use([location]):
        return False
    store.delete(location)
    return True
