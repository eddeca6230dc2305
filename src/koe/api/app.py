"""The app factory: `create_app(settings)` builds the FastAPI app every server door runs.

- Nothing happens at import. The lifespan starts loading the Engine in a worker thread and the server
  listens at once, so `GET /ping` answers 503 while the model loads and 200 afterwards.
- State lives in one typed `AppState` (koe.api.state): the settings, the model provider (loaded at start, or
  on demand on `koe serve`), the audio memory budget, the metrics, and the local endpoint's jobs.
- Routes come from a list of routers (`DEFAULT_ROUTERS`, or the caller's), so later doors (jobs, OpenAI,
  SageMaker runtime API, metrics, the web page) add a router and nothing else.
- One place maps errors to responses: a `KoeError` becomes `errors.error_body()` with `errors.http_status()`;
  anything unexpected becomes a 500 `internal_error` whose body carries no traceback (the log does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRouter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from koe import __version__
from koe.api import auth, jobs, metrics, openai, runtime, sagemaker, web
from koe.api.limits import HeaderLimitMiddleware
from koe.api.sites import SiteCheckMiddleware
from koe.api.state import AppState, app_state
from koe.audio import AudioMemory
from koe.config import Settings
from koe.engine import Engine
from koe.errors import KoeError, error_body, error_headers, http_status, internal_error
from koe.jobs.endpoint import on_demand_models
from koe.metrics import Metrics
from koe.provider import LoadedModel, ModelProvider

logger = logging.getLogger("koe.api")

EngineFactory = Callable[[Settings], Engine]
"""Builds the Engine from the settings (blocking; it runs in a worker thread)."""

DEFAULT_ROUTERS: tuple[APIRouter, ...] = (
    sagemaker.router,
    jobs.router,
    metrics.router,
    openai.router,
    runtime.router,
    web.router,
)

_HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed"}


def create_app(
    settings: Settings,
    engine_factory: EngineFactory | None = None,
    routers: Sequence[APIRouter] = DEFAULT_ROUTERS,
) -> FastAPI:
    """The koe app: `routers` on top of a lifespan that loads the model with `engine_factory`."""
    factory = engine_factory or _default_factory
    app = FastAPI(
        title="koe",
        version=__version__,
        summary="Fast speech-to-text on faster-whisper",
        lifespan=_lifespan,
    )
    app.state.koe = AppState(
        settings=settings,
        models=_models(settings, factory),
        audio_memory=AudioMemory(settings.max_audio_memory),
        metrics=Metrics(),
    )
    for router in routers:
        app.include_router(router)
    install_error_handlers(app)
    auth.install(app, settings)  # API keys (koe serve only; the container's settings carry none)
    # Before the key check: a rebound name or another site's page is refused even with a key in hand.
    app.add_middleware(SiteCheckMiddleware, allowed_hosts=settings.allowed_hosts, bind_host=settings.host)
    app.add_middleware(HeaderLimitMiddleware)  # outermost: before the key check and any body is read
    return app


def _default_factory(settings: Settings) -> Engine:
    return Engine.from_settings(settings)


def _models(settings: Settings, factory: EngineFactory) -> ModelProvider:
    """`koe serve` (settings.jobs_enabled) loads models on demand and unloads them when idle; otherwise the
    one model loads at start, for /ping."""
    if settings.jobs_enabled:
        return on_demand_models(settings, lambda name: factory(settings.model_copy(update={"model": name})))
    return LoadedModel(settings.model, lambda: factory(settings))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app_state(app)
    # Each synchronous request holds a thread while its chunks wait in the batcher: enough threads for
    # two full batches, so a batch's worth of clients never waits for a thread (anyio's default is 40).
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = max(limiter.total_tokens, 2 * state.settings.batch_size + 8)
    models = state.models
    loading = None
    if isinstance(models, LoadedModel):  # the container: the model loads now (in a thread), for /ping
        loading = asyncio.create_task(_load(models))
    else:  # the local endpoint: its models load on demand
        await jobs.start_jobs(app)
    try:
        yield
    finally:
        if loading is not None:
            loading.cancel()
        await jobs.stop_jobs(app)
        if isinstance(models, LoadedModel):
            models.close()


async def _load(models: LoadedModel) -> None:
    await anyio.to_thread.run_sync(models.load, abandon_on_cancel=True)


def install_error_handlers(app: FastAPI) -> None:
    """The one mapping from exceptions to JSON error responses `{"error": {"type", "message"}}`."""
    app.add_exception_handler(KoeError, _koe_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _internal_error)


async def _koe_error(request: Request, exc: KoeError) -> JSONResponse:
    status = http_status(exc)
    if status >= 500:
        logger.error("%s %r failed: %s: %s", request.method, request.url.path, exc.type, exc.message)
    return JSONResponse(error_body(exc), status_code=status, headers=error_headers(exc))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = _HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    body = {"error": {"type": kind, "message": str(exc.detail)}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'request'}: {err.get('msg', '')}"
        for err in exc.errors()
    )
    return JSONResponse({"error": {"type": "invalid_option", "message": problems}}, status_code=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log (Starlette re-raises to the server after this response), not the body.
    return JSONResponse(error_body(internal_error(exc)), status_code=500)


__all__ = ["DEFAULT_ROUTERS", "EngineFactory", "create_app", "install_error_handlers"]
