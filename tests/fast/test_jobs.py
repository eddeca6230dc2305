"""Async jobs in process on the fake engine: the real SQLite queue and worker pool, objects in memory.

The same path on the real model, a real server and a moto S3 server is tested in tests/test_jobs_server.py and
tests/test_worker.py; this runs the queue -> worker -> store path in well under a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from fakes import FakeEngine, MemoryStore

from koe.config import Settings
from koe.jobs.endpoint import LocalEndpoint
from koe.jobs.job import JobStatus
from koe.storage import FileStore, ObjectStore, S3Store


@pytest.fixture
def memory() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def endpoint(tmp_path: Path, memory: MemoryStore) -> Iterator[LocalEndpoint]:
    settings = Settings(model="tiny.en", data_dir=tmp_path, jobs_enabled=True, model_idle_s=0)
    store = ObjectStore(FileStore([tmp_path]), s3=cast(S3Store, memory))
    local = LocalEndpoint(settings, load_model=lambda name: FakeEngine(name).as_engine(), store=store)
    local.start()
    try:
        yield local
    finally:
        local.stop(grace_s=5)


def finished(endpoint: LocalEndpoint, job_id: str, timeout_s: float = 20) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = endpoint.get(job_id).status
        if status.finished:
            return status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def written(memory: MemoryStore, url: str, timeout_s: float = 10) -> bytes:
    """The object at `url` once the job's effects (run after its status is recorded) have written it."""
    deadline = time.monotonic() + timeout_s
    while url not in memory.objects:
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing was written at {url}")
        time.sleep(0.02)
    return memory.objects[url]


def test_a_job_reads_s3_audio_and_writes_its_result_there(
    endpoint: LocalEndpoint, memory: MemoryStore, jfk: Path
) -> None:
    memory.objects["s3://media/in/jfk.flac"] = jfk.read_bytes()
    job, created = endpoint.submit(
        "s3://media/in/jfk.flac", job_id="jfk-1", output_path="s3://media/out/", failure_path="s3://media/failed/"
    )
    assert created and job.output_location.startswith("s3://media/out/")
    assert finished(endpoint, "jfk-1") is JobStatus.COMPLETED
    output = json.loads(written(memory, job.output_location))
    assert output["duration"] == pytest.approx(11.0, abs=0.05)
    assert [s["start"] for s in output["segments"]] == [0.0, 5.0, 10.0]
    text, content_type = endpoint.result("jfk-1", "srt")
    assert content_type.startswith("application/x-subrip") or "srt" in content_type
    assert text.startswith("1\n00:00:00,000 --> 00:00:05,000")
    again, created_again = endpoint.submit(
        "s3://media/in/jfk.flac", job_id="jfk-1", output_path="s3://media/out/", failure_path="s3://media/failed/"
    )
    assert not created_again and again.status is JobStatus.COMPLETED  # idempotent on the id


def test_a_job_on_bad_audio_fails_with_its_error_written_to_the_failure_location(
    endpoint: LocalEndpoint, memory: MemoryStore
) -> None:
    memory.objects["s3://media/in/noise.bin"] = b"not audio" * 100
    job, _ = endpoint.submit(
        "s3://media/in/noise.bin", job_id="bad-1", output_path="s3://media/out/", failure_path="s3://media/failed/"
    )
    assert finished(endpoint, "bad-1") is JobStatus.FAILED
    failure = json.loads(written(memory, job.failure_location))
    assert failure["error"]["type"] == "undecodable_audio"
    assert job.output_location not in memory.objects


def test_a_missing_input_fails_and_an_english_only_model_refuses_japanese(
    endpoint: LocalEndpoint, memory: MemoryStore, jfk: Path
) -> None:
    memory.objects["s3://media/in/jfk.flac"] = jfk.read_bytes()
    endpoint.submit("s3://media/in/none.flac", job_id="gone-1", output_path="s3://media/out/")
    endpoint.submit("s3://media/in/jfk.flac", job_id="ja-1", options={"language": "ja"}, output_path="s3://media/out/")
    assert finished(endpoint, "gone-1") is JobStatus.FAILED
    assert finished(endpoint, "ja-1") is JobStatus.FAILED
    error = endpoint.get("ja-1").error
    assert error is not None and error.type == "invalid_option" and "English-only" in error.message
