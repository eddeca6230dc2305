"""JobQueue: durable jobs in SQLite (WAL), shared by every process that opens the same file.

Durability rules, each kept by one conditional UPDATE inside a `BEGIN IMMEDIATE` transaction:

- `submit` is idempotent on the id: the same id with the same request returns the stored job; with a
  different request it raises `JobConflictError`.
- `claim` moves the oldest queued job to running with a lease (a random token and an expiry). Only one
  claimer can win a row: SQLite serialises writers.
- `heartbeat`, `complete`, `fail` and `release` succeed only while the caller still holds the lease (same
  token, still running). A worker whose lease was reaped can therefore never complete the job: a job is
  completed at most once, by the current holder.
- `reap` returns running jobs whose lease lapsed to the queue (or fails them after `max_attempts`), fails
  running jobs past their invocation deadline, and expires queued jobs past their TTL. Nothing is dropped.
- Every transition to a finished state (other than cancel) marks the job's *effects* (failure object,
  notification) pending; `claim_effects` hands them out under a short lease of their own, so they are done
  at least once even when a process dies right after the transition.

Schema changes are migrations: functions appended to `MIGRATIONS` and applied once each, in order, with
their names recorded in `_koe_migrations` (the pattern of simonw/llm).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koe.errors import (
    JobAbandonedError,
    JobConflictError,
    JobExpiredError,
    JobNotFoundError,
    JobTimeoutError,
    KoeError,
    OptionsError,
    StorageFullError,
)
from koe.jobs.job import Job, JobErrorInfo, JobRequest, JobStatus, valid_job_id
from koe.storage import make_private_dir

logger = logging.getLogger("koe.jobs.queue")

Clock = Callable[[], float]

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []
migration = MIGRATIONS.append

EFFECTS_LEASE_S = 60.0
"""How long one process may take to write a finished job's failure object and notifications."""


@migration
def m001_jobs(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            request TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            first_started_at REAL,
            started_at REAL,
            finished_at REAL,
            deadline_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            worker_id TEXT,
            lease_token TEXT,
            lease_until REAL,
            progress_done_s REAL NOT NULL DEFAULT 0,
            progress_total_s REAL,
            error_type TEXT,
            error_message TEXT,
            output_content_type TEXT,
            transcript TEXT
        )
        """
    )
    db.execute("CREATE INDEX jobs_status_seq ON jobs (status, seq)")


@migration
def m002_effects(db: sqlite3.Connection) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN effects_pending INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE jobs ADD COLUMN effects_lease_until REAL")
    db.execute("CREATE INDEX jobs_effects ON jobs (effects_pending) WHERE effects_pending = 1")


@migration
def m003_workers(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            hostname TEXT NOT NULL,
            pid INTEGER NOT NULL,
            concurrency INTEGER NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            models_loaded INTEGER NOT NULL DEFAULT 0
        )
        """
    )


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the migrations `db` has not had yet, in order; returns the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _koe_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied = []
    db.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in db.execute("SELECT name FROM _koe_migrations")}
        for fn in MIGRATIONS:
            if fn.__name__ not in done:
                fn(db)
                db.execute("INSERT INTO _koe_migrations VALUES (?, ?)", (fn.__name__, time.time()))
                applied.append(fn.__name__)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return applied


@dataclass(frozen=True)
class Claim:
    """A job this worker now holds, and the token that proves it."""

    job: Job
    token: str


@dataclass
class Reaped:
    """What one `reap` did."""

    requeued: list[str] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)
    expired: list[Job] = field(default_factory=list)


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    oldest_queued_age_s: float
    workers: int
    """Workers that sent a heartbeat recently."""
    capacity: int
    """Their job slots."""
    models_loaded: int
    """Those of them holding a loaded model."""

    @property
    def backlog(self) -> int:
        return self.queued + self.running

    def as_dict(self) -> dict[str, float]:
        return {
            "queued": self.queued,
            "running": self.running,
            "oldest_age_s": self.oldest_queued_age_s,
            "workers": self.workers,
            "capacity": self.capacity,
            "models_loaded": self.models_loaded,
        }


class JobQueue:
    """Jobs in one SQLite file. Thread-safe (one connection per thread); many processes may share the file."""

    def __init__(self, path: Path, *, clock: Clock = time.time, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.clock = clock
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        make_private_dir(self.path.parent)
        _private_file(self.path)
        migrate(self._db())

    # -- connections ---------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, taken before reading (BEGIN IMMEDIATE), so read-then-update is atomic.

        A full disk is a `StorageFullError` (SQLite has already rolled the transaction back, and the database
        stays consistent); writing works again as soon as there is space.
        """
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite rolls back by itself on some errors (SQLITE_FULL among them)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            mapped = database_error(exc, self.path)
            if mapped is exc:
                raise
            raise mapped from exc

    def close(self) -> None:
        with self._lock:
            for db in self._connections:
                db.close()
            self._connections.clear()
        self._local = threading.local()

    # -- submit and read -----------------------------------------------------------------------------

    def submit(self, request: JobRequest, job_id: str | None = None, *, max_attempts: int = 3) -> tuple[Job, bool]:
        """Queue `request` as job `job_id` (generated if None). Returns (job, created)."""
        job_id = valid_job_id(job_id) if job_id is not None else new_job_id()
        fingerprint = request.fingerprint()
        now = self.clock()
        with self._write() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is not None:
                if row["fingerprint"] != fingerprint:
                    raise JobConflictError(f"job {job_id!r} exists with a different request")
                return _job(row), False
            db.execute(
                "INSERT INTO jobs (id, status, fingerprint, request, created_at, expires_at, max_attempts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (job_id, JobStatus.QUEUED.value, fingerprint, request.model_dump_json(), now,
                 now + request.ttl_s, max_attempts),
            )  # fmt: skip
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row), True

    def get(self, job_id: str) -> Job:
        row = self._db().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return _job(row)

    def warnings(self, job_id: str) -> list[str]:
        """The warnings of a completed job's transcript (e.g. an English-only model on other speech), read without
        loading the whole transcript."""
        row = (
            self._db()
            .execute("SELECT json_extract(transcript, '$.warnings') FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        return [str(w) for w in json.loads(row[0])] if row and row[0] else []

    def inputs_in_use(self, locations: list[str] | None = None) -> set[str]:
        """The input locations of queued and running jobs (of those in `locations`, when given)."""
        query = (
            "SELECT DISTINCT json_extract(request, '$.input_location') FROM jobs WHERE status IN ('queued', 'running')"
        )
        if locations is None:
            return {str(row[0]) for row in self._db().execute(query)}
        # Asked about a few (one finished job's upload): filter in SQLite rather than read every unfinished job.
        marks = ", ".join("?" * len(locations))
        query += f" AND json_extract(request, '$.input_location') IN ({marks})"
        return {str(row[0]) for row in self._db().execute(query, locations)} if locations else set()

    def transcript(self, job_id: str) -> str | None:
        """The stored transcript JSON of a completed job."""
        row = self._db().execute("SELECT transcript FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        return row["transcript"]  # type: ignore[no-any-return]

    def list_jobs(
        self, status: JobStatus | None = None, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[Job], str | None]:
        """Jobs newest first, `limit` at a time; pass the returned cursor to get the next page."""
        before = _cursor_seq(cursor)
        rows = (
            self._db()
            .execute(
                "SELECT * FROM jobs WHERE (:status IS NULL OR status = :status) AND seq < :before"
                " ORDER BY seq DESC LIMIT :limit",
                {"status": status.value if status else None, "before": before, "limit": limit + 1},
            )
            .fetchall()
        )
        next_cursor = str(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return [_job(r) for r in rows[:limit]], next_cursor

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job. Cancelling a cancelled job is a no-op; any other state is a conflict."""
        with self._write() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"no job {job_id!r}")
            status = JobStatus(row["status"])
            if status is JobStatus.QUEUED:
                db.execute(
                    "UPDATE jobs SET status = ?, finished_at = ? WHERE id = ?",
                    (JobStatus.CANCELLED.value, self.clock(), job_id),
                )
            elif status is not JobStatus.CANCELLED:
                raise JobConflictError(f"job {job_id!r} is {status.value}; only a queued job can be cancelled")
        return self.get(job_id)

    # -- the worker's side ---------------------------------------------------------------------------

    def claim(self, worker_id: str, lease_s: float) -> Claim | None:
        """Take the oldest runnable queued job, or None. A job past its TTL is never claimed."""
        now = self.clock()
        token = secrets.token_hex(16)
        with self._write() as db:
            row = db.execute(
                "SELECT seq, request FROM jobs WHERE status = 'queued'"
                " AND (expires_at > ? OR first_started_at IS NOT NULL) ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            timeout_s = JobRequest.model_validate_json(row["request"]).timeout_s
            claimed = db.execute(
                "UPDATE jobs SET status = 'running', worker_id = ?, lease_token = ?, lease_until = ?,"
                " attempts = attempts + 1, started_at = ?, first_started_at = COALESCE(first_started_at, ?),"
                " deadline_at = ?, progress_done_s = 0 WHERE seq = ? RETURNING *",
                (worker_id, token, now + lease_s, now, now, now + timeout_s, row["seq"]),
            ).fetchone()
        return Claim(_job(claimed), token)

    def heartbeat(
        self, claim: Claim, lease_s: float, *, done_s: float | None = None, total_s: float | None = None
    ) -> bool:
        """Extend the lease (and record progress). False: the lease is gone and the worker must stop."""
        row = self._update_held(
            claim,
            "lease_until = ?, progress_done_s = COALESCE(?, progress_done_s),"
            " progress_total_s = COALESCE(?, progress_total_s)",
            (self.clock() + lease_s, done_s, total_s),
        )
        return row is not None

    def complete(self, claim: Claim, *, content_type: str, transcript_json: str) -> Job | None:
        """Mark the job completed, if `claim` still holds it; None if it does not (nothing changes)."""
        now = self.clock()
        row = self._update_held(
            claim,
            "status = 'completed', finished_at = ?, lease_until = NULL, output_content_type = ?, transcript = ?,"
            " progress_done_s = COALESCE(progress_total_s, 0), effects_pending = 1, effects_lease_until = ?",
            (now, content_type, transcript_json, now + EFFECTS_LEASE_S),
        )
        return _job(row) if row else None

    def fail(self, claim: Claim, error: KoeError) -> Job | None:
        """Mark the job failed with `error`, if `claim` still holds it; None if it does not."""
        now = self.clock()
        row = self._update_held(
            claim,
            "status = 'failed', finished_at = ?, lease_until = NULL,"
            " error_type = ?, error_message = ?, effects_pending = 1, effects_lease_until = ?",
            (now, error.type, error.message, now + EFFECTS_LEASE_S),
        )
        return _job(row) if row else None

    def release(self, claim: Claim, *, count_attempt: bool = False) -> bool:
        """Put a held job back in the queue (a worker stopping); by default the attempt does not count."""
        row = self._update_held(
            claim,
            "status = 'queued', worker_id = NULL, lease_token = NULL, lease_until = NULL,"
            " deadline_at = NULL, progress_done_s = 0, attempts = attempts - ?",
            (0 if count_attempt else 1,),
        )
        return row is not None

    def _update_held(self, claim: Claim, assignments: str, values: tuple[Any, ...]) -> sqlite3.Row | None:
        """`UPDATE jobs SET <assignments>` on the claimed job, only while `claim` still holds its lease (same
        token, still running): the one check that keeps a reaped worker from touching a job. The row after, or
        None when the lease is gone (nothing changed)."""
        with self._write() as db:
            row: sqlite3.Row | None = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND lease_token = ? AND status = 'running' RETURNING *",
                (*values, claim.job.id, claim.token),
            ).fetchone()
        return row

    # -- the reaper ----------------------------------------------------------------------------------

    def reap(self) -> Reaped:
        """Fail jobs past their deadline, requeue (or fail) lapsed leases, expire jobs past their TTL."""
        now = self.clock()
        out = Reaped()
        with self._write() as db:
            for row in db.execute(
                "SELECT * FROM jobs WHERE status = 'running' AND deadline_at <= ?", (now,)
            ).fetchall():
                seconds = JobRequest.model_validate_json(row["request"]).timeout_s
                error: KoeError = JobTimeoutError(f"the job ran past its invocation timeout of {seconds:g} s")
                out.failed.append(self._finish(db, row["id"], JobStatus.FAILED, error, now))
            for row in db.execute("SELECT * FROM jobs WHERE status = 'running' AND lease_until < ?", (now,)).fetchall():
                if row["attempts"] >= row["max_attempts"]:
                    error = JobAbandonedError(
                        f"the worker running the job stopped renewing its lease (attempt {row['attempts']}"
                        f" of {row['max_attempts']})"
                    )
                    out.failed.append(self._finish(db, row["id"], JobStatus.FAILED, error, now))
                else:
                    db.execute(
                        "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_token = NULL,"
                        " lease_until = NULL, deadline_at = NULL, progress_done_s = 0 WHERE id = ?",
                        (row["id"],),
                    )
                    out.requeued.append(row["id"])
            for row in db.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND expires_at <= ? AND first_started_at IS NULL",
                (now,),
            ).fetchall():
                ttl = JobRequest.model_validate_json(row["request"]).ttl_s
                error = JobExpiredError(f"the job waited in the queue longer than its TTL of {ttl:g} s")
                out.expired.append(self._finish(db, row["id"], JobStatus.EXPIRED, error, now))
        for job_id in out.requeued:
            logger.warning("job %s: lease lapsed; back in the queue", job_id)
        for job in out.failed + out.expired:
            logger.warning("job %s: %s (%s)", job.id, job.status.value, job.error.message if job.error else "")
        return out

    def _finish(self, db: sqlite3.Connection, job_id: str, status: JobStatus, error: KoeError, now: float) -> Job:
        """Finish a job the reaper found; its effects are left for `claim_effects` (no lease on them)."""
        row = db.execute(
            "UPDATE jobs SET status = ?, finished_at = ?, lease_token = NULL, lease_until = NULL,"
            " error_type = ?, error_message = ?, effects_pending = 1, effects_lease_until = NULL"
            " WHERE id = ? RETURNING *",
            (status.value, now, error.type, error.message, job_id),
        ).fetchone()
        return _job(row)

    def claim_effects(self, limit: int = 20) -> list[Job]:
        """Finished jobs whose failure object / notification is still to do, leased to the caller."""
        now = self.clock()
        with self._write() as db:
            rows = db.execute(
                "UPDATE jobs SET effects_lease_until = ? WHERE seq IN (SELECT seq FROM jobs"
                " WHERE effects_pending = 1 AND (effects_lease_until IS NULL OR effects_lease_until < ?)"
                " ORDER BY seq LIMIT ?) RETURNING *",
                (now + EFFECTS_LEASE_S, now, limit),
            ).fetchall()
        return [_job(r) for r in rows]

    def effects_later(self, job_id: str, delay_s: float) -> None:
        """Effects that failed (storage down, disk full): hand them out again in `delay_s` rather than only when
        their lease lapses."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET effects_lease_until = ? WHERE id = ? AND effects_pending = 1",
                (self.clock() + delay_s, job_id),
            )

    def effects_done(self, job_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET effects_pending = 0, effects_lease_until = NULL WHERE id = ?", (job_id,))

    # -- workers and stats ---------------------------------------------------------------------------

    def worker_heartbeat(self, worker_id: str, *, concurrency: int, models_loaded: int) -> None:
        now = self.clock()
        with self._write() as db:
            db.execute(
                "INSERT INTO workers"
                " (id, hostname, pid, concurrency, started_at, heartbeat_at, models_loaded)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " heartbeat_at = excluded.heartbeat_at, concurrency = excluded.concurrency,"
                " models_loaded = excluded.models_loaded",
                (worker_id, socket.gethostname(), os.getpid(), concurrency, now, now, models_loaded),
            )

    def worker_gone(self, worker_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self, stale_s: float = 30.0) -> list[dict[str, Any]]:
        """Workers that sent a heartbeat in the last `stale_s` seconds."""
        rows = self._db().execute(
            "SELECT * FROM workers WHERE heartbeat_at >= ? ORDER BY started_at", (self.clock() - stale_s,)
        )
        return [dict(r) for r in rows]

    def stats(self, stale_s: float = 30.0) -> QueueStats:
        now = self.clock()
        db = self._db()
        row = db.execute(
            "SELECT COUNT(*) FILTER (WHERE status = 'queued') AS queued,"
            " COUNT(*) FILTER (WHERE status = 'running') AS running,"
            " MIN(created_at) FILTER (WHERE status = 'queued') AS oldest"
            " FROM jobs WHERE status IN ('queued', 'running')"
        ).fetchone()
        workers = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(concurrency), 0), COALESCE(SUM(models_loaded), 0) FROM workers"
            " WHERE heartbeat_at >= ?",
            (now - stale_s,),
        ).fetchone()
        oldest = row["oldest"]
        return QueueStats(
            queued=row["queued"],
            running=row["running"],
            oldest_queued_age_s=max(0.0, now - oldest) if oldest is not None else 0.0,
            workers=int(workers[0]),
            capacity=int(workers[1]),
            models_loaded=int(workers[2]),
        )


def database_error(exc: sqlite3.OperationalError, path: Path) -> Exception:
    """A full disk under the database is StorageFullError; other SQLite errors are passed on as they are."""
    message = str(exc).lower()
    if "full" in message or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        return StorageFullError(f"the disk holding the job database ({path.parent}) is full; free some space")
    return exc


def _private_file(path: Path) -> None:
    """Create the database file 0600 before SQLite does (its -wal and -shm files copy its mode), and take group
    and other access away from one an older version created."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            with suppress(PermissionError):  # another user's file: leave it as its owner made it
                os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def new_job_id() -> str:
    return secrets.token_hex(16)


MAX_SEQ = 2**62


def _cursor_seq(cursor: str | None) -> int:
    """The row a `next_cursor` points at: ASCII digits within SQLite's integers (a longer number overflowed)."""
    if cursor is None or cursor == "":
        return MAX_SEQ
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 19 and int(cursor) <= MAX_SEQ):
        raise OptionsError(f"cursor: not a cursor from this server: {cursor[:40]!r}")
    return int(cursor)


def _job(row: sqlite3.Row) -> Job:
    error = None
    if row["error_type"]:
        error = JobErrorInfo(type=row["error_type"], message=row["error_message"] or "")
    return Job(
        id=row["id"],
        status=JobStatus(row["status"]),
        request=JobRequest.model_validate(json.loads(row["request"])),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        first_started_at=row["first_started_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        deadline_at=row["deadline_at"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        worker_id=row["worker_id"],
        lease_until=row["lease_until"],
        progress_done_s=row["progress_done_s"],
        progress_total_s=row["progress_total_s"],
        error=error,
        output_content_type=row["output_content_type"],
    )
