"""What routes read from the app: its settings, its audio memory and its models (503 while one loads)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from koe.api.state import app_state
from koe.audio import MemoryClaim
from koe.config import Settings
from koe.engine import Engine
from koe.provider import ModelProvider


def audio_claim(request: Request) -> MemoryClaim:
    """A synchronous request's claim on the process's audio memory: refused (503) rather than waiting."""
    return app_state(request).audio_memory.claim(wait=False)


def app_settings(request: Request) -> Settings:
    return app_state(request).settings


def app_models(request: Request) -> ModelProvider:
    return app_state(request).models


async def engine_for(request: Request, model: str | None = None) -> Engine:
    """The engine for `model` (None: the server's own). Loaded: at once. In the container, while it loads:
    503. On `koe serve`, which loads models on demand: the request waits for the load (in a worker thread)."""
    models = app_models(request)
    engine = models.loaded(model)
    if engine is not None:
        return engine
    return await run_in_threadpool(models.get, model)
