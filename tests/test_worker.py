"""The worker pool in-process, on the real tiny.en engine and real speech: completion, failure objects,
TTL expiry, invocation timeouts, two-stage stop, model unload/reload, S3 storage against moto."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import srt

from conftest import AUDIO_DIR
from koe.config import Settings
from koe.engine import Engine
from koe.errors import NotReadyError
from koe.jobs import Job, JobStatus, LocalEndpoint
from koe.ondemand import EngineHolder
from koe.storage import file_location, parse_location
from support.jobs_support import REGION, Receiver, boto_client, moto_server, wait_for, webhook_receiver
from support.serving import JFK_WORDS, words

SONNET = AUDIO_DIR / "en" / "librivox_shakespeare_sonnet_1.mp3"
SHORT = AUDIO_DIR / "en" / "ljspeech_LJ001-0002.flac"  # 1.9 s: "in being comparatively modern."
FAST = {"model": "tiny.en", "poll_s": 0.05, "heartbeat_s": 0.2, "reap_interval_s": 0.2, "lease_s": 5.0}


class CountingLoader:
    """Hands out the session engine, counting loads (unloading it only drops the holder's reference)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loads = 0

    def __call__(self, name: str) -> Engine:
        self.loads += 1
        return self.engine


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as r:
        yield r


def make_endpoint(tmp_path: Path, engine: Engine, **settings: Any) -> tuple[LocalEndpoint, CountingLoader]:
    loader = CountingLoader(engine)
    config = Settings(data_dir=tmp_path / "koe", storage_roots=[AUDIO_DIR, tmp_path], **{**FAST, **settings})
    return LocalEndpoint(config, load_model=loader), loader


def finished(endpoint: LocalEndpoint, job_id: str, timeout: float = 90) -> Job:
    def check() -> Job | None:
        job = endpoint.get(job_id)
        return job if job.status.finished else None

    job = wait_for(check, timeout, 0.05, f"job {job_id}")
    # The effects (failure object, webhook) run right after the transition: wait for them too.
    wait_for(lambda: not _effects_pending(endpoint, job_id), 30, 0.05, "the job's effects")
    return job


def _effects_pending(endpoint: LocalEndpoint, job_id: str) -> bool:
    row = endpoint.queue._db().execute("SELECT effects_pending FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return bool(row[0])


def failure_body(endpoint: LocalEndpoint, job: Job) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(endpoint.store.read_bytes(job.failure_location))
    return body


def test_a_job_completes_with_output_transcript_progress_metrics_and_webhook(
    tmp_path: Path, engine: Engine, jfk: Path, receiver: Receiver
) -> None:
    endpoint, loader = make_endpoint(tmp_path, engine, webhook_url=receiver.url)
    endpoint.start()
    try:
        job, created = endpoint.submit(file_location(jfk), job_id="jfk/1", format="srt")
        assert created and job.output_location.endswith("/outputs/jfk%252F1.out")
        done = finished(endpoint, "jfk/1")
    finally:
        endpoint.stop()
    assert done.status is JobStatus.COMPLETED and done.attempts == 1
    assert done.progress_total_s == pytest.approx(11.0, abs=0.1) and done.progress_done_s == done.progress_total_s
    assert done.output_content_type == "application/x-subrip; charset=utf-8"
    output = Path(parse_location(done.output_location).key)
    assert output.name == "jfk%2F1.out"
    cues = list(srt.parse(output.read_text()))
    assert JFK_WORDS in " ".join(c.content for c in cues).lower()
    # Another format, from the stored transcript (no transcribing again).
    loads = loader.loads
    endpoint2, _ = make_endpoint(tmp_path, engine)
    vtt, content_type = endpoint2.result("jfk/1", "vtt")
    endpoint2.stop()
    assert vtt.startswith("WEBVTT") and content_type.startswith("text/vtt") and loader.loads == loads
    # Metrics moved; the webhook got SageMaker's message.
    metrics = endpoint.metrics
    assert metrics.invocations_processed._value.get() == 1
    assert metrics.audio_seconds._value.get() == pytest.approx(11.0, abs=0.1)
    message = receiver.for_job("jfk/1")[0]
    assert message["invocationStatus"] == "Completed" and message["eventName"] == "InferenceResult"
    assert message["responseParameters"]["outputLocation"] == done.output_location
    assert message["requestParameters"]["inputLocation"] == file_location(jfk)


def test_failures_write_failure_objects_and_notify(
    tmp_path: Path, engine: Engine, jfk: Path, receiver: Receiver
) -> None:
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("this is not audio at all " * 50)
    endpoint, _ = make_endpoint(tmp_path, engine, webhook_hosts=["127.0.0.1"])  # the receiver is on loopback
    endpoint.start()
    try:
        endpoint.submit(file_location(tmp_path / "missing.wav"), job_id="missing", webhook_url=receiver.url)
        endpoint.submit(file_location(not_audio), job_id="text")
        endpoint.submit(file_location(jfk), job_id="japanese", options={"language": "ja"})
        jobs = {name: finished(endpoint, name) for name in ("missing", "text", "japanese")}
    finally:
        endpoint.stop()
    expected = {"missing": "input_not_found", "text": "undecodable_audio", "japanese": "invalid_option"}
    for name, kind in expected.items():
        job = jobs[name]
        assert job.status is JobStatus.FAILED and job.error is not None and job.error.type == kind
        assert job.failure_location.endswith(f"/failures/{name}-error.out")
        assert failure_body(endpoint, job) == {"error": {"type": kind, "message": job.error.message}}
    message = receiver.for_job("missing")[0]
    assert message["invocationStatus"] == "Failed" and message["failureReason"].startswith("input_not_found")
    assert message["responseParameters"]["failureLocation"] == jobs["missing"].failure_location
    assert endpoint.metrics.invocation_failures._value.get() == 3


def test_ttl_expiry_writes_a_failure_object(tmp_path: Path, engine: Engine, jfk: Path, receiver: Receiver) -> None:
    # No job slots: only the maintenance thread (reaper) runs, so the job waits in the queue.
    endpoint, loader = make_endpoint(tmp_path, engine, worker_concurrency=0, webhook_url=receiver.url)
    endpoint.start()
    try:
        endpoint.submit(file_location(jfk), job_id="late", ttl_s=0.3)
        job = finished(endpoint, "late", timeout=30)
    finally:
        endpoint.stop()
    assert job.status is JobStatus.EXPIRED and job.error is not None and job.error.type == "request_expired"
    assert failure_body(endpoint, job)["error"]["type"] == "request_expired"
    assert receiver.for_job("late")[0]["invocationStatus"] == "Failed"
    assert endpoint.metrics.expired_requests._value.get() == 1
    assert loader.loads == 0  # nothing was transcribed


def test_model_unloads_when_idle_and_reloads(tmp_path: Path, engine: Engine) -> None:
    short = SHORT
    endpoint, loader = make_endpoint(tmp_path, engine, model_idle_s=0.5)
    endpoint.start()
    try:
        assert endpoint.engines.loaded_count == 0  # nothing loads before the first job
        endpoint.submit(file_location(short), job_id="one")
        assert finished(endpoint, "one").status is JobStatus.COMPLETED
        assert loader.loads == 1
        wait_for(lambda: endpoint.engines.loaded_count == 0, 10, what="the idle model to unload")
        wait_for(lambda: endpoint.queue.stats().models_loaded == 0, 5, what="the worker row to say so")
        endpoint.submit(file_location(short), job_id="two")
        assert finished(endpoint, "two").status is JobStatus.COMPLETED
        assert loader.loads == 2
    finally:
        endpoint.stop()


def test_graceful_stop_finishes_the_running_job(tmp_path: Path, engine: Engine, jfk: Path) -> None:
    endpoint, _ = make_endpoint(tmp_path, engine)
    endpoint.start()
    endpoint.submit(file_location(jfk), job_id="jfk")
    wait_for(lambda: endpoint.get("jfk").status is JobStatus.RUNNING, 30, 0.02, "the job to start")
    endpoint.pool.on_signal(15)  # first SIGTERM: stop claiming, finish in-flight
    endpoint.submit(file_location(jfk), job_id="after", format="text")
    endpoint.stop(60)
    done = endpoint.get("jfk")
    assert done.status is JobStatus.COMPLETED
    transcript = json.loads(Path(parse_location(done.output_location).key).read_text())
    assert JFK_WORDS in words(transcript["text"])  # finished, not cut off mid-file
    ends = [segment["end"] for segment in transcript["segments"]]
    assert ends == sorted(ends) and ends[-1] > 10
    assert endpoint.get("after").status is JobStatus.QUEUED  # not claimed after the signal


def test_s3_input_and_outputs(tmp_path: Path, engine: Engine, jfk: Path) -> None:
    with moto_server() as moto:
        s3 = boto_client("s3", moto)
        s3.create_bucket(Bucket="audio")
        s3.put_object(Bucket="audio", Key="in/jfk.flac", Body=SHORT.read_bytes())
        endpoint, _ = make_endpoint(
            tmp_path, engine, s3_endpoint_url=moto, s3_region=REGION, s3_access_key_id="testing",
            s3_secret_access_key="testing", s3_buckets=["audio"], output_path="s3://audio/out",
            failure_path="s3://audio/errors",
        )  # fmt: skip
        endpoint.start()
        try:
            job, _ = endpoint.submit("s3://audio/in/jfk.flac", job_id="s3-job", format="vtt")
            assert job.output_location == "s3://audio/out/s3-job.out"
            endpoint.submit("s3://audio/in/missing.flac", job_id="s3-missing")
            done = finished(endpoint, "s3-job")
            missing = finished(endpoint, "s3-missing")
        finally:
            endpoint.stop()
        assert done.status is JobStatus.COMPLETED
        obj = s3.get_object(Bucket="audio", Key="out/s3-job.out")
        assert obj["ContentType"] == "text/vtt; charset=utf-8"
        assert "comparatively modern" in obj["Body"].read().decode().lower()
        assert missing.status is JobStatus.FAILED and missing.error is not None
        assert missing.error.type == "input_not_found"
        error = json.loads(s3.get_object(Bucket="audio", Key="errors/s3-missing-error.out")["Body"].read())
        assert error["error"]["type"] == "input_not_found"


# These two leave a job thread running until its next progress report: they go last.


def test_invocation_timeout_fails_with_a_failure_object(tmp_path: Path, engine: Engine) -> None:
    endpoint, _ = make_endpoint(tmp_path, engine)
    endpoint.start()
    try:
        endpoint.submit(file_location(SONNET), job_id="slow", timeout_s=0.5)
        job = finished(endpoint, "slow", timeout=60)
    finally:
        endpoint.stop(0)  # the job thread stops at its next progress report
    assert job.status is JobStatus.FAILED and job.error is not None and job.error.type == "invocation_timeout"
    assert failure_body(endpoint, job)["error"]["type"] == "invocation_timeout"
    assert not Path(parse_location(job.output_location).key).exists()


def test_force_stop_releases_the_running_job(tmp_path: Path, engine: Engine) -> None:
    endpoint, _ = make_endpoint(tmp_path, engine)
    endpoint.start()
    endpoint.submit(file_location(SONNET), job_id="long")
    wait_for(lambda: endpoint.get("long").progress_total_s, 30, 0.05, "the job to start")
    endpoint.pool.force_stop()  # what a second SIGTERM does
    job = endpoint.get("long")
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.worker_id is None
    endpoint.stop(0)


# -- EngineHolder, without a model ---------------------------------------------------------------------------


class FakeEngine:
    pass


def test_engine_holder_loads_once_counts_users_and_unloads_when_idle() -> None:
    now = [0.0]
    loads: list[FakeEngine] = []
    gate = threading.Event()

    def load() -> FakeEngine:
        gate.wait(5)
        loads.append(FakeEngine())
        return loads[-1]

    holder = EngineHolder("m", load, idle_s=10, clock=lambda: now[0])  # type: ignore[arg-type]
    got: list[Any] = []

    def use() -> None:
        with holder.use() as engine:
            got.append(engine)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join()
    assert len(loads) == 1 and all(e is loads[0] for e in got)  # concurrent first users share one load

    with holder.use():
        now[0] += 100
        assert not holder.unload_if_idle()  # in use: never unloaded
    assert not holder.unload_if_idle()  # just used
    now[0] += 10
    assert holder.unload_if_idle() and not holder.loaded and holder.unloads == 1
    with holder.use() as engine:
        assert engine is loads[1]


def test_engine_holder_ready_loads_in_the_background() -> None:
    holder = EngineHolder("m", FakeEngine, idle_s=0)  # type: ignore[arg-type]
    with pytest.raises(NotReadyError):
        holder.ready()
    engine = wait_for(lambda: holder.loaded and holder.ready(), 5, what="the background load")
    assert isinstance(engine, FakeEngine)
    assert not holder.unload_if_idle()  # idle_s 0: never unloads
