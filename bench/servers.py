"""S2's HTTP servers, run in this process under uvicorn (one thread each), and the clients that load them.

- koe: the real app, `koe.api.app.create_app`, serving the already loaded Engine; a client picks the mode
  with the SageMaker custom-attributes header (`mode=batched` shares the engine's batcher across requests).
- peer: what the open-source faster-whisper servers do: each request runs on its own
  `BatchedInferencePipeline` (batching the chunks of that one request only), on the same loaded model.

Both decode uploads with koe's decoder and run inference in the threadpool; both get the same thread limit.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import httpx
import uvicorn
from fastapi import FastAPI
from faster_whisper import BatchedInferencePipeline, WhisperModel
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from koe.audio import decode
from koe.config import Settings
from koe.engine import Engine

THREADS = 128  # worker threads per server (Starlette's default of 40 would cap 64 clients)
Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def peer_app(model: WhisperModel, batch_size: int = 8, beam_size: int = 5) -> FastAPI:
    app = FastAPI()

    def transcribe(body: bytes) -> str:
        audio = decode(body)
        pipeline = BatchedInferencePipeline(model)  # per request, as the peers do
        segments, _ = pipeline.transcribe(audio.samples, batch_size=batch_size, beam_size=beam_size)
        return "".join(s.text for s in segments).strip()

    @app.get("/ping")
    async def ping() -> PlainTextResponse:
        return PlainTextResponse("")

    @app.post("/invocations")
    async def invocations(request: Request) -> PlainTextResponse:
        return PlainTextResponse(await run_in_threadpool(transcribe, await request.body()))

    return app


def koe_app(engine: Engine) -> Any:
    from koe.api.app import create_app

    return create_app(Settings(jobs_enabled=False), engine_factory=lambda _settings: engine)


class _ThreadLimit:
    """Raises the worker-thread limit of the server's event loop on its first call."""

    def __init__(self, app: ASGI) -> None:
        self.app = app
        self.done = False

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if not self.done:
            anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
            self.done = True
        await self.app(scope, receive, send)


class Served:
    """An ASGI app under uvicorn in a background thread, on a free local port."""

    def __init__(self, app: Any) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config = uvicorn.Config(_ThreadLimit(app), host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server on port {self.port} did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass
class LoadResult:
    clients: int
    requests: int
    audio_s: float
    wall_s: float
    latencies: list[float]
    texts: dict[str, str]
    errors: int
    cpu_s: float = 0.0  # CPU time of this whole process (servers and clients) during the run

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else 0.0
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]


def load(url: str, uploads: list[tuple[str, bytes, float]], clients: int, attributes: str | None) -> LoadResult:
    """`clients` closed-loop clients send every upload once (name, bytes, seconds) to `url`/invocations."""
    work = deque(uploads)
    lock = threading.Lock()
    latencies: list[float] = []
    texts: dict[str, str] = {}
    errors = 0
    start = threading.Barrier(clients + 1)
    headers = {"Content-Type": "application/octet-stream", "Accept": "text/plain"}
    if attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = attributes

    def client() -> None:
        nonlocal errors
        with httpx.Client(timeout=None) as http:
            start.wait()
            while True:
                with lock:
                    if not work:
                        return
                    name, body, _ = work.popleft()
                sent = time.perf_counter()
                response = http.post(f"{url}/invocations", content=body, headers=headers)
                took = time.perf_counter() - sent
                with lock:
                    latencies.append(took)
                    if response.status_code == 200:
                        texts[name] = response.text
                    else:
                        errors += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu
    return LoadResult(clients, len(uploads), sum(s for _, _, s in uploads), wall, latencies, texts, errors, cpu)
