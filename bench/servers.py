"""The HTTP servers of S2 and S4, run in this process under uvicorn (one thread each); their clients run in
another process (bench/client.py), so this process's CPU time is the servers'.

- koe: the real app, `koe.api.app.create_app`, serving the already loaded Engine with its defaults (batched:
  every request's chunks share the engine's batcher); `jobs_app` is the same app as `koe serve` runs it, with
  the job queue and worker pool on (S4).
- peer: what the open-source faster-whisper servers do: each request runs on its own
  `BatchedInferencePipeline` (batching the chunks of that one request only), on the same loaded model.

Both decode uploads with koe's decoder and run inference in the threadpool; both get the same thread limit.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
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


def peer_app(model: WhisperModel, extra: dict[str, Any], batch_size: int = 8) -> FastAPI:
    """`extra`: faster-whisper's transcribe arguments (`Decoding.faster_whisper`)."""
    app = FastAPI()

    def transcribe(body: bytes) -> str:
        audio = decode(body)
        pipeline = BatchedInferencePipeline(model)  # per request, as the peers do
        segments, _ = pipeline.transcribe(audio.samples, batch_size=batch_size, **extra)
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

    return create_app(Settings(model=engine.name, jobs_enabled=False), engine_factory=lambda _settings: engine)


def jobs_app(engine: Engine, data_dir: Path, worker_concurrency: int) -> Any:
    """`koe serve`'s app (jobs on) over a fresh data folder, its model the already loaded engine (never
    unloaded while the bench runs)."""
    from koe.api.app import create_app

    settings = Settings(
        model=engine.name,
        jobs_enabled=True,
        data_dir=data_dir,
        worker_concurrency=worker_concurrency,
        model_idle_s=0,
    )
    return create_app(settings, engine_factory=lambda _settings: engine)


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
