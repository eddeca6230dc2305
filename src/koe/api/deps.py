"""What routes read from the app: its settings and the loaded engine (503 while it loads)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from koe.audio import AudioMemory, MemoryClaim
from koe.config import Settings
from koe.engine import Engine
from koe.errors import KoeError, NotReadyError
from koe.jobs.engines import EngineHolder


def audio_claim(request: Request) -> MemoryClaim:
    """A synchronous request's claim on the process's audio memory: refused (503) rather than waiting."""
    memory: AudioMemory = request.app.state.audio_memory
    return memory.claim(wait=False)


def app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def loaded_engine(request: Request) -> Engine | None:
    engine: Engine | None = request.app.state.engine
    return engine


def ready_engine(request: Request) -> Engine:
    """The loaded engine, or the reason there is none: still loading (503), or failed to load."""
    engine = loaded_engine(request)
    if engine is not None:
        return engine
    local = getattr(request.app.state, "jobs", None)
    if local is not None:  # the local endpoint: the model loads on demand (503 while it loads)
        holder: EngineHolder = local.engines.holder()
        return holder.ready()
    error: KoeError | None = request.app.state.engine_error
    raise error or NotReadyError("the model is still loading; retry shortly")


def check_health(request: Request) -> None:
    """/ping: healthy once the model is loaded; the local endpoint is healthy while it runs (it loads models
    on demand and unloads them when idle, so a missing model is not a fault there)."""
    if getattr(request.app.state, "jobs", None) is None:
        ready_engine(request)


async def engine_for(request: Request) -> Engine:
    """`ready_engine`, except that on the local endpoint a request waits for an on-demand model load (in a
    worker thread) instead of being answered 503 while the model loads."""
    local = getattr(request.app.state, "jobs", None)
    if local is not None and loaded_engine(request) is None:
        holder: EngineHolder = local.engines.holder()
        return await run_in_threadpool(holder.get)
    return ready_engine(request)
