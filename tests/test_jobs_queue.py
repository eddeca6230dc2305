"""JobQueue on a real SQLite file: migrations, idempotent submit, leases, the reaper, TTLs, timeouts."""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from koe.errors import (
    JobAbandonedError,
    JobConflictError,
    JobNotFoundError,
    KoeError,
    OptionsError,
)
from koe.jobs.job import JobRequest, JobStatus
from koe.jobs.queue import MIGRATIONS, JobQueue, migrate
from koe.options import parse_options


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(name: str = "a.wav", **changes: Any) -> JobRequest:
    values: dict[str, Any] = {
        "input_location": f"file:///data/inputs/{name}",
        "output_location": f"file:///data/outputs/{name}.out",
        "failure_location": f"file:///data/failures/{name}-error.out",
        "ttl_s": 600,
        "timeout_s": 60,
        **changes,
    }
    return JobRequest(**values)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> JobQueue:
    q = JobQueue(tmp_path / "koe.db", clock=clock)
    yield q  # type: ignore[misc]
    q.close()


# -- migrations ---------------------------------------------------------------------------------------------


JOB_COLUMNS = {
    "seq", "id", "status", "fingerprint", "request", "created_at", "expires_at", "first_started_at", "started_at",
    "finished_at", "deadline_at", "attempts", "max_attempts", "worker_id", "lease_token", "lease_until",
    "progress_done_s", "progress_total_s", "error_type", "error_message", "output_content_type", "transcript",
    "effects_pending", "effects_lease_until",
}  # fmt: skip


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def test_migrate_a_blank_database() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    assert migrate(db) == [fn.__name__ for fn in MIGRATIONS]
    assert columns(db, "jobs") == JOB_COLUMNS
    assert columns(db, "workers") == {
        "id", "hostname", "pid", "concurrency", "started_at", "heartbeat_at", "models_loaded"
    }  # fmt: skip
    assert migrate(db) == []  # applied once


def test_migrate_an_old_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE _koe_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    MIGRATIONS[0](db)  # the schema as the first release left it, with a job in it
    db.execute("INSERT INTO _koe_migrations VALUES ('m001_jobs', 0)")
    db.execute(
        "INSERT INTO jobs (id, status, fingerprint, request, created_at, expires_at, max_attempts)"
        " VALUES ('old', 'queued', 'f', ?, 1, 2, 3)",
        (request().model_dump_json(),),
    )
    assert "effects_pending" not in columns(db, "jobs")
    assert migrate(db) == [fn.__name__ for fn in MIGRATIONS[1:]]
    assert columns(db, "jobs") == JOB_COLUMNS
    db.close()
    assert JobQueue(path).get("old").status is JobStatus.QUEUED


def test_database_is_wal(queue: JobQueue) -> None:
    mode = sqlite3.connect(queue.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


# -- submit -------------------------------------------------------------------------------------------------


def test_submit_is_idempotent_on_the_id(queue: JobQueue, clock: Clock) -> None:
    job, created = queue.submit(request(), "job-1")
    assert created and job.status is JobStatus.QUEUED and job.attempts == 0
    assert job.expires_at == clock.now + 600
    again, created = queue.submit(request(), "job-1")
    assert not created and again == job
    with pytest.raises(JobConflictError):
        queue.submit(request(format="srt"), "job-1")
    with pytest.raises(JobConflictError):
        queue.submit(request(options=parse_options({"language": "en"})), "job-1")
    generated, created = queue.submit(request())
    assert created and len(generated.id) == 32


@pytest.mark.parametrize("bad", ["", " leading-space", "x" * 65, "tab\there", "caf\u00e9"])
def test_job_ids_are_checked(queue: JobQueue, bad: str) -> None:
    with pytest.raises(ValueError):
        queue.submit(request(), bad)


def test_get_list_and_cursor(queue: JobQueue) -> None:
    for i in range(5):
        queue.submit(request(f"{i}.wav"), f"job-{i}")
    queue.cancel("job-1")
    page, cursor = queue.list_jobs(limit=2)
    assert [j.id for j in page] == ["job-4", "job-3"] and cursor
    page, cursor = queue.list_jobs(limit=2, cursor=cursor)
    assert [j.id for j in page] == ["job-2", "job-1"] and cursor
    page, cursor = queue.list_jobs(limit=2, cursor=cursor)
    assert [j.id for j in page] == ["job-0"] and cursor is None
    cancelled, _ = queue.list_jobs(JobStatus.CANCELLED)
    assert [j.id for j in cancelled] == ["job-1"]
    with pytest.raises(JobNotFoundError):
        queue.get("nope")
    with pytest.raises(OptionsError):
        queue.list_jobs(cursor="not-a-cursor")


def test_cancel_only_while_queued(queue: JobQueue) -> None:
    queue.submit(request(), "a")
    assert queue.cancel("a").status is JobStatus.CANCELLED
    assert queue.cancel("a").status is JobStatus.CANCELLED  # idempotent
    queue.submit(request("b.wav"), "b")
    assert queue.claim("w", 30) is not None
    with pytest.raises(JobConflictError):
        queue.cancel("b")
    with pytest.raises(JobNotFoundError):
        queue.cancel("nope")


# -- claims and leases --------------------------------------------------------------------------------------


def test_claim_takes_the_oldest_and_leases_it(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request("1.wav"), "first")
    clock.advance(1)
    queue.submit(request("2.wav"), "second")
    claim = queue.claim("worker-a", lease_s=30)
    assert claim is not None and claim.job.id == "first"
    job = claim.job
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.worker_id == "worker-a"
    assert job.lease_until == clock.now + 30 and job.deadline_at == clock.now + 60
    assert queue.heartbeat(claim, 30, done_s=4.0, total_s=11.0)
    assert queue.get("first").progress_done_s == 4.0
    done = queue.complete(claim, content_type="text/vtt", transcript_json='{"text": "x"}')
    assert done is not None and done.status is JobStatus.COMPLETED and done.progress_done_s == 11.0
    assert queue.transcript("first") == '{"text": "x"}'
    # A completed job cannot be completed, failed or released again.
    assert queue.complete(claim, content_type="text/vtt", transcript_json="{}") is None
    assert queue.fail(claim, KoeError("late")) is None
    assert not queue.release(claim)
    assert not queue.heartbeat(claim, 30)


def test_a_reaped_lease_cannot_complete(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request(), "job")
    stale = queue.claim("worker-a", lease_s=10)
    assert stale is not None
    clock.advance(11)
    assert queue.reap().requeued == ["job"]
    fresh = queue.claim("worker-b", lease_s=10)
    assert fresh is not None and fresh.job.attempts == 2
    assert not queue.heartbeat(stale, 10)
    assert queue.complete(stale, content_type="text/plain", transcript_json="{}") is None
    assert queue.fail(stale, KoeError("x")) is None
    assert queue.complete(fresh, content_type="text/plain", transcript_json="{}") is not None
    assert queue.get("job").worker_id == "worker-b"


def test_release_puts_the_job_back_without_counting_the_attempt(queue: JobQueue) -> None:
    queue.submit(request(), "job")
    claim = queue.claim("w", 30)
    assert claim is not None and queue.release(claim)
    job = queue.get("job")
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.worker_id is None


def test_concurrent_claims_never_share_a_job(tmp_path: Path) -> None:
    """Eight threads, each with its own connection (and two queue objects, as two processes would have),
    claim 60 jobs: every job is claimed exactly once."""
    first, second = JobQueue(tmp_path / "koe.db"), JobQueue(tmp_path / "koe.db")
    for i in range(60):
        first.submit(request(f"{i}.wav"), f"job-{i}")
    claimed: list[str] = []
    lock = threading.Lock()

    def work(q: JobQueue, name: str) -> None:
        while (claim := q.claim(name, 30)) is not None:
            q.complete(claim, content_type="text/plain", transcript_json="{}")
            with lock:
                claimed.append(claim.job.id)

    threads = [threading.Thread(target=work, args=(first if i % 2 else second, f"w{i}")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"job-{i}" for i in range(60))
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert all(j.attempts == 1 for j in first.list_jobs(limit=100)[0])
    first.close()
    second.close()


# -- the reaper ------------------------------------------------------------------------------------------------


def test_lapsed_leases_retry_then_fail(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request(timeout_s=3600), "job", max_attempts=2)
    for attempt in (1, 2):
        claim = queue.claim(f"w{attempt}", lease_s=5)
        assert claim is not None and claim.job.attempts == attempt
        clock.advance(6)
        reaped = queue.reap()
    assert reaped.requeued == [] and [j.id for j in reaped.failed] == ["job"]
    job = queue.get("job")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.type == JobAbandonedError.type and "lease" in job.error.message
    assert [j.id for j in queue.claim_effects()] == ["job"]


def test_invocation_timeout_fails_the_job(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request(timeout_s=60), "job")
    claim = queue.claim("w", lease_s=30)
    assert claim is not None
    clock.advance(30)
    assert queue.heartbeat(claim, 30)
    clock.advance(31)
    reaped = queue.reap()
    assert [j.id for j in reaped.failed] == ["job"]
    job = queue.get("job")
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.type == "invocation_timeout"
    assert not queue.heartbeat(claim, 30)


def test_ttl_expires_queued_jobs_only(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request("started.wav", ttl_s=60, timeout_s=3600), "started")
    claim = queue.claim("w", lease_s=5)
    assert claim is not None and claim.job.id == "started"
    queue.submit(request("late.wav", ttl_s=60), "late")
    queue.submit(request("young.wav", ttl_s=600), "young")
    clock.advance(100)  # past two TTLs and the lease
    reaped = queue.reap()
    # "started" began within its TTL and its worker died: it retries, it does not expire.
    assert reaped.requeued == ["started"]
    assert [j.id for j in reaped.expired] == ["late"]
    late = queue.get("late")
    assert late.status is JobStatus.EXPIRED and late.error is not None
    assert late.error.type == "request_expired" and "TTL" in late.error.message
    assert queue.get("young").status is JobStatus.QUEUED
    again = queue.claim("w", lease_s=5)
    assert again is not None and again.job.id == "started" and again.job.attempts == 2


def test_expired_jobs_are_never_claimed(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request(ttl_s=60), "job")
    clock.advance(61)
    assert queue.claim("w", 5) is None  # even before the reaper runs


def test_effects_are_leased_and_done_once(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request(ttl_s=1), "job")
    clock.advance(2)
    queue.reap()
    first = queue.claim_effects()
    assert [j.id for j in first] == ["job"]
    assert queue.claim_effects() == []  # leased to the first caller
    clock.advance(61)
    assert [j.id for j in queue.claim_effects()] == ["job"]  # the lease lapsed: someone else may do them
    queue.effects_done("job")
    clock.advance(61)
    assert queue.claim_effects() == []


def test_stats_and_workers(queue: JobQueue, clock: Clock) -> None:
    queue.submit(request("1.wav"), "a")
    clock.advance(10)
    queue.submit(request("2.wav"), "b")
    assert queue.claim("w", 30) is not None
    stats = queue.stats()
    assert (stats.queued, stats.running, stats.backlog) == (1, 1, 2)
    assert stats.oldest_queued_age_s == 0.0 and stats.capacity == 0
    clock.advance(5)
    queue.worker_heartbeat("w", concurrency=2, models_loaded=1)
    stats = queue.stats()
    assert stats.oldest_queued_age_s == 5.0 and stats.capacity == 2 and stats.models_loaded == 1
    clock.advance(60)
    assert queue.stats(stale_s=30).capacity == 0  # the worker went quiet
    queue.worker_gone("w")
    assert queue.workers(stale_s=1e9) == []
