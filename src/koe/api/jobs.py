"""The jobs API: the local async endpoint over HTTP.

    POST   /v1/jobs                    multipart upload (a `file` part + fields), raw audio (fields in the
                                       query), or JSON {"input_location": "file://|s3://...", ...} -> 202
    GET    /v1/jobs?status=&limit=&cursor=   newest first, paged: {"jobs": [...], "next_cursor": ...}
    GET    /v1/jobs/{id}               status, progress (audio seconds done/total), timings, error
    GET    /v1/jobs/{id}/result?format=srt|vtt|text|json|verbose_json|tsv
    DELETE /v1/jobs/{id}               cancel a queued job

Job fields (form fields, query parameters or JSON keys): `id` (1..64 printable characters; resubmitting the
same id and request returns the same job), `format` (or `response_format`), `model`, `webhook_url`,
`ttl_s`, `timeout_s`, and in JSON `content_type`, `output_path`, `failure_path`. Every other field is a
transcription option (`language`, `task`, `word_timestamps`, ...); options may also come in
`X-Amzn-SageMaker-Custom-Attributes`. The answer carries the output and failure locations in the body and
in SageMaker's headers (`X-Amzn-SageMaker-OutputLocation`, `-FailureLocation`); clients use those and never
build object names themselves.

`start_jobs(app, load_model)` and `stop_jobs(app)` run the local endpoint in the app's lifespan when
`settings.jobs_enabled` (`koe serve`); the SageMaker container runs without them.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from types import FrameType
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Query
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from koe.api import schema
from koe.api.inputs import read_limited, received_body
from koe.api.state import app_state
from koe.bodies import CUSTOM_ATTRIBUTES_HEADER, body_kind, header_options
from koe.engine import job_slots
from koe.errors import InputError
from koe.jobs.endpoint import LocalEndpoint
from koe.jobs.job import Job
from koe.jobs.queue import new_job_id
from koe.ondemand import OnDemandModels

logger = logging.getLogger("koe.api.jobs")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_JSON_BYTES = 64 * 1024
JOB_FIELDS = ("id", "format", "response_format", "model", "webhook_url", "ttl_s", "timeout_s")
JSON_FIELDS = (*JOB_FIELDS, "input_location", "content_type", "output_path", "failure_path", "options")
NUMBER_FIELDS = ("ttl_s", "timeout_s")


def local_endpoint(request: Request) -> LocalEndpoint:
    endpoint = app_state(request).jobs
    if endpoint is None:
        raise HTTPException(404, "the jobs API is off on this server (koe serve turns it on: KOE_JOBS_ENABLED)")
    return endpoint


@router.post(
    "", status_code=202, summary="Submit a job: an upload, or an input location", openapi_extra=schema.job_body()
)
async def submit_job(request: Request) -> JSONResponse:
    endpoint = local_endpoint(request)
    settings = endpoint.settings
    attributes = header_options(request.headers.get(CUSTOM_ATTRIBUTES_HEADER))
    if body_kind(request.headers.get("content-type")) == "json":
        fields = _json_fields(await read_limited(request, MAX_JSON_BYTES))
        job, created = await run_in_threadpool(_submit, endpoint, fields, attributes, None)
    else:
        spool = received_body(request, max_bytes=settings.max_input_bytes, spool_dir=settings.spool_dir)
        async with spool as body:
            fields = {**dict(request.query_params), **body.fields}
            fields["id"] = _text(fields.get("id")) or new_job_id()
            location = await run_in_threadpool(endpoint.ingest_upload, body.audio, str(fields["id"]))
            try:
                job, created = await run_in_threadpool(_submit, endpoint, fields, attributes, location)
            except BaseException:  # refused: its upload goes (unless the same job, queued earlier, reads it)
                await run_in_threadpool(endpoint.release_upload, location)
                raise
            if job.status.finished:  # the same job again, finished earlier: the upload just stored is not needed
                await run_in_threadpool(endpoint.release_upload, location)
    return JSONResponse(
        job.view(),
        status_code=202 if created else 200,
        headers={
            "Location": f"/v1/jobs/{job.id}",
            "X-Amzn-SageMaker-OutputLocation": header_value(job.output_location),
            "X-Amzn-SageMaker-FailureLocation": header_value(job.failure_location),
        },
    )


HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def header_value(location: str) -> str:
    """A location as an HTTP header value: S3 keys may hold any Unicode, headers only Latin-1, so characters
    outside printable ASCII are percent-encoded (UTF-8) there; the body carries the location as is."""
    return quote(location, safe=HEADER_SAFE)


def _json_fields(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict) or "input_location" not in body:
        raise InputError('a JSON job needs "input_location" (a file:// or s3:// URL); to upload, use multipart')
    return body


def _submit(
    endpoint: LocalEndpoint, fields: dict[str, Any], attributes: dict[str, str], location: str | None
) -> tuple[Job, bool]:
    fields = dict(fields)
    known = {name: fields.pop(name) for name in list(fields) if name in JSON_FIELDS}
    options = known.pop("options", None) or {}
    if not isinstance(options, dict):
        raise InputError('"options" must be an object of transcription options')
    twice = sorted(set(attributes) & (set(fields) | set(options)))
    if twice:
        raise InputError(f"{', '.join(twice)}: given both in custom attributes and in the body")
    for name in NUMBER_FIELDS:
        if isinstance(known.get(name), str):
            known[name] = _number(name, known[name])
    return endpoint.submit(
        location or str(known.get("input_location")),
        job_id=_text(known.get("id")),
        options={**attributes, **options, **fields},
        format=str(known.get("format") or known.get("response_format") or "verbose_json"),
        model=_text(known.get("model")),
        content_type=_text(known.get("content_type")),
        webhook_url=_text(known.get("webhook_url")),
        ttl_s=known.get("ttl_s"),
        timeout_s=known.get("timeout_s"),
        output_path=_text(known.get("output_path")),
        failure_path=_text(known.get("failure_path")),
    )


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _number(name: str, value: str) -> float | None:
    if value.strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise InputError(f"{name}: {value!r} is not a number") from None


@router.get("", summary="List jobs, newest first")
def list_jobs(
    request: Request,
    status: str | None = Query(None, description="queued | running | completed | failed | expired | cancelled"),
    limit: int = Query(50, description="Jobs per page (1..1000)."),
    cursor: str | None = Query(None, description="`next_cursor` from the previous page."),
) -> dict[str, Any]:
    jobs, next_cursor = local_endpoint(request).list(status, limit, cursor)
    return {"jobs": [job.view() for job in jobs], "next_cursor": next_cursor}


@router.get("/{job_id:path}/result", summary="A completed job's transcript, in any format")
def job_result(
    request: Request,
    job_id: str,
    format: str | None = Query(None, description="text | json | verbose_json | srt | vtt | tsv"),
) -> Response:
    body, content_type = local_endpoint(request).result(job_id, format)
    return Response(body, media_type=content_type)


@router.get("/{job_id:path}", summary="A job's status, progress, timings and error")
def get_job(request: Request, job_id: str) -> dict[str, Any]:
    endpoint = local_endpoint(request)
    view = endpoint.get(job_id).view()
    if view["status"] == "completed":  # what the reader of the transcript should know (koe.hallucination)
        view["warnings"] = endpoint.queue.warnings(job_id)
    return view


@router.delete("/{job_id:path}", summary="Cancel a queued job")
def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    return local_endpoint(request).cancel(job_id).view()


# -- the app's lifespan -------------------------------------------------------------------------------


async def start_jobs(app: FastAPI) -> LocalEndpoint:
    """Start the local endpoint (queue, worker pool, reaper) on the app's on-demand models; it becomes the
    app state's `jobs`."""
    state = app_state(app)
    settings = state.settings
    models = state.models
    assert isinstance(models, OnDemandModels), "the local endpoint loads its models on demand"

    def build() -> LocalEndpoint:
        return LocalEndpoint(settings, metrics=state.metrics, audio_memory=state.audio_memory, engines=models)

    endpoint = await anyio.to_thread.run_sync(build)
    endpoint.start()
    state.jobs = endpoint
    _chain_signals(endpoint)
    logger.info(
        "local endpoint: data in %s, %d job slot(s), model %s loads on demand",
        settings.data_dir, job_slots(settings), settings.model,
    )  # fmt: skip
    return endpoint


async def stop_jobs(app: FastAPI) -> None:
    """Drain the worker pool (two-stage: see WorkerPool.stop) and close the endpoint."""
    state = app_state(app)
    endpoint = state.jobs
    if endpoint is None:
        return
    await anyio.to_thread.run_sync(endpoint.stop)
    state.threads_left_running = endpoint.pool.threads_left_running
    state.jobs = None


def _chain_signals(endpoint: LocalEndpoint) -> None:
    """Let the worker pool see SIGTERM/SIGINT too (first: stop claiming; second: release now), then pass the
    signal on to the server's own handler. Only possible where the server runs in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            endpoint.pool.on_signal(signum, frame)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)
