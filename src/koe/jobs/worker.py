"""WorkerPool: claims jobs from the queue and runs them.

A pool has `concurrency` job threads and one maintenance thread. A job thread claims a job, reads its input
from storage, decodes it within the limits, transcribes it (recording progress as audio seconds done/total),
writes `<output location>` in the requested format and completes the job, conditional on still holding
its lease. Errors fail the job; its failure object and notifications are the job's *effects*, done by a
small thread pool (koe.jobs.effects; after a crash, by whichever process's maintenance thread finds them pending).

The maintenance thread (koe.jobs.maintenance) renews the leases of in-flight jobs (heartbeat), fails jobs past
their invocation timeout, reaps the queue (lapsed leases, TTLs), performs pending effects, reports this worker
as alive, and unloads the model after `model_idle_s` without a job.

Shutdown is two-stage (as rq's warm and cold shutdown): the first SIGTERM stops claiming and lets in-flight
jobs finish within the grace period, then releases what is left back to the queue; a second SIGTERM
releases everything at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from koe import transcription
from koe.audio import AudioLimits, AudioMemory, MemoryClaim, decode
from koe.config import Settings
from koe.engine import job_slots
from koe.errors import JobTimeoutError, KoeError, StorageFullError
from koe.formats import CONTENT_TYPES, render
from koe.jobs.effects import Effects
from koe.jobs.job import Job, JobStatus
from koe.jobs.maintenance import Maintenance
from koe.jobs.notify import Notifier
from koe.jobs.queue import Claim, JobQueue
from koe.metrics import Metrics
from koe.ondemand import OnDemandModels
from koe.storage import ObjectStore

if TYPE_CHECKING:
    from koe.transcript import Transcript

logger = logging.getLogger("koe.jobs.worker")


def _setting(name: str) -> float:
    default: float = Settings.model_fields[name].default
    return default


@dataclass(frozen=True)
class WorkerConfig:
    """How a pool works. The defaults are `Settings`' own (read from its fields, so they are written once)."""

    concurrency: int = 1
    lease_s: float = _setting("lease_s")
    heartbeat_s: float = _setting("heartbeat_s")
    poll_s: float = _setting("poll_s")
    reap_interval_s: float = _setting("reap_interval_s")
    grace_s: float = _setting("shutdown_grace_s")
    progress_interval_s: float = 0.5
    limits: AudioLimits = field(default_factory=AudioLimits)
    uploads_dir: Path | None = None
    """Where uploads are stored; a finished job's upload there is removed. None: keep them."""

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerConfig:
        return cls(
            concurrency=job_slots(settings),
            lease_s=settings.lease_s,
            heartbeat_s=min(settings.heartbeat_s, settings.lease_s / 3),
            poll_s=settings.poll_s,
            reap_interval_s=settings.reap_interval_s,
            grace_s=settings.shutdown_grace_s,
            limits=AudioLimits(settings.max_input_bytes, settings.max_duration_s),
            uploads_dir=None if settings.keep_uploads else settings.data_dir / "inputs",
        )

    @property
    def stale_s(self) -> float:
        """A worker without a heartbeat for this long no longer counts as capacity."""
        return max(3 * self.heartbeat_s, 10.0)


class Aborted(Exception):
    """Raised inside a job thread (from the progress callback) to stop working on a job."""


@dataclass
class Running:
    """A job this pool is working on."""

    claim: Claim
    done_s: float = 0.0
    total_s: float | None = None
    flushed_at: float = 0.0
    reason: str | None = None  # why it was aborted: release | timeout | lost
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def abort(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class WorkerPool:
    """`concurrency` job threads and a maintenance thread over one queue. `start()`, then `stop()`."""

    def __init__(
        self,
        queue: JobQueue,
        store: ObjectStore,
        engines: OnDemandModels,
        *,
        config: WorkerConfig | None = None,
        notifier: Notifier | None = None,
        metrics: Metrics | None = None,
        worker_id: str | None = None,
        audio_memory: AudioMemory | None = None,
    ) -> None:
        self.queue = queue
        self.store = store
        self.engines = engines
        self.config = config or WorkerConfig()
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.worker_id = worker_id or new_worker_id()
        self.audio_memory = audio_memory or AudioMemory(2 * 1024**3)
        self.in_flight: dict[str, Running] = {}
        self._in_flight_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._forced = threading.Event()
        self._halt = threading.Event()
        self._signalled = threading.Event()
        self._signals = 0
        self._stop_requested_at: float | None = None
        self._threads: list[threading.Thread] = []
        self.threads_left_running = 0
        """After `stop()`: job threads that did not finish (their jobs were released). A process must then end with
        `os._exit`: finalizing the interpreter under a thread that is inside CTranslate2 aborts it (SIGABRT)."""
        self._effects = Effects(store, self.notifier, queue, self.metrics,
                                uploads=self.config.uploads_dir, retry_s=self.config.reap_interval_s)  # fmt: skip
        self.maintenance = Maintenance(
            queue, engines, self._effects, self.metrics, worker_id=self.worker_id,
            concurrency=self.config.concurrency, heartbeat_s=self.config.heartbeat_s,
            reap_interval_s=self.config.reap_interval_s, renew_leases=self._renew_leases,
        )  # fmt: skip
        engines.on_change = self.maintenance.model_changed

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self.maintenance.report_alive()
        for i in range(self.config.concurrency):
            self._spawn(self._job_loop, f"koe-worker-{i}")
        self._spawn(lambda: self.maintenance.run(self._halt), "koe-maintenance")
        logger.info("worker %s started with %d job slot(s)", self.worker_id, self.config.concurrency)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def wake(self) -> None:
        """A job was just queued: idle job threads look now instead of at their next poll."""
        self._wake.set()

    def request_stop(self) -> None:
        """Stop claiming jobs; in-flight jobs go on."""
        if self._stop_requested_at is None:
            self._stop_requested_at = time.monotonic()
        self._stopping.set()
        self._wake.set()

    def force_stop(self) -> None:
        """Release every in-flight job back to the queue now."""
        self._forced.set()
        self.request_stop()
        for running in self._running():
            running.abort("release")
            if self.queue.release(running.claim):
                logger.warning("job %s released back to the queue", running.claim.job.id)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop claiming, wait up to `grace_s` for in-flight jobs, release the rest, and shut down."""
        grace = self.config.grace_s if grace_s is None else grace_s
        self.request_stop()
        assert self._stop_requested_at is not None
        deadline = self._stop_requested_at + grace  # the grace period runs from the first signal
        while self.in_flight and time.monotonic() < deadline and not self._forced.is_set():
            time.sleep(0.05)
        if self.in_flight:
            self.force_stop()
        for thread in self._threads[:-1]:
            thread.join(timeout=2.0)
        self.threads_left_running = sum(1 for t in self._threads[:-1] if t.is_alive())
        if self.threads_left_running:  # released jobs whose threads are still inside the model (native code)
            logger.warning("%d job thread(s) still inside the model; exit without waiting", self.threads_left_running)
        self._halt.set()
        if self._threads:
            self._threads[-1].join(timeout=5.0)
        self._effects.shutdown()
        try:
            self.queue.worker_gone(self.worker_id)
        except Exception:
            logger.exception("cannot unregister worker %s", self.worker_id)
        self.engines.close()
        logger.info("worker %s stopped", self.worker_id)

    def on_signal(self, signum: int, frame: FrameType | None = None) -> None:
        """SIGTERM/SIGINT: the first stops claiming (graceful); the second releases everything at once."""
        self._signals += 1
        if self._signals == 1:
            logger.warning("signal %d: finishing in-flight jobs (up to %.0fs)", signum, self.config.grace_s)
            self.request_stop()
            self._signalled.set()
        else:
            logger.warning("signal %d again: releasing in-flight jobs now", signum)
            self.force_stop()

    def run_until_signalled(self) -> None:
        """Start, serve until SIGTERM/SIGINT, then stop in two stages (the `koe worker` main loop)."""
        previous = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._signalled.wait(0.5):
                pass
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _running(self) -> list[Running]:
        with self._in_flight_lock:
            return list(self.in_flight.values())

    # -- job threads ---------------------------------------------------------------------------------

    def _job_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                claim = self.queue.claim(self.worker_id, self.config.lease_s)
            except Exception:
                logger.exception("cannot claim a job")
                claim = None
            if claim is None or self._stopping.is_set():
                if claim is not None:
                    self.queue.release(claim)
                self._wake.wait(self.config.poll_s)
                self._wake.clear()
                continue
            try:
                self._run(claim)
            except KoeError as exc:  # e.g. the database's disk is full: the lease lapses and the job goes back
                logger.error("job %s: cannot record its outcome (%s); its lease will lapse", claim.job.id, exc.message)
                self._wake.wait(self.config.poll_s)
            except Exception:
                logger.exception("job %s: cannot record its outcome; its lease will lapse", claim.job.id)
                self._wake.wait(self.config.poll_s)

    def _run(self, claim: Claim) -> None:
        job = claim.job
        running = Running(claim, flushed_at=time.monotonic())
        with self._in_flight_lock:
            self.in_flight[job.id] = running
        logger.info("job %s: started (attempt %d) by %s", job.id, job.attempts, self.worker_id)
        if job.attempts == 1 and job.started_at is not None:
            self.metrics.time_in_backlog.observe(max(0.0, job.started_at - job.created_at))
        try:
            self._run_held(running)
        finally:
            with self._in_flight_lock:
                self.in_flight.pop(job.id, None)

    def _run_held(self, running: Running) -> None:
        claim = running.claim
        job = claim.job
        try:
            transcript = self._transcribe(running)
            content_type = CONTENT_TYPES[job.format]
            body = render(transcript, job.format)
            if running.reason:
                raise Aborted(running.reason)
            self.store.write(job.output_location, body.encode("utf-8"), content_type)
            done = self.queue.complete(claim, content_type=content_type, transcript_json=transcript.model_dump_json())
        except Aborted:
            self._aborted(running)
            return
        except StorageFullError as exc:
            self._out_of_space(claim, exc)
            return
        except KoeError as exc:
            self._failed(claim, exc)
            return
        except Exception as exc:
            logger.exception("job %s: unexpected error", job.id)
            self._failed(claim, KoeError(f"internal error: {type(exc).__name__}: {exc}"))
            return
        if done is None:
            logger.warning("job %s: lease lost before completion; result not recorded", job.id)
            self._discard_output(job)
            return
        logger.info("job %s: completed (%.1f s of audio)", job.id, transcript.duration)
        self.metrics.invocations_processed.inc()
        self.metrics.audio_seconds.inc(transcript.duration)
        if done.started_at is not None and done.finished_at is not None:
            self.metrics.processing_time.observe(max(0.0, done.finished_at - done.started_at))
        self._effects.submit(done)

    def _transcribe(self, running: Running) -> Transcript:
        """Decode and transcribe within a claim on the process's audio memory (waiting for it if need be)."""

        def check() -> None:  # a timeout or a release stops the decode (and the wait for memory) too
            if running.reason:
                raise Aborted(running.reason)

        with self.audio_memory.claim(wait=True, check=check) as memory:
            return self._transcribe_within(running, memory, check)

    def _transcribe_within(self, running: Running, memory: MemoryClaim, check: Callable[[], None]) -> Transcript:
        job = running.claim.job
        limits = self.config.limits
        with self.store.open(job.input_location, limits.max_bytes) as stream:
            audio = decode(stream, limits, memory=memory, check=check)
        running.total_s = audio.duration
        self._flush(running)

        def progress(done_s: float, total_s: float) -> None:
            running.done_s = done_s
            if running.reason:
                raise Aborted(running.reason)
            if time.monotonic() - running.flushed_at >= self.config.progress_interval_s:
                self._flush(running)

        with self.engines.use(job.request.model) as engine:
            if running.reason:
                raise Aborted(running.reason)
            return transcription.check(engine, job.options, [job.format]).transcribe(audio, progress)

    def _flush(self, running: Running) -> None:
        """Renew the lease and record progress; abort the job if the deadline passed or the lease is gone."""
        running.flushed_at = time.monotonic()
        job = running.claim.job
        if job.deadline_at is not None and self.queue.clock() >= job.deadline_at:
            self._time_out(running)
        elif not self.queue.heartbeat(
            running.claim, self.config.lease_s, done_s=running.done_s, total_s=running.total_s
        ):
            running.abort("lost")
        if running.reason:
            raise Aborted(running.reason)

    def _time_out(self, running: Running) -> None:
        running.abort("timeout")
        job = running.claim.job
        error = JobTimeoutError(f"the job ran past its invocation timeout of {job.request.timeout_s:g} s")
        self._failed(running.claim, error)

    def _aborted(self, running: Running) -> None:
        job = running.claim.job
        if running.reason == "release":
            if self.queue.release(running.claim):
                logger.warning("job %s released back to the queue", job.id)
        elif running.reason == "lost":
            logger.warning("job %s: lease lost (reaped or timed out); stopped", job.id)
        else:
            logger.warning("job %s: stopped (%s)", job.id, running.reason)

    def _discard_output(self, job: Job) -> None:
        """This worker wrote `job`'s output but lost the job: if the job has since failed (timed out, or another
        attempt failed it), remove that output, since a failed job has none. Otherwise leave it: a later attempt
        rewrites it, or the failure's effects remove it."""
        try:
            if self.queue.get(job.id).status in (JobStatus.FAILED, JobStatus.EXPIRED):
                self.store.delete(job.output_location)
        except Exception:
            logger.exception("job %s: cannot discard the output of a lost attempt", job.id)

    def _out_of_space(self, claim: Claim, error: StorageFullError) -> None:
        """A full disk is a passing condition, not the job's fault: the job goes back to the queue (the attempt
        counts, so a disk that stays full fails it after `max_attempts`), and this thread waits a little before
        claiming again. If the database's disk is full too, the release fails and the lease lapses instead."""
        job = claim.job
        if job.attempts >= job.max_attempts:
            self._failed(claim, error)
            return
        if self.queue.release(claim, count_attempt=True):
            logger.warning("job %s: no space left for its output (%s); back in the queue", job.id, error.message)
        self._halt.wait(self.config.reap_interval_s)

    def _failed(self, claim: Claim, error: KoeError) -> None:
        failed = self.queue.fail(claim, error)
        if failed is None:
            return
        logger.warning("job %s: failed: %s: %s", failed.id, error.type, error.message)
        self.metrics.invocation_failures.inc()
        self._effects.submit(failed)

    # -- maintenance ---------------------------------------------------------------------------------

    def _renew_leases(self) -> None:
        for running in self._running():
            with contextlib.suppress(Aborted):  # the job thread sees `reason` at its next progress call
                self._flush(running)
