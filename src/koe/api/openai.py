"""OpenAI's audio API on koe, so code written for OpenAI works by changing only `base_url`.

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format, temperature,
                                    timestamp_granularities[], stream
    POST /v1/audio/translations     multipart: file, model, prompt, response_format, temperature, stream
    GET  /v1/models, GET /v1/models/{id}

- `model` names a koe model: the one this server runs (`KOE_MODEL`, e.g. `tiny.en`; `whisper-1` is an alias
  for it) or, on `koe serve`, any other model koe knows (`koe models`), loaded on demand and unloaded when
  idle. Any other name is a 404 `model_not_found`.
- `response_format`: json (default) | text | srt | verbose_json | vtt | diarized_json. `timestamp_granularities[]`
  (word and/or segment) needs verbose_json; `word` turns on word timestamps. `diarized_json` (OpenAI's shape
  for speaker labels: segments with `speaker` A, B, ...) turns on koe's `diarize` option; with `diarize=true`
  the other formats carry speakers too (verbose_json segments and words get a `speaker` field).
- `temperature` t: 0 (default) means Whisper's fallback ladder 0, 0.2, ... 1.0; any other t starts it at t.
- Other form fields are koe options (beam_size, vad, hotwords, ...; see options.py), so `extra_body` works.
- `stream=true` answers `text/event-stream`: a `transcript.text.delta` event per segment as it finishes, then
  `transcript.text.done` with the whole text (an `error` event if it fails midway).
- Uploads above `KOE_MAX_SYNC_BYTES` (100 MiB) are a 413 pointing to the async route.
- Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}`; the status code is still
  koe's (`errors.http_status`), so the openai client raises the matching class (NotFoundError, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from koe.api.deps import app_models, app_settings, audio_claim, engine_for
from koe.api.inputs import received_body
from koe.api.routing import scoped_errors
from koe.audio import Audio, AudioLimits, MemoryClaim
from koe.bodies import body_kind
from koe.config import Settings
from koe.engine import Engine
from koe.errors import (
    AudioTooLongError,
    InputError,
    InputTooLargeError,
    KoeError,
    OptionsError,
    UnknownModelError,
    error_headers,
    http_status,
    internal_error,
    too_large_for_sync,
)
from koe.formats import CONTENT_TYPES, render, speakers, verbose_dict
from koe.options import DEFAULT_TEMPERATURES, TranscribeOptions, parse_options
from koe.provider import WHISPER_1
from koe.transcript import Segment, Transcript, join_text
from koe.transcription import check

logger = logging.getLogger("koe.api.openai")

PATH_PREFIXES = ("/v1/audio/", "/v1/models")
"""The paths of this API (the rest of /v1/ is koe's own: jobs, the web page's helpers)."""
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
GRANULARITIES = ("word", "segment")
ASYNC_HINT = (
    "send larger files to the async route: POST /endpoints/<name>/async-invocations "
    "(boto3's invoke_endpoint_async) or the jobs API"
)

# OpenAI fields koe does not implement: an error rather than a silent difference.
UNSUPPORTED_FIELDS = frozenset(
    {
        "include",
        "include[]",
        "known_speaker_names[]",
        "known_speaker_references[]",
        "keywords[]",
        "languages[]",
    }
)
# chunking_strategy: koe always cuts the audio with VAD, which is what "auto" asks for.
IGNORED_FIELDS = frozenset({"chunking_strategy"})
# koe option names -> the OpenAI field that sets them (for error messages' `param`).
PARAM_NAMES = {"initial_prompt": "prompt", "word_timestamps": "timestamp_granularities", "task": "model"}
ERROR_CODES = {"unknown_model": "model_not_found", "unauthorized": "invalid_api_key"}

Task = Literal["transcribe", "translate"]
_STARTED = int(time.time())


# Error shape ----------------------------------------------------------------------------------------------


def error_json(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_payload(exc: Exception) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error body) for any exception a route raised."""
    if isinstance(exc, KoeError):
        status = http_status(exc)
        body = error_json(status, exc.message, code=ERROR_CODES.get(exc.type, exc.type), param=error_param(exc))
    elif isinstance(exc, RequestValidationError):
        status = 422
        body = error_json(status, "; ".join(str(e.get("msg", "")) for e in exc.errors()), code="invalid_option")
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        body = error_json(status, str(exc.detail), code=None)
    else:
        status = 500
        body = error_json(status, internal_error(exc).message, code="internal_error")
    if status >= 500:
        logger.error("OpenAI API request failed: %s", body["error"]["message"], exc_info=exc)
    return status, body


def error_param(exc: KoeError) -> str | None:
    """The request field an error is about, in OpenAI's names."""
    if isinstance(exc, UnknownModelError):
        return "model"
    if isinstance(exc, InputError | InputTooLargeError | AudioTooLongError):
        return "file"
    if isinstance(exc, OptionsError):
        match = re.match(r"([A-Za-z_]+(?:\[\])?)[.:\s]", exc.message)
        if match:
            name = match.group(1)
            return PARAM_NAMES.get(name, name)
    return None


def render_error(request: Request, exc: Exception) -> Response:
    status, body = error_payload(exc)
    headers = {"WWW-Authenticate": 'Bearer realm="koe"'} if status == 401 else {}
    if isinstance(exc, KoeError):
        headers.update(error_headers(exc))
    return JSONResponse(body, status_code=status, headers=headers)


router = APIRouter(prefix="/v1", tags=["openai"], route_class=scoped_errors(render_error))


# Request fields -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioRequest:
    """An OpenAI audio request, with its fields turned into koe's options."""

    model: str
    format: str
    stream: bool
    granularities: frozenset[str]
    options: TranscribeOptions


def parse_fields(fields: Mapping[str, str], task: Task) -> AudioRequest:
    """The form fields of /v1/audio/* -> an AudioRequest (OptionsError naming the field when one is bad)."""
    rest = dict(fields)
    model = rest.pop("model", "").strip() or WHISPER_1
    fmt = rest.pop("response_format", "").strip() or "json"
    if fmt not in RESPONSE_FORMATS:
        raise OptionsError(f"response_format: {fmt!r} is not one of: {', '.join(RESPONSE_FORMATS)}")
    stream = parse_bool("stream", rest.pop("stream", "false"))
    granularities = parse_granularities(
        [rest.pop(name) for name in ("timestamp_granularities[]", "timestamp_granularities") if name in rest]
    )
    if granularities and fmt != "verbose_json":
        raise OptionsError("timestamp_granularities: needs response_format=verbose_json")
    for name in UNSUPPORTED_FIELDS & set(rest):
        raise OptionsError(f"{name}: not supported by koe")
    for name in IGNORED_FIELDS & set(rest):
        rest.pop(name)

    mapped: dict[str, Any] = {"task": task}
    if fmt == "diarized_json":
        if task == "translate":
            raise OptionsError("response_format: diarized_json is for transcriptions")
        rest.setdefault("diarize", "true")  # the format asks for speaker labels
    if stream and parse_bool("diarize", rest.get("diarize", "false")):
        raise OptionsError("stream: speaker labels (diarize) need the whole audio; don't stream them")
    if "prompt" in rest:
        mapped["initial_prompt"] = rest.pop("prompt")
    if "temperature" in rest:
        mapped["temperature"] = temperature_ladder(rest.pop("temperature"))
    if "word" in granularities:
        mapped["word_timestamps"] = True
    for name in sorted(set(mapped) & set(rest)):
        raise OptionsError(f"{name}: set by this route's own fields; don't send it as a koe option too")
    options = parse_options({**rest, **mapped})  # fitted to `fmt` by transcription.check
    return AudioRequest(model, fmt, stream, granularities, options)


def parse_bool(name: str, value: str) -> bool:
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise OptionsError(f"{name}: {value!r} is not true or false")


def parse_granularities(values: list[str]) -> frozenset[str]:
    names = frozenset(v.strip() for value in values for v in value.split(",") if v.strip())
    unknown = sorted(names - set(GRANULARITIES))
    if unknown:
        raise OptionsError(f"timestamp_granularities: {', '.join(unknown)} is not word or segment")
    return names


def temperature_ladder(value: str) -> tuple[float, ...]:
    """OpenAI's `temperature`: 0 means the fallback ladder 0, 0.2, ..., 1.0; t > 0 starts the ladder at t."""
    try:
        start = float(value)
    except ValueError:
        raise OptionsError(f"temperature: {value!r} is not a number between 0 and 1") from None
    if not 0.0 <= start <= 1.0:
        raise OptionsError(f"temperature: {value!r} is not between 0 and 1")
    if start == 0.0:
        return DEFAULT_TEMPERATURES
    steps = int((1.0 - start) / 0.2 + 1e-9)
    return tuple(round(start + 0.2 * i, 3) for i in range(steps + 1))


# Models ---------------------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_ids(request: Request) -> list[str]:
    """The model ids /v1/models lists: the served model, `whisper-1`, and on `koe serve` every other model it
    can load on demand without a network."""
    return app_models(request).names()


def check_model(request: Request, model: str) -> None:
    """UnknownModelError (404) unless `model` is one this server can run."""
    app_models(request).check(model)


async def model_engine(request: Request, model: str) -> Engine:
    """The engine for `model`: the served one, or on `koe serve` another model, loaded on demand (waits)."""
    check_model(request, model)
    return await engine_for(request, model)


def model_card(model: str) -> ModelCard:
    return ModelCard(id=model, created=_STARTED, owned_by="koe")


@router.get("/models", summary="The models this server can run (OpenAI's list shape)")
async def list_models(request: Request) -> ModelList:
    ids = await run_in_threadpool(model_ids, request)
    return ModelList(data=[model_card(m) for m in ids])


@router.get("/models/{model_id:path}", summary="One model (404 model_not_found if this server cannot run it)")
async def get_model(request: Request, model_id: str) -> ModelCard:
    await run_in_threadpool(check_model, request, model_id)
    return model_card(model_id)


# Transcription --------------------------------------------------------------------------------------------


def _form_schema(task: Task) -> dict[str, Any]:
    """The multipart body, for the OpenAPI document (the route streams the body itself)."""
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": "The audio (any format PyAV decodes)."},
        "model": {
            "type": "string",
            "default": WHISPER_1,
            "description": "whisper-1 or the served model's id.",
        },
        "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
        "stream": {"type": "boolean", "default": False},
    }
    if task == "transcribe":
        properties["language"] = {"type": "string", "description": "ISO-639-1 code, e.g. en."}
        properties["timestamp_granularities[]"] = {
            "type": "array",
            "items": {"type": "string", "enum": list(GRANULARITIES)},
        }
    schema = {"type": "object", "required": ["file"], "properties": properties}
    content: dict[str, Any] = {
        "application/json": {},
        "text/plain": {},
        "text/vtt": {},
        "text/event-stream": {},
    }
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}},
        "responses": {"200": {"description": "The transcript in `response_format`", "content": content}},
    }


@router.post(
    "/audio/transcriptions",
    summary="Transcribe audio (OpenAI's createTranscription)",
    openapi_extra=_form_schema("transcribe"),
    response_class=Response,
)
async def transcriptions(request: Request) -> Response:
    return await answer(request, "transcribe")


@router.post(
    "/audio/translations",
    summary="Translate audio into English text (OpenAI's createTranslation; needs a multilingual model)",
    openapi_extra=_form_schema("translate"),
    response_class=Response,
)
async def translations(request: Request) -> Response:
    return await answer(request, "translate")


async def answer(request: Request, task: Task) -> Response:
    """Read the upload, transcribe it, and answer in the asked format (or as server-sent events)."""
    settings = app_settings(request)
    if body_kind(request.headers.get("content-type")) != "multipart":
        raise InputError("file: send the audio as multipart/form-data (a `file` part plus fields), as OpenAI does")
    limit = min(settings.max_sync_bytes, settings.max_input_bytes)
    memory = audio_claim(request)
    try:
        return await _answer(request, task, settings, limit, memory)
    except BaseException:
        memory.release()
        raise


async def _answer(request: Request, task: Task, settings: Settings, limit: int, memory: MemoryClaim) -> Response:
    """`answer`, holding `memory` for the decoded audio: released when the response is done (or streamed)."""
    try:
        async with received_body(request, max_bytes=limit, spool_dir=settings.spool_dir) as body:
            asked = parse_fields(body.fields, task)
            engine = await model_engine(request, asked.model)
            if task == "translate" and not engine.multilingual:
                raise OptionsError(
                    f"model: {engine.name} is English-only and cannot translate; use a multilingual model "
                    "(e.g. model=base on `koe serve`, or serve one: `koe serve --model base`)"
                )
            transcription = check(engine, asked.options, [asked.format])
            limits = AudioLimits(limit, settings.max_duration_s)
            audio = await run_in_threadpool(transcription.decode, body.audio, limits, memory=memory)
    except InputTooLargeError as exc:
        raise InputTooLargeError(too_large_for_sync(exc, "The synchronous API", limit, ASYNC_HINT)) from None
    if asked.stream:
        return StreamingResponse(
            releasing(sse_events(engine, audio, transcription.options), memory),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    transcript = await run_in_threadpool(transcription.transcribe, audio)
    memory.release()
    return render_transcript(transcript, asked)


async def releasing(events: AsyncIterator[bytes], memory: MemoryClaim) -> AsyncIterator[bytes]:
    """`events`, releasing `memory` when the stream ends however it ends (done, failed, client gone)."""
    try:
        async for event in events:
            yield event
    finally:
        memory.release()


def render_transcript(transcript: Transcript, asked: AudioRequest) -> Response:
    usage = {"type": "duration", "seconds": round(transcript.duration, 3)}
    if asked.format == "json":
        extra = {"warnings": transcript.warnings} if transcript.warnings else {}  # koe's addition, when any
        return JSONResponse({"text": transcript.text, "usage": usage, **extra})
    if asked.format == "diarized_json":
        return JSONResponse(diarized_json(transcript, usage))
    if asked.format == "verbose_json":
        body = verbose_dict(transcript)
        if asked.granularities == {"word"}:
            body.pop("segments", None)
        body["usage"] = usage
        return JSONResponse(body)
    return Response(render(transcript, asked.format), media_type=CONTENT_TYPES[asked.format])


def diarized_json(transcript: Transcript, usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's diarized transcription: segments with speakers labelled A, B, ... in order of appearance."""
    letters = {name: speaker_letter(i) for i, name in enumerate(speakers(transcript))}
    segments = [
        {
            "type": "transcript.text.segment",
            "id": f"seg_{s.id}",
            "start": s.start,
            "end": s.end,
            "text": s.text.strip(),
            "speaker": letters.get(s.speaker or "", "A"),
        }
        for s in transcript.segments
        if s.text.strip()
    ]
    return {
        "task": "transcribe",
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
        "segments": segments,
        "usage": usage,
    }


def speaker_letter(index: int) -> str:
    """A, B, ..., Z, AA, AB, ..."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


# Streaming ------------------------------------------------------------------------------------------------


def sse(event: Mapping[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def sse_events(engine: Engine, audio: Audio, options: TranscribeOptions) -> AsyncIterator[bytes]:
    """OpenAI's transcription stream: a delta event per finished segment, then a done event.

    Inference runs in a worker thread that hands segments to the event loop; if the client goes away, the
    thread stops after the segment it is on.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Segment | Exception | None] = asyncio.Queue()
    stop = threading.Event()

    def put(item: Segment | Exception | None) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            for segment in engine.stream(audio, options):
                if stop.is_set():
                    return
                put(segment)
        except Exception as exc:
            put(exc)
            return
        put(None)

    worker = asyncio.ensure_future(run_in_threadpool(work))
    texts: list[str] = []
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                _status, body = error_payload(item)
                yield sse({"type": "error", **body})
                return
            texts.append(item.text)
            yield sse({"type": "transcript.text.delta", "delta": item.text})
        yield sse({"type": "transcript.text.done", "text": join_text(texts)})
    finally:
        stop.set()
        del worker  # it ends on its own after the current segment


__all__ = ["WHISPER_1", "error_json", "router"]
