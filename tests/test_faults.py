"""Faults: kill -9 of `koe serve` and `koe worker` under a stream of jobs, S3 errors and timeouts, a full disk
under the data folder, and SIGTERM with jobs in flight. Everything runs on loopback, in subprocesses with their
own KOE_DATA_DIR and the real tiny.en model, bounded in count and time.

What must hold afterwards (issue 7): every submitted job is completed exactly once or failed with a reason; no
output object exists for a failed job; no output object is ever seen with two different contents; the database
passes `PRAGMA integrity_check`. The figures go to docs/reliability.md (`KOE_RELIABILITY_REPORT=path` makes these
tests append what they measured to that file as JSON lines).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import random
import re
import signal
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AUDIO_DIR
from koe.errors import StorageFullError
from koe.jobs.effects import run_effects
from koe.jobs.job import JobRequest, JobStatus
from koe.jobs.notify import Notifier
from koe.jobs.queue import JobQueue
from koe.jobs.worker import WorkerConfig, WorkerPool
from koe.metrics import Metrics
from koe.storage import FileStore, ObjectStore, file_location
from support.jobs_support import (
    KoeProcess,
    boto_client,
    koe_env,
    moto_server,
    start_koe,
    start_server,
    wait_finished,
    wait_for,
)
from support.reliability import (
    FINISHED,
    Fault,
    FaultProxy,
    OutputWatcher,
    can_mount,
    fill,
    integrity,
    read_jobs,
    report,
    tmpfs,
)
from support.serving import free_port

CLIP = AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav"  # 2 s: "What's the weather like?"
LONG_CLIP = AUDIO_DIR / "en" / "jfk.flac"  # 11 s
FAST = {"beam_size": "1", "format": "text", "temperature": "0"}


def submit(url: str, job_id: str, clip: Path = CLIP, fields: dict[str, str] | None = None) -> dict[str, Any]:
    """POST /v1/jobs with an upload; raises httpx errors (the caller retries: the id makes it idempotent)."""
    with clip.open("rb") as fh:
        response = httpx.post(
            f"{url}/v1/jobs",
            files={"file": (clip.name, fh, "audio/wav")},
            data={"id": job_id, **FAST, **(fields or {})},
            timeout=30,
        )
    assert response.status_code in (200, 202), response.text
    body: dict[str, Any] = response.json()
    return body


def check_outcomes(data: Path, ids: list[str], watcher: OutputWatcher) -> dict[str, int]:
    """The invariants, read from the queue: each job is one row (ids are unique), completed with a finish time
    and a stored transcript, or failed with a reason; outputs only for completed jobs, one content each; the
    database sound. Returns the count of jobs per status."""
    db = data / "koe.db"
    assert integrity(db) == "ok"
    rows = read_jobs(db)
    missing = [i for i in ids if i not in rows]
    assert not missing, f"jobs lost: {missing}"
    assert len(rows) == len(ids), f"unexpected jobs: {sorted(set(rows) - set(ids))}"
    outputs, failures = data / "outputs", data / "failures"
    texts = set()
    for job_id in ids:
        row = rows[job_id]
        output = outputs / f"{job_id}.out"
        if row["status"] == "completed":
            assert row["finished_at"] and row["transcript"] and row["attempts"] >= 1, f"{job_id}: {row}"
            assert output.is_file(), f"{job_id}: completed without an output object"
            texts.add(output.read_text())
            assert not (failures / f"{job_id}-error.out").exists()
        else:
            assert row["status"] == "failed", f"{job_id}: {row['status']}"
            assert row["error_type"] and row["error_message"], f"{job_id}: failed without a reason"
            assert not output.exists(), f"{job_id}: failed, yet its output object exists"
            failure = json.loads((failures / f"{job_id}-error.out").read_text())
            assert failure["error"]["type"] == row["error_type"]
    assert len(texts) <= 1, f"one clip, different transcripts: {texts}"
    assert not watcher.rewritten(), f"output objects written with different contents: {watcher.rewritten()}"
    statuses: dict[str, int] = {}
    for job_id in ids:
        statuses[rows[job_id]["status"]] = statuses.get(rows[job_id]["status"], 0) + 1
    return statuses


# -- kill -9 under a stream of jobs ---------------------------------------------------------------------------


class Chaos:
    """`koe serve` and `koe worker` processes on one data folder, killed with SIGKILL and restarted."""

    def __init__(self, tmp: Path, workers: int, **settings: Any) -> None:
        self.tmp = tmp
        self.data = tmp / "data"
        self.env = koe_env(
            self.data, lease_s=3, heartbeat_s=0.5, reap_interval_s=0.5, poll_s=0.2, max_attempts=50,
            model_idle_s=600, worker_concurrency=1, shutdown_grace_s=2, **settings,
        )  # fmt: skip
        self.port = free_port()
        self.logs: list[Path] = []
        self.server = self._serve()
        self.workers = [self._worker(i) for i in range(workers)]
        self.kills = {"server": 0, "worker": 0}

    def _log(self, name: str) -> Path:
        path = self.tmp / f"{name}-{len(self.logs)}.log"
        self.logs.append(path)
        return path

    def _serve(self) -> KoeProcess:
        return start_server(self.env, self._log("serve"), self.port, timeout=90)

    def _worker(self, index: int) -> KoeProcess:
        return start_koe(["worker"], self.env, self._log(f"worker{index}"))

    @property
    def url(self) -> str:
        return self.server.url

    def plan(self, kills: int, rng: random.Random) -> list[str]:
        """Which process each kill hits: half of them `koe serve`, the rest the workers in turn, shuffled."""
        victims = ["server"] * (kills // 2) + [f"worker{i % len(self.workers)}" for i in range(kills - kills // 2)]
        rng.shuffle(victims)
        return victims

    def process(self, victim: str) -> KoeProcess:
        return self.server if victim == "server" else self.workers[int(victim[6:])]

    def busy(self, victim: str) -> bool:
        """Whether `victim` holds a running job now, by the queue (a worker id is `host:pid:random`)."""
        pid = f":{self.process(victim).process.pid}:"
        rows = read_jobs(self.data / "koe.db") if (self.data / "koe.db").exists() else {}
        return any(r["status"] == "running" and pid in (r["worker_id"] or "") for r in rows.values())

    def kill(self, victim: str) -> str:
        if victim == "server":
            self.server.process.send_signal(signal.SIGKILL)
            self.server.process.wait()
            self.kills["server"] += 1
            self.server = self._serve()
        else:
            index = int(victim[6:])
            self.workers[index].process.send_signal(signal.SIGKILL)
            self.workers[index].process.wait()
            self.kills["worker"] += 1
            self.workers[index] = self._worker(index)
        return victim

    def stop(self) -> None:
        for process in [self.server, *self.workers]:
            process.stop(30)


def run_chaos(tmp: Path, *, jobs: int, kills: int, workers: int, seed: int, budget_s: float) -> dict[str, Any]:
    rng = random.Random(seed)
    chaos = Chaos(tmp, workers)
    ids = [f"chaos-{seed}-{i:03d}" for i in range(jobs)]
    submitted: list[str] = []
    retries = [0]
    stop = threading.Event()
    deadline = time.monotonic() + budget_s

    def submitter() -> None:
        for job_id in ids:
            while not stop.is_set():
                try:
                    submit(chaos.url, job_id)
                    submitted.append(job_id)
                    break
                except httpx.TransportError:  # the server is down: try again, same id
                    retries[0] += 1
                    time.sleep(0.2)
            time.sleep(rng.uniform(0, 0.6))

    started = time.monotonic()
    hits = 0
    with OutputWatcher(chaos.data / "outputs") as watcher:
        thread = threading.Thread(target=submitter, daemon=True)
        thread.start()
        try:
            timing = random.Random(seed + 1000)  # the submitter thread draws from `rng`
            for victim in chaos.plan(kills, timing):
                time.sleep(timing.uniform(0.3, 1.5))
                # Aim at running work: wait (a while) for the victim to hold a job, so kills cut attempts short.
                with contextlib.suppress(TimeoutError):
                    wait_for(partial(chaos.busy, victim), 10, 0.05)
                hits += chaos.busy(victim)
                chaos.kill(victim)
            thread.join(max(1.0, deadline - time.monotonic()))
            assert submitted == ids, f"only {len(submitted)} of {jobs} submitted in time"

            def all_finished() -> bool:
                rows = read_jobs(chaos.data / "koe.db")
                return all(rows.get(i, {}).get("status") in FINISHED for i in ids)

            wait_for(all_finished, max(10.0, deadline - time.monotonic()), 0.5, "every job to finish")
            time.sleep(1.0)  # effects (failure objects) of the last jobs
        finally:
            stop.set()
            chaos.stop()
    statuses = check_outcomes(chaos.data, ids, watcher)
    rows = read_jobs(chaos.data / "koe.db")
    figures = {
        "jobs": jobs,
        "kills_server": chaos.kills["server"],
        "kills_worker": chaos.kills["worker"],
        "statuses": statuses,
        "submit_retries": retries[0],
        "kills_of_running_work": hits,
        "reruns": sum(max(0, r["attempts"] - 1) for r in rows.values()),
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed,
    }
    report("kill9", **figures)
    return figures


def assert_chaos_claims(figures: dict[str, Any], jobs: int, kills: int) -> None:
    """What docs/reliability.md reports for kill -9, from the queue: every job completed exactly once (one row,
    completed), none failed, and kills really cut running attempts short (each such attempt ran again)."""
    assert figures["statuses"] == {"completed": jobs}, figures
    assert figures["kills_server"] + figures["kills_worker"] == kills
    assert figures["kills_of_running_work"] >= 1, figures
    assert figures["reruns"] >= figures["kills_of_running_work"], figures


def test_kill_9_server_and_workers_under_a_stream_of_jobs(tmp_path: Path) -> None:
    figures = run_chaos(tmp_path, jobs=8, kills=4, workers=1, seed=7, budget_s=240)
    assert_chaos_claims(figures, jobs=8, kills=4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_many_times(tmp_path: Path, seed: int) -> None:
    figures = run_chaos(tmp_path, jobs=30, kills=12, workers=2, seed=seed, budget_s=600)
    assert_chaos_claims(figures, jobs=30, kills=12)


# -- S3 errors and timeouts ---------------------------------------------------------------------------------

S3_FAULTS: dict[str, dict[tuple[str, str], list[Fault]]] = {
    # job id -> {(method, key prefix): the faults of its first requests, in order}
    "flaky": {
        ("HEAD", "in/"): [("status", (503, "SlowDown")), ("status", (500, "InternalError"))],
        ("PUT", "out/"): [("reset", None)],
    },
    "stall": {("HEAD", "in/"): [("stall", 2.5)]},  # longer than KOE_S3_TIMEOUT_S=1
    "down": {("PUT", "out/"): [("status", (503, "ServiceUnavailable"))] * 99},
    "denied": {("PUT", "out/"): [("status", (403, "AccessDenied"))] * 99},
    "missing": {},
}
S3_OUTCOMES = {
    "flaky": "completed",
    "stall": "completed",
    "down": "insufficient_storage|storage_error",
    "denied": "storage_error",
    "missing": "input_not_found",
}


def s3_rule(method: str, path: str, seen: int) -> Fault:
    parts = path.lstrip("/").split("/", 1)  # /koe/in/flaky.wav (moto is addressed path-style)
    if len(parts) < 2:
        return ("pass", None)
    key = parts[1]
    job = key.split("/")[-1].split(".")[0].removesuffix("-error")
    for (fault_method, prefix), faults in S3_FAULTS.get(job, {}).items():
        if method == fault_method and key.startswith(prefix) and seen < len(faults):
            return faults[seen]
    return ("pass", None)


def test_s3_errors_and_timeouts_are_retried_then_fail_with_a_failure_object(tmp_path: Path) -> None:
    attempts = 4
    with moto_server() as moto, FaultProxy(moto, s3_rule) as proxy:
        s3 = boto_client("s3", moto)
        s3.create_bucket(Bucket="koe")
        for job in S3_FAULTS:
            if job != "missing":
                s3.upload_file(str(CLIP), "koe", f"in/{job}.wav")
        env = koe_env(
            tmp_path / "data", s3_endpoint_url=proxy.url, s3_region="us-east-1", s3_access_key_id="testing",
            s3_secret_access_key="testing", output_path="s3://koe/out", failure_path="s3://koe/fail",
            s3_timeout_s=1, storage_attempts=attempts,
        )  # fmt: skip
        server = start_server(env, tmp_path / "serve.log")
        try:
            for job in S3_FAULTS:
                body = {"input_location": f"s3://koe/in/{job}.wav", "id": job, **FAST}
                response = httpx.post(f"{server.url}/v1/jobs", json=body, timeout=30)
                assert response.status_code == 202, response.text
            views = {job: wait_finished(server.url, job, 180) for job in S3_FAULTS}
            wait_for(lambda: not read_jobs(tmp_path / "data" / "koe.db")["down"]["effects_pending"], 30, 0.2)
        finally:
            server.stop()
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="koe").get("Contents", [])}
        for job, expected in S3_OUTCOMES.items():
            view = views[job]
            if expected == "completed":
                assert view["status"] == "completed", view
                assert f"out/{job}.out" in keys and f"fail/{job}-error.out" not in keys
            else:
                assert view["status"] == "failed" and re.fullmatch(expected, view["error"]["type"]), view
                assert f"out/{job}.out" not in keys, f"{job}: failed, yet it has an output object"
                failure = json.loads(s3.get_object(Bucket="koe", Key=f"fail/{job}-error.out")["Body"].read())
                assert failure["error"] == view["error"]
    assert integrity(tmp_path / "data" / "koe.db") == "ok"

    def tries(method: str, key: str) -> list[float]:
        return [e.at for e in proxy.requests(method, f"/koe/{key}")]

    # Transient faults: retried with exponential backoff (0.2 s, 0.4 s, ...), then success or a failure object.
    flaky = tries("HEAD", "in/flaky.wav")
    assert len(flaky) == 3 and flaky[1] - flaky[0] >= 0.2 and flaky[2] - flaky[1] >= 0.4
    assert len(tries("PUT", "out/flaky.out")) == 2
    assert len(tries("HEAD", "in/stall.wav")) == 2
    down = tries("PUT", "out/down.out")
    assert len(down) == attempts
    gaps = [b - a for a, b in itertools.pairwise(down)]
    assert all(g >= 0.2 * 2**i for i, g in enumerate(gaps)), gaps
    # Permanent ones are not retried.
    assert len(tries("PUT", "out/denied.out")) == 1
    assert len(tries("HEAD", "in/missing.wav")) == 1
    log = server.text()
    assert "Traceback" not in log
    assert "testing" not in log.replace("koe.jobs", "")  # the secret key never reaches the log
    faults = sum(1 for e in proxy.log if e.fault != "pass")
    report("s3", requests=len(proxy.log), faults_injected=faults, jobs=len(S3_FAULTS),
           outcomes={job: views[job]["status"] for job in S3_FAULTS})  # fmt: skip


# -- the data folder's disk full ------------------------------------------------------------------------------


@pytest.mark.skipif(not can_mount(), reason="needs root to mount a small tmpfs for the data folder")
def test_disk_full_under_the_data_folder(tmp_path: Path) -> None:
    """The data folder on a 24 MiB tmpfs, filled up while the server runs, with a job in flight. What a full disk
    does (docs/reliability.md says the same):

    - an upload is refused with 507 `insufficient_storage` (storing it needs space);
    - a JSON submission (no upload) is accepted when the database has room in the pages it already has, else 507;
    - the job in flight, whose output cannot be written, goes back to the queue (it is not failed) and completes
      once space returns; so does an accepted submission;
    - /ping, job reads and /metrics keep answering 200; the database stays sound; no job fails."""
    other_clip = AUDIO_DIR / "en" / "ljspeech_LJ001-0002.flac"
    with tmpfs(tmp_path / "fs", "24m") as fs:
        data = fs / "data"
        env = koe_env(data, lease_s=3, max_attempts=20, reap_interval_s=0.5)
        server = start_server(env, tmp_path / "serve.log")
        try:
            submit(server.url, "before")
            assert wait_finished(server.url, "before")["status"] == "completed"
            submit(server.url, "inflight", LONG_CLIP)  # running when the disk fills: its output cannot be written
            wait_for(lambda: read_jobs(data / "koe.db")["inflight"]["status"] == "running", 60, 0.05)
            input_location = json.loads(read_jobs(data / "koe.db")["inflight"]["request"])["input_location"]
            filler = fill(fs)
            refused = []
            for i, clip in enumerate([other_clip, CLIP]):
                with clip.open("rb") as fh:
                    response = httpx.post(
                        f"{server.url}/v1/jobs", files={"file": fh}, data={"id": f"full-{i}", **FAST}, timeout=30
                    )
                refused.append(response.status_code)
                assert response.status_code == 507, response.text
                error = response.json()["error"]
                assert error["type"] == "insufficient_storage" and "full" in error["message"], error
            response = httpx.post(
                f"{server.url}/v1/jobs", json={"input_location": input_location, "id": "during", **FAST}, timeout=30
            )
            assert response.status_code in (202, 507), response.text
            accepted = ["during"] if response.status_code == 202 else []
            for path in ("/ping", "/v1/jobs", "/v1/jobs/before", "/metrics"):
                assert httpx.get(server.url + path, timeout=10).status_code == 200, path
            met = ("no space left for its output", "cannot record its outcome")
            wait_for(lambda: any(m in server.text() for m in met), 120, 0.2, "the worker to meet the full disk")
            assert integrity(data / "koe.db") == "ok"
            filler.unlink()  # space returns
            submit(server.url, "after", other_clip)
            for job_id in ("after", "inflight", *accepted):
                assert wait_finished(server.url, job_id)["status"] == "completed", job_id
            wait_for(lambda: not any(r["effects_pending"] for r in read_jobs(data / "koe.db").values()), 30, 0.2)
            rows = read_jobs(data / "koe.db")
            assert integrity(data / "koe.db") == "ok"
        finally:
            server.stop()
        assert sorted(rows) == sorted(["before", "inflight", "after", *accepted])  # the refused uploads left no job
        assert {row["status"] for row in rows.values()} == {"completed"}, {k: r["status"] for k, r in rows.items()}
        assert rows["inflight"]["attempts"] >= 2  # it met the full disk, went back, and ran again
        assert (data / "outputs" / "inflight.out").read_text().strip()
        log = server.text()
        assert "Traceback" not in log
        report(
            "disk_full",
            statuses_during_full=refused,
            json_submission=response.status_code,
            inflight_attempts=rows["inflight"]["attempts"],
            jobs={k: v["status"] for k, v in rows.items()},
        )


# -- SIGTERM with jobs in flight ------------------------------------------------------------------------------


def test_sigterm_drains_within_the_grace_period_then_releases(tmp_path: Path) -> None:
    """Issue 4: the first SIGTERM stops claiming and lets the job in flight finish within the grace period; what
    is still running when the grace period ends goes back to the queue (its attempt not counted)."""
    data = tmp_path / "data"
    db = data / "koe.db"

    def running(job_id: str) -> bool:
        return read_jobs(db).get(job_id, {}).get("status") == "running"

    # Grace long enough: the job in flight completes, the queued one stays queued for the next server.
    server = start_server(koe_env(data, shutdown_grace_s=60), tmp_path / "serve-1.log")
    submit(server.url, "inflight", LONG_CLIP)
    submit(server.url, "queued")
    wait_for(lambda: running("inflight"), 60, 0.05, "the job to start")
    server.signal(signal.SIGTERM)
    assert server.process.wait(90) == 0
    rows = read_jobs(db)
    assert rows["inflight"]["status"] == "completed"
    assert rows["queued"]["status"] == "queued" and rows["queued"]["attempts"] == 0

    # Grace too short: the job in flight is released back to the queue when it ends.
    server = start_server(koe_env(data, shutdown_grace_s=1), tmp_path / "serve-2.log")
    submit(server.url, "long", AUDIO_DIR / "en" / "librivox_shakespeare_sonnet_1.mp3")
    wait_for(lambda: read_jobs(db)["queued"]["status"] == "completed", 60, 0.1, "the queued job")
    wait_for(lambda: running("long"), 60, 0.05, "the long job to start")
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    assert time.monotonic() - started < 15
    row = read_jobs(db)["long"]
    assert row["status"] == "queued" and row["attempts"] == 0 and row["worker_id"] is None, row
    assert "released back to the queue" in server.text()
    assert integrity(db) == "ok"
    report("sigterm", drained=1, released=1)


# -- the same invariants, at the points a kill can land (in-process, deterministic) -------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def local_request(data: Path, name: str) -> JobRequest:
    return JobRequest(
        input_location=file_location(data / "inputs" / name),
        output_location=file_location(data / "outputs" / f"{name}.out"),
        failure_location=file_location(data / "failures" / f"{name}-error.out"),
        ttl_s=600,
        timeout_s=60,
    )


def test_a_job_that_fails_after_an_attempt_wrote_its_output_has_no_output(tmp_path: Path) -> None:
    """kill -9 between writing the output and recording completion, on the last attempt: the reaper fails the
    job (abandoned), and its effects remove the orphan output before writing the failure object."""
    clock = Clock()
    queue = JobQueue(tmp_path / "koe.db", clock=clock)
    store = ObjectStore(FileStore([tmp_path]))
    job, _ = queue.submit(local_request(tmp_path, "a"), "a", max_attempts=1)
    claim = queue.claim("w1", lease_s=5)
    assert claim is not None
    store.write(job.output_location, b"a transcript", "text/plain")  # ...and the worker dies here
    clock.now += 10
    reaped = queue.reap()
    assert [j.id for j in reaped.failed] == ["a"]
    (failed,) = queue.claim_effects()
    run_effects(failed, store, Notifier(), queue, Metrics())
    assert not store.exists(job.output_location)
    assert json.loads(store.read_bytes(job.failure_location))["error"]["type"] == "job_abandoned"
    assert queue.get("a").status is JobStatus.FAILED
    queue.close()


def test_a_full_database_disk_is_a_clear_error(tmp_path: Path) -> None:
    """SQLITE_FULL inside a write transaction: StorageFullError (507), the transaction rolled back."""
    queue = JobQueue(tmp_path / "koe.db")
    queue.submit(local_request(tmp_path, "b"), "b")
    with pytest.raises(StorageFullError, match="full"), queue._write() as db:
        db.execute("UPDATE jobs SET status = 'running'")
        raise sqlite3.OperationalError("database or disk is full")  # what SQLite raises on a full disk
    assert queue.get("b").status is JobStatus.QUEUED
    queue.submit(local_request(tmp_path, "c"), "c")  # and the connection still works
    assert queue.get("c").status is JobStatus.QUEUED
    queue.close()


def test_the_job_thread_survives_an_error_while_recording_an_outcome(tmp_path: Path) -> None:
    """A job whose outcome cannot be recorded (the database's disk is full) must not kill its job thread: the
    thread goes on to the next job, and the first one's lease lapses back to the queue."""
    queue = JobQueue(tmp_path / "koe.db")
    for name in ("d", "e"):
        queue.submit(local_request(tmp_path, name), name)
    pool = WorkerPool(
        queue,
        ObjectStore(FileStore([tmp_path])),
        _NoEngines(),  # type: ignore[arg-type]
        config=WorkerConfig(concurrency=1, poll_s=0.05, heartbeat_s=0.2, reap_interval_s=0.2, lease_s=30),
    )
    ran: list[str] = []

    def run(claim: Any) -> None:
        ran.append(claim.job.id)
        if len(ran) == 1:
            raise StorageFullError("the disk holding the job database is full")

    pool._run = run  # type: ignore[method-assign]
    pool.start()
    try:
        wait_for(lambda: len(ran) >= 2, 10, 0.05, "the job thread to take the next job")
    finally:
        pool.stop(0)
        queue.close()
    assert ran[:2] == ["d", "e"]


def test_stop_reports_job_threads_still_inside_the_model(tmp_path: Path) -> None:
    """A released job's thread that is still in native code when the pool stops is counted, so `koe serve` and
    `koe worker` end with os._exit instead of finalizing the interpreter under it (which aborts: SIGABRT)."""
    queue = JobQueue(tmp_path / "koe.db")
    queue.submit(local_request(tmp_path, "f"), "f")
    pool = WorkerPool(
        queue,
        ObjectStore(FileStore([tmp_path])),
        _NoEngines(),  # type: ignore[arg-type]
        config=WorkerConfig(concurrency=1, poll_s=0.05, heartbeat_s=0.2, reap_interval_s=0.2, lease_s=30),
    )
    inside = threading.Event()

    def run(claim: Any) -> None:  # a model call that does not look at the abort flag for a while
        inside.set()
        time.sleep(4)

    pool._run = run  # type: ignore[method-assign]
    pool.start()
    assert inside.wait(10)
    pool.stop(0)
    assert pool.threads_left_running == 1
    queue.close()


class _NoEngines:
    """Engines for a pool whose jobs never load a model."""

    loaded_count = 0
    on_change = None

    def close(self) -> None:
        pass

    def unload_if_idle(self) -> int:
        return 0
