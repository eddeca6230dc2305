"""SageMaker's container contract: `GET /ping` and `POST /invocations`.

`/invocations` takes the audio as the body (`audio/*`, `video/*`, `application/octet-stream`), as
`multipart/form-data` (a file part plus option fields) or as `application/json`
(`{"audio": "<base64>", ...options}`). Options also come from `X-Amzn-SageMaker-Custom-Attributes`;
`Accept` picks the output format. Decoding and inference run in worker threads, so `/ping` keeps
answering while transcriptions run.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from koe.api import schema
from koe.api.deps import app_models, app_settings, audio_claim, engine_for
from koe.api.inputs import received_body
from koe.audio import AudioLimits
from koe.bodies import CUSTOM_ATTRIBUTES_HEADER, accept_format, body_kind, header_options, merge_options
from koe.formats import CONTENT_TYPES, render
from koe.transcription import check

router = APIRouter(tags=["sagemaker"])


@router.get("/ping", summary="Health check: 200 once the model is loaded; 503 before, or after a fatal GPU error")
async def ping(request: Request) -> Response:
    app_models(request).healthy()
    return Response(status_code=200)


@router.post("/invocations", summary="Transcribe the request body", openapi_extra=schema.transcribe_body())
async def invocations(request: Request) -> Response:
    return await transcribe_request(request)


async def transcribe_request(request: Request, max_bytes: int | None = None) -> Response:
    """Transcribe one request under the /invocations rules (also for the runtime API's InvokeEndpoint, which
    passes its smaller synchronous limit as `max_bytes`)."""
    settings = app_settings(request)
    body_kind(request.headers.get("content-type"))
    fmt = accept_format(request.headers.get("accept"))
    attributes = header_options(request.headers.get(CUSTOM_ATTRIBUTES_HEADER))
    engine = await engine_for(request)
    limit = settings.max_input_bytes if max_bytes is None else min(max_bytes, settings.max_input_bytes)
    limits = AudioLimits(limit, settings.max_duration_s)
    spool = received_body(request, max_bytes=limit, spool_dir=settings.spool_dir)
    with audio_claim(request) as memory:
        async with spool as body:
            transcription = check(engine, merge_options(attributes, body.fields), [fmt])
            audio = await run_in_threadpool(transcription.decode, body.audio, limits, memory=memory)
        transcript = await run_in_threadpool(transcription.transcribe, audio)
    return Response(render(transcript, fmt), media_type=CONTENT_TYPES[fmt])
