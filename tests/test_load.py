"""Load: hundreds of submissions from 50 concurrent clients against one real `koe serve` (tiny.en, one job slot).

Every submission is accounted for (each id is in the queue exactly once and ends completed or cancelled), `/ping`
answers 200 in under 2 s at the 99th percentile throughout, and the server's memory stays flat: its RSS after a
warm-up is compared with its RSS after 1,000 more requests.

Two cores cannot transcribe 500 jobs in a test's time, so the clip is a tiny one (0.5 s) and the test cancels what
is still queued when the submissions are done, then waits for what is running: all must be accounted for.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from conftest import AUDIO_DIR
from koe.audio import SAMPLE_RATE, decode
from support.jobs_support import KoeProcess, koe_env, start_server, wait_for
from support.media import encode_audio
from support.reliability import integrity, read_jobs, report

CLIENTS = 50
RSS_TOLERANCE_MB = 50.0
"""How much the server's idle RSS may grow over 1,000 requests after warm-up. With the model loaded, idle readings
move between rounds of 1,000 requests by -13 to +32 MB without a trend (allocator arenas and CTranslate2 /
onnxruntime buffers; docs/reliability.md); the request path alone, worker off, grew 6 MB over 3,500 requests and
levelled off. A leak of 50 KB per request fails this; the stress run also bounds the trend over 4,000 requests."""
PING_P99_LIMIT_S = 0.5
"""/ping's 99th percentile under the load, asserted. Measured 155-213 ms in four runs on the shared 2-core machine
(docs/reliability.md); SageMaker's own limit is 2 s, four times this."""
RSS_SLOPE_MB_PER_1000 = 10.0
"""The stress run: the least-squares slope of idle RSS over rounds of 1,000 requests (a leak of 10 KB/request)."""


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Half a second of real speech as a 16 kHz wav (16 KB)."""
    samples = decode(AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav").samples[: SAMPLE_RATE // 2]
    path = encode_audio(samples, tmp_path_factory.mktemp("clip") / "tiny.wav", codec="pcm_s16le")
    return path.read_bytes()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KoeProcess]:
    env = koe_env(tmp_path / "data", worker_concurrency=1, model_idle_s=3600, poll_s=0.2)
    process = start_server(env, tmp_path / "serve.log")
    yield process
    process.stop()
    assert "Traceback" not in process.text()


@dataclass
class Pinger:
    """GET /ping every `interval` seconds in a thread of its own; records every latency (and any non-200)."""

    url: str
    interval: float = 0.05
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Pinger:
        def loop() -> None:
            with httpx.Client(timeout=10) as client:
                while not self._stop.wait(self.interval):
                    started = time.perf_counter()
                    try:
                        status = client.get(f"{self.url}/ping").status_code
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                        continue
                    self.latencies.append(time.perf_counter() - started)
                    if status != 200:
                        self.failures.append(f"HTTP {status}")

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def submit_all(url: str, ids: list[str], clip: bytes, clients: int) -> tuple[dict[str, int], int]:
    """Submit `ids` from `clients` concurrent clients (each POST followed by a GET of the job): the status code
    each submission got, and how many requests were made."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for job_id in ids:
        queue.put_nowait(job_id)
    answers: dict[str, int] = {}
    requests = 0

    async def client() -> None:
        nonlocal requests
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            while not queue.empty():
                job_id = queue.get_nowait()
                files = {"file": ("tiny.wav", io.BytesIO(clip), "audio/wav")}
                response = await http.post("/v1/jobs", files=files, data={"id": job_id, "format": "text",
                                                                           "beam_size": "1"})  # fmt: skip
                answers[job_id] = response.status_code
                view = await http.get(f"/v1/jobs/{job_id}")
                assert view.status_code == 200 and view.json()["id"] == job_id
                requests += 2

    await asyncio.gather(*(client() for _ in range(clients)))
    return answers, requests


def rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / 2**20


def drain(url: str, ids: list[str]) -> dict[str, int]:
    """Cancel every job still queued, wait for the running ones; the count of each final status."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for job_id in ids:
            http.delete(f"/v1/jobs/{job_id}")  # 409 for a job already running or finished: fine

        def all_finished() -> dict[str, int] | None:
            counts: dict[str, int] = {}
            cursor = None
            while True:
                page = http.get("/v1/jobs", params={"limit": 1000, **({"cursor": cursor} if cursor else {})}).json()
                for job in page["jobs"]:
                    counts[job["status"]] = counts.get(job["status"], 0) + 1
                cursor = page["next_cursor"]
                if not cursor:
                    break
            return None if counts.get("queued") or counts.get("running") else counts

        return wait_for(all_finished, 120, 0.5, "every job to finish or be cancelled")


def run_load(server: KoeProcess, tmp_path: Path, clip: bytes, submissions: int, warmup: int) -> dict[str, Any]:
    """`warmup` submissions (until five jobs have completed), then `submissions` more in rounds of 500 (1,000
    requests). The server's RSS is read whenever it is idle: after the warm-up and after each round, once what was
    queued is cancelled and what was running has finished (so no transcription's buffers are counted)."""
    url = server.url
    pid = server.process.pid
    ids = [f"load-{i:05d}" for i in range(warmup + submissions)]
    started = time.monotonic()
    with Pinger(url) as pinger:
        answers, _ = asyncio.run(submit_all(url, ids[:warmup], clip, CLIENTS))

        def warm() -> bool:  # the model loaded and a few jobs through it: its buffers are allocated
            rows = read_jobs(tmp_path / "data" / "koe.db").values()
            return sum(1 for r in rows if r["status"] == "completed") >= 5

        wait_for(warm, 120, 0.2, "five jobs to complete")
        drain(url, ids[:warmup])
        rss = [rss_mb(pid)]
        measured = 0
        for first in range(warmup, len(ids), 500):
            more, made = asyncio.run(submit_all(url, ids[first : first + 500], clip, CLIENTS))
            answers.update(more)
            measured += made
            drain(url, ids[first : first + 500])
            rss.append(rss_mb(pid))
        counts = drain(url, ids)
    seconds = time.monotonic() - started
    before, after = rss[0], rss[-1]
    rows = read_jobs(tmp_path / "data" / "koe.db")
    assert integrity(tmp_path / "data" / "koe.db") == "ok"
    assert sorted(answers) == ids and set(answers.values()) == {202}, {v for v in answers.values() if v != 202}
    assert sorted(rows) == ids, "a submission is missing or an unknown job appeared"
    assert sum(counts.values()) == len(ids)
    assert set(counts) <= {"completed", "cancelled"}, counts
    for row in rows.values():
        if row["status"] == "completed":
            assert Path(tmp_path / "data" / "outputs" / f"{row['id']}.out").is_file()
    assert not pinger.failures, pinger.failures[:5]
    figures = {
        "submissions": len(ids),
        "clients": CLIENTS,
        "requests_measured": measured,
        "pings": len(pinger.latencies),
        "ping_p50_ms": round(1000 * statistics.median(pinger.latencies), 1),
        "ping_p99_ms": round(1000 * pinger.percentile(0.99), 1),
        "ping_max_ms": round(1000 * max(pinger.latencies), 1),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "rss_every_1000_requests_mb": [round(r, 1) for r in rss],
        "rss_slope_mb_per_1000": round(slope(rss), 1) if len(rss) > 1 else None,
        "statuses": counts,
        "seconds": round(seconds, 1),
    }
    report("load", **figures)
    assert pinger.percentile(0.99) < PING_P99_LIMIT_S, figures
    assert max(pinger.latencies) < 2.0, figures  # SageMaker's health-check limit, never once exceeded
    assert after - before < RSS_TOLERANCE_MB, figures
    if len(rss) >= 4:
        assert slope(rss) < RSS_SLOPE_MB_PER_1000, figures
    return figures


def slope(values: list[float]) -> float:
    """The least-squares slope of `values` against 0, 1, 2, ..."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    return num / sum((i - mean_x) ** 2 for i in range(n))


def test_500_submissions_from_50_clients(server: KoeProcess, tmp_path: Path, tiny_clip: bytes) -> None:
    """100 warm-up submissions, then 500 measured ones (1,000 requests: each POST and a GET of the job)."""
    run_load(server, tmp_path, tiny_clip, submissions=500, warmup=100)


@pytest.mark.slow
def test_2000_submissions_from_50_clients(server: KoeProcess, tmp_path: Path, tiny_clip: bytes) -> None:
    run_load(server, tmp_path, tiny_clip, submissions=2000, warmup=200)
