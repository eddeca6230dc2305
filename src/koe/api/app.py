"""The app factory: `create_app(settings)` builds the FastAPI app every server door runs.

- Nothing happens at import. The lifespan starts loading the Engine in a worker thread and the server
  listens at once, so `GET /ping` answers 503 while the model loads and 200 afterwards.
- State lives on `app.state`: `settings`, `engine` (None until loaded), `engine_error` (why loading failed).
- Routes come from a list of routers (`DEFAULT_ROUTERS`, or the caller's), so later doors (jobs, OpenAI,
  SageMaker runtime API, metrics, the web page) add a router and nothing else.
- One place maps errors to responses: a `KoeError` becomes `errors.error_body()` with `errors.http_status()`;
  anything unexpected becomes a 500 `internal_error` whose body carries no traceback (the log does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

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
from koe.audio import AudioMemory
from koe.config import Settings
from koe.engine import Engine
from koe.errors import KoeError, ModelUnavailableError, error_body, error_headers, http_status

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
        lifespan=_lifespan(factory),
    )
    app.state.settings = settings
    app.state.audio_memory = AudioMemory(settings.max_audio_memory)  # shared by sync routes and the job workers
    app.state.engine = None
    app.state.engine_error = None
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


def _lifespan(factory: EngineFactory) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The local endpoint (settings.jobs_enabled: `koe serve`) loads models on demand and unloads them
        # when idle; otherwise the model loads now, for /ping.
        local = app.state.settings.jobs_enabled
        # Each synchronous request holds a thread while its chunks wait in the batcher: enough threads for
        # two full batches, so a batch's worth of clients never waits for a thread (anyio's default is 40).
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, 2 * app.state.settings.batch_size + 8)
        if local:
            await jobs.start_jobs(app, factory)
        loading = None if local else asyncio.create_task(_load_engine(app, factory))
        try:
            yield
        finally:
            if loading is not None:
                loading.cancel()
            await jobs.stop_jobs(app)
            # Requests still running in threads keep their own reference to the engine; dropping ours lets
            # the model go when the last of them finishes.
            app.state.engine = None

    return lifespan


async def _load_engine(app: FastAPI, factory: EngineFactory) -> None:
    settings: Settings = app.state.settings
    try:
        engine = await anyio.to_thread.run_sync(factory, settings, abandon_on_cancel=True)
    except KoeError as exc:
        logger.error("cannot load the model: %s", exc.message)
        app.state.engine_error = exc
        return
    except Exception as exc:
        logger.exception("cannot load the model")
        app.state.engine_error = ModelUnavailableError(f"cannot load the model: {type(exc).__name__}: {exc}")
        return
    app.state.engine = engine
    placement = engine.placement
    logger.info("ready: model %s on %s/%s", engine.name, placement.device, placement.compute_type)


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
    message = f"internal error ({type(exc).__name__}); see the server log"
    body = {"error": {"type": "internal_error", "message": message}}
    return JSONResponse(body, status_code=500)


__all__ = ["DEFAULT_ROUTERS", "EngineFactory", "create_app", "install_error_handlers"]
