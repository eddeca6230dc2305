"""The local async endpoint end to end: real `koe serve` / `koe worker` processes on 127.0.0.1, the real tiny.en
model, real speech, a real webhook receiver and a moto S3 server.

One server (module scope) takes most tests; the crash and multi-worker tests start their own processes.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import srt
import webvtt

from conftest import AUDIO_DIR
from koe.config import Settings
from koe.jobs import JobQueue, JobStatus, LocalEndpoint
from koe.storage import file_location, parse_location
from support.jobs_support import (
    KOE,
    REGION,
    KoeProcess,
    Receiver,
    boto_client,
    job_view,
    koe_env,
    metric,
    moto_server,
    start_koe,
    start_server,
    wait_finished,
    wait_for,
    webhook_receiver,
)
from support.serving import JFK_WORDS, words

JFK = AUDIO_DIR / "en" / "jfk.flac"
SHORT = AUDIO_DIR / "en" / "ljspeech_LJ001-0002.flac"  # 1.9 s: "in being comparatively modern."
SHORTS = [AUDIO_DIR / "en" / f"ljspeech_LJ001-000{i}.flac" for i in (2, 4, 6, 8)] + [
    AUDIO_DIR / "en" / "ljspeech_LJ001-0013.flac",
    AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav",
]
SONNET = AUDIO_DIR / "en" / "librivox_shakespeare_sonnet_1.mp3"
IDLE_S = 3.0


@dataclass
class Stack:
    server: KoeProcess
    receiver: Receiver
    moto: str
    data_dir: Path

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("koe-serve")
    with moto_server() as moto, webhook_receiver() as receiver:
        boto_client("s3", moto).create_bucket(Bucket="media")
        env = koe_env(
            tmp / "data", webhook_url=receiver.url, storage_roots=[str(AUDIO_DIR)], model_idle_s=IDLE_S,
            s3_endpoint_url=moto, s3_region=REGION, s3_access_key_id="testing", s3_secret_access_key="testing",
            s3_buckets=["media"],
        )  # fmt: skip
        server = start_server(env, tmp / "serve.log")
        try:
            yield Stack(server, receiver, moto, tmp / "data")
        finally:
            server.stop()


def submit(url: str, path: Path, **fields: Any) -> httpx.Response:
    with path.open("rb") as fh:
        data = {k: str(v) for k, v in fields.items()}
        return httpx.post(f"{url}/v1/jobs", data=data, files={"file": (path.name, fh)}, timeout=60)


def test_submit_complete_and_fetch_every_format(stack: Stack) -> None:
    url = stack.url
    response = submit(url, JFK, id="jfk-1", format="srt")
    assert response.status_code == 202, response.text
    view = response.json()
    assert view["id"] == "jfk-1" and view["status"] in ("queued", "running")
    assert response.headers["x-amzn-sagemaker-outputlocation"] == view["output_location"]
    assert view["output_location"].endswith("/outputs/jfk-1.out")
    assert view["failure_location"].endswith("/failures/jfk-1-error.out")
    # While jfk runs on the one job slot, a second job waits: cancel it.
    queued = submit(url, SHORT, id="to-cancel").json()
    assert queued["status"] == "queued"
    cancelled = httpx.delete(f"{url}/v1/jobs/to-cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    # The same id and request again: the same job; a different request: a conflict.
    again = submit(url, JFK, id="jfk-1", format="srt")
    assert again.status_code == 200 and again.json()["created_at"] == view["created_at"]
    conflict = submit(url, JFK, id="jfk-1", format="vtt")
    assert conflict.status_code == 409 and conflict.json()["error"]["type"] == "job_conflict"

    done = wait_finished(url, "jfk-1")
    assert done["status"] == "completed", done
    assert done["progress"] == {"done_s": 11.0, "total_s": 11.0, "fraction": 1.0}
    assert done["timings"]["processing_s"] > 0 and done["attempts"] == 1 and done["error"] is None

    results = {}
    for fmt in ("text", "json", "verbose_json", "srt", "vtt", "tsv"):
        response = httpx.get(f"{url}/v1/jobs/jfk-1/result", params={"format": fmt})
        assert response.status_code == 200, response.text
        results[fmt] = response
    assert JFK_WORDS in words(results["text"].text)
    assert results["text"].headers["content-type"].startswith("text/plain")
    assert JFK_WORDS in words(results["json"].json()["text"])
    verbose = results["verbose_json"].json()
    assert verbose["language"] == "english" and verbose["duration"] == 11.0 and verbose["segments"]
    cues = list(srt.parse(results["srt"].text))
    assert JFK_WORDS in words(" ".join(c.content for c in cues))
    assert all(c.start < c.end for c in cues) and all(a.start <= b.start for a, b in itertools.pairwise(cues))
    vtt = webvtt.from_buffer(io.StringIO(results["vtt"].text))
    assert JFK_WORDS in words(" ".join(c.text for c in vtt.captions))
    starts = [c.start_in_seconds for c in vtt.captions]
    assert starts == sorted(starts) and all(c.start_in_seconds < c.end_in_seconds for c in vtt.captions)
    rows = results["tsv"].text.strip().split("\n")
    assert rows[0] == "start\tend\ttext" and JFK_WORDS in words(" ".join(rows[1:]))
    # The output object holds the requested format; the default result is that format.
    output = Path(parse_location(done["output_location"]).key)
    assert output.read_text() == results["srt"].text
    assert httpx.get(f"{url}/v1/jobs/jfk-1/result").text == results["srt"].text

    # The webhook got SageMaker's message, once.
    wait_for(lambda: stack.receiver.for_job("jfk-1"), 10, what="the webhook")
    [message] = stack.receiver.for_job("jfk-1")
    assert message["invocationStatus"] == "Completed" and message["eventName"] == "InferenceResult"
    assert message["responseParameters"]["outputLocation"] == done["output_location"]
    assert message["responseParameters"]["contentType"].startswith("application/x-subrip")
    assert stack.receiver.for_job("to-cancel") == []

    listed = httpx.get(f"{url}/v1/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in listed["jobs"]] == ["to-cancel"]
    page = httpx.get(f"{url}/v1/jobs", params={"limit": 1}).json()
    assert len(page["jobs"]) == 1 and page["next_cursor"]
    rest = httpx.get(f"{url}/v1/jobs", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert page["jobs"][0]["id"] not in [j["id"] for j in rest["jobs"]]


def test_errors_answer_json(stack: Stack) -> None:
    url = stack.url
    missing = httpx.get(f"{url}/v1/jobs/no-such-job")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "job_not_found"
    outside = httpx.post(f"{url}/v1/jobs", json={"input_location": "file:///etc/passwd"})
    assert outside.status_code == 403 and outside.json()["error"]["type"] == "location_not_allowed"
    other_bucket = httpx.post(f"{url}/v1/jobs", json={"input_location": "s3://elsewhere/a.wav"})
    assert other_bucket.status_code == 403
    bad = httpx.post(f"{url}/v1/jobs", json={"input_location": file_location(JFK), "format": "docx"})
    assert bad.status_code == 422
    unknown = httpx.post(f"{url}/v1/jobs", json={"input_location": file_location(JFK), "colour": "blue"})
    assert unknown.status_code == 422 and "colour" in unknown.json()["error"]["message"]
    no_location = httpx.post(f"{url}/v1/jobs", json={"format": "srt"})
    assert no_location.status_code == 400
    assert httpx.get(f"{url}/v1/jobs", params={"status": "bogus"}).status_code == 422
    # A job whose input does not exist fails, with a failure object holding the JSON error.
    job = httpx.post(f"{url}/v1/jobs", json={"id": "ghost", "input_location": file_location(AUDIO_DIR / "nope.wav")})
    assert job.status_code == 202
    failed = wait_finished(url, "ghost")
    assert failed["status"] == "failed" and failed["error"]["type"] == "input_not_found"
    body = json.loads(Path(parse_location(failed["failure_location"]).key).read_text())
    assert body == {"error": failed["error"]}
    result = httpx.get(f"{url}/v1/jobs/ghost/result")
    assert result.status_code == 409
    assert httpx.delete(f"{url}/v1/jobs/ghost").status_code == 409
    wait_for(lambda: stack.receiver.for_job("ghost"), 10, what="the failure webhook")
    assert stack.receiver.for_job("ghost")[0]["invocationStatus"] == "Failed"


def test_s3_input_and_output(stack: Stack) -> None:
    s3 = boto_client("s3", stack.moto)
    s3.put_object(Bucket="media", Key="in/short.flac", Body=SHORT.read_bytes())
    response = httpx.post(
        f"{stack.url}/v1/jobs",
        json={"id": "s3-1", "input_location": "s3://media/in/short.flac", "output_path": "s3://media/out",
              "failure_path": "s3://media/errors", "format": "vtt", "options": {"language": "en"}},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    assert response.json()["output_location"] == "s3://media/out/s3-1.out"
    done = wait_finished(stack.url, "s3-1")
    assert done["status"] == "completed", done
    obj = s3.get_object(Bucket="media", Key="out/s3-1.out")
    assert obj["ContentType"] == "text/vtt; charset=utf-8"
    assert "comparatively modern" in obj["Body"].read().decode().lower()


def test_metrics_move_as_jobs_flow(stack: Stack) -> None:
    url = stack.url
    processed = metric(url, "koe_invocations_processed_total")
    failures = metric(url, "koe_invocation_failures_total")
    audio = metric(url, "koe_audio_seconds_transcribed_total")
    assert submit(url, SHORT, id="metrics-ok").status_code == 202
    ghost = {"id": "metrics-bad", "input_location": file_location(AUDIO_DIR / "nope2.wav")}
    assert httpx.post(f"{url}/v1/jobs", json=ghost).status_code == 202
    wait_finished(url, "metrics-ok")
    wait_finished(url, "metrics-bad")
    assert metric(url, "koe_invocations_processed_total") == processed + 1
    assert metric(url, "koe_invocation_failures_total") == failures + 1
    assert metric(url, "koe_audio_seconds_transcribed_total") == pytest.approx(audio + 1.9, abs=0.2)
    text = httpx.get(f"{url}/metrics").text
    for name in ("ApproximateBacklogSize", "ApproximateAgeOfOldestRequest", "HasBacklogWithoutCapacity",
                 "InvocationsProcessed", "InvocationFailures", "TimeInBacklog", "TotalProcessingTime"):  # fmt: skip
        assert name in text
    assert metric(url, "koe_approximate_backlog_size") == 0
    assert metric(url, "koe_has_backlog_without_capacity") == 0
    assert metric(url, "koe_worker_capacity") == 1
    assert metric(url, "koe_time_in_backlog_seconds_count") >= 2


def test_cli_submit_wait_and_read(stack: Stack, tmp_path: Path) -> None:
    env = {"KOE_SERVER": stack.url, "PATH": "/usr/bin:/bin"}
    run = subprocess.run([*KOE, "submit", str(SHORT), "--wait", "-f", "text", "--id", "cli-1"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "comparatively modern" in run.stdout.lower()
    vtt = subprocess.run([*KOE, "result", "cli-1", "-f", "vtt"], env=env, capture_output=True, text=True, timeout=60)
    assert vtt.stdout.startswith("WEBVTT")
    listed = subprocess.run([*KOE, "jobs", "--limit", "50"], env=env, capture_output=True, text=True, timeout=60)
    assert "cli-1" in listed.stdout
    nope = subprocess.run([*KOE, "job", "nope"], env=env, capture_output=True, text=True, timeout=60)
    assert nope.returncode == 2 and "404" in nope.stderr


def test_model_unloads_when_idle_and_reloads(stack: Stack) -> None:
    """Runs last on the shared server: the local counterpart of scaling to zero."""
    url = stack.url
    wait_for(lambda: metric(url, "koe_model_loaded") == 0, IDLE_S + 10, 0.2, "the idle model to unload")
    loads = metric(url, "koe_model_loads_total")
    assert submit(url, SHORT, id="wake-up").status_code == 202
    assert wait_finished(url, "wake-up")["status"] == "completed"
    assert metric(url, "koe_model_loads_total") == loads + 1
    assert metric(url, "koe_model_loaded") == 1
    assert "unloaded after" in stack.server.text()


# -- crashes and several workers ----------------------------------------------------------------------------


def test_kill_9_mid_job_then_restart_completes_exactly_once(tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        env = koe_env(tmp_path / "data", webhook_url=receiver.url, lease_s=2, max_attempts=3)
        server = start_server(env, tmp_path / "first.log")
        try:
            assert submit(server.url, JFK, id="crash", format="text").status_code == 202
            wait_for(lambda: job_view(server.url, "crash")["status"] == "running", 30, 0.05, "the job to start")
            time.sleep(0.5)
            server.process.kill()  # SIGKILL: no cleanup at all
            server.process.wait(10)
        finally:
            server.stop()
        row = JobQueue(tmp_path / "data" / "koe.db").get("crash")
        assert row.status is JobStatus.RUNNING and row.attempts == 1  # as the dead server left it
        restarted = start_server(env, tmp_path / "second.log")
        try:
            done = wait_finished(restarted.url, "crash")
            assert done["status"] == "completed" and done["attempts"] == 2, done
            assert JFK_WORDS in words(httpx.get(f"{restarted.url}/v1/jobs/crash/result").text)
            wait_for(lambda: receiver.for_job("crash"), 10, what="the webhook")
            time.sleep(1.0)  # any duplicate would arrive now
        finally:
            restarted.stop()
        assert len(receiver.for_job("crash")) == 1
        assert "lease lapsed" in restarted.text()


def test_two_workers_share_the_queue_and_stop_in_two_stages(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, storage_roots=[AUDIO_DIR])
    endpoint = LocalEndpoint(settings)  # submit only: its pool never starts
    for i, path in enumerate(SHORTS):
        endpoint.submit(file_location(path), job_id=f"w-{i}", format="text")
    endpoint.stop()
    env = koe_env(data, storage_roots=[str(AUDIO_DIR)], shutdown_grace_s=60)
    workers = [start_koe(["worker"], env, tmp_path / f"worker-{i}.log") for i in range(2)]
    queue = JobQueue(data / "koe.db")
    try:
        wait_for(lambda: all(queue.get(f"w-{i}").status.finished for i in range(len(SHORTS))), 120, 0.2, "all jobs")
        jobs = [queue.get(f"w-{i}") for i in range(len(SHORTS))]
        assert all(j.status is JobStatus.COMPLETED and j.attempts == 1 for j in jobs)
        started = [re.findall(r"job (w-\d+): started", w.text()) for w in workers]
        assert sorted(started[0] + started[1]) == sorted(j.id for j in jobs)  # each job ran once, by one worker
        assert len({j.worker_id for j in jobs}) >= 1

        # A long job on one of them: the first SIGTERM lets it run, the second releases it at once.
        LocalEndpoint(settings, queue=queue).submit(file_location(SONNET), job_id="long")
        running = wait_for(lambda: queue.get("long").status is JobStatus.RUNNING and queue.get("long"), 60, 0.05)
        assert running.worker_id is not None
        busy = next(w for w in workers if running.worker_id.split(":")[1] == str(w.process.pid))
        idle = next(w for w in workers if w is not busy)
        idle.signal(signal.SIGTERM)
        assert idle.process.wait(30) == 0  # nothing in flight: it stops at once
        busy.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert busy.process.poll() is None  # still finishing the job (grace 60 s)
        assert queue.get("long").status is JobStatus.RUNNING
        busy.signal(signal.SIGTERM)
        busy.process.wait(15)
        job = queue.get("long")
        assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.worker_id is None
        assert "released back to the queue" in busy.text()
    finally:
        for worker in workers:
            worker.stop()
        queue.close()
