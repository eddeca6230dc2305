"""Running the real koe app in process for the fast tier: its lifespan, an httpx client on ASGITransport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from koe.api import create_app
from koe.api.state import app_state
from koe.config import Settings
from koe.engine import Engine
from koe.provider import LoadedModel

BASE_URL = "http://127.0.0.1:8080"  # the Host a loopback client sends; the site check accepts it


@asynccontextmanager
async def served(app: FastAPI, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """`app` with its lifespan running and a client talking to it in process; waits for the model when `ready`."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=30) as client:
            models = app_state(app).models
            if ready and isinstance(models, LoadedModel):  # on demand: nothing loads before it is asked for
                await until(lambda: models.loaded() is not None or models.error is not None)
            yield client


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)


def fake_app(settings: Settings, factory: Callable[[Settings], Any]) -> FastAPI:
    """The real app (every router, middleware and error handler) with `factory` for the model."""

    def build(given: Settings) -> Engine:
        engine: Engine = factory(given)
        return engine

    return create_app(settings, engine_factory=build)
