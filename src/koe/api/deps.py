"""What routes read from the app: its settings and the loaded engine (503 while it loads)."""

from __future__ import annotations

from starlette.requests import Request

from koe.config import Settings
from koe.engine import Engine
from koe.errors import KoeError, NotReadyError


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
    error: KoeError | None = request.app.state.engine_error
    raise error or NotReadyError("the model is still loading; retry shortly")
