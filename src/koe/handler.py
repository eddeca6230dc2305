"""The SageMaker handler functions, for the PyTorch inference container (TorchServe + sagemaker-inference).

`koe package` writes a `code/inference.py` that re-exports these four functions. They accept what the
/invocations server accepts: raw audio (`audio/*`, `video/*`, `application/octet-stream`),
`multipart/form-data` (a file part plus option fields) and `application/json` (`{"audio": "<base64>", ...}`);
options from `X-Amzn-SageMaker-Custom-Attributes` and the body's fields; the format from `Accept`.

Errors. The toolkit turns an exception into its status code with a body of "message + traceback". When the
toolkit hands these functions its request `context` (it does whenever a function takes one), a koe error
instead travels down the chain as a `Failure` and `output_fn` answers it like the server does: the status
from `errors.http_status()` and the JSON `{"error": {"type", "message"}}` with no traceback, which is what
SageMaker writes to the async failure location. Without a context, the error is raised (as
`GenericInferenceToolkitError` with that status when the toolkit is installed).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from koe import transcription
from koe.audio import Audio, AudioLimits, decode
from koe.bodies import (
    CUSTOM_ATTRIBUTES_HEADER,
    accept_format,
    body_kind,
    header_options,
    merge_options,
    parse_json_body,
    parse_multipart_bytes,
)
from koe.config import Settings
from koe.errors import KoeError, error_body, http_status, internal_error
from koe.formats import CONTENT_TYPES, Format, render
from koe.options import TranscribeOptions
from koe.transcript import Transcript

if TYPE_CHECKING:
    from koe.engine import Engine

logger = logging.getLogger("koe.handler")


@dataclass(frozen=True)
class Invocation:
    """What input_fn hands predict_fn: decoded audio, options, and the format when Accept was seen."""

    audio: Audio
    options: TranscribeOptions
    fmt: Format | None = None


@dataclass(frozen=True)
class Prediction:
    transcript: Transcript
    fmt: Format | None = None


@dataclass(frozen=True)
class Failure:
    """A koe error carried to output_fn, which answers it with its status and JSON body."""

    error: KoeError


def model_fn(model_dir: str, context: Any = None) -> Engine:
    """Load the model SageMaker unpacked into `model_dir` (KOE_MODEL overrides; KOE_* settings apply)."""
    from koe.engine import Engine  # here, not above: importing the handler module loads no CTranslate2

    pin_gpu(context)
    settings = _settings()
    model = settings.model if "model" in settings.model_fields_set else model_dir
    return Engine.from_settings(settings, model=model)


def input_fn(input_data: bytes | bytearray | str, content_type: str | None, context: Any = None) -> Any:
    """Decode the request body (and read options and Accept from the context's headers when it has them)."""
    try:
        return _read_input(input_data, content_type, _request_headers(context))
    except KoeError as exc:
        return _fail(exc, context)


def predict_fn(data: Any, model: Engine, context: Any = None) -> Any:
    """Transcribe an `Invocation` with the loaded engine."""
    if isinstance(data, Failure):
        return data
    try:
        return Prediction(transcription.check(model, data.options, [data.fmt]).transcribe(data.audio), data.fmt)
    except KoeError as exc:
        return _fail(exc, context)
    except Exception as exc:
        logger.exception("transcription failed")
        return _fail(internal_error(exc), context)


def output_fn(prediction: Any, accept: str | None, context: Any = None) -> tuple[bytes, str]:
    """(body, content type) in the format `accept` asks for, or the JSON error of a failed invocation."""
    if isinstance(prediction, Failure):
        return _error_response(prediction.error, context)
    try:
        fmt = prediction.fmt or accept_format(accept)
    except KoeError as exc:
        return _error_response(exc, context)
    return render(prediction.transcript, fmt).encode("utf-8"), CONTENT_TYPES[fmt]


def pin_gpu(context: Any) -> None:
    """Keep this model-server worker on the GPU TorchServe gave it (one worker per GPU), unless the
    visible devices were chosen already. Runs before anything in the worker touches CUDA."""
    properties = getattr(context, "system_properties", None) or {}
    gpu_id = properties.get("gpu_id") if isinstance(properties, dict) else None
    if gpu_id is not None and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_id)


def _settings() -> Settings:
    return Settings.model_validate({})  # KOE_* from the environment: the handler's edge


def _read_input(data: bytes | bytearray | str, content_type: str | None, headers: dict[str, str]) -> Invocation:
    settings = _settings()
    kind = body_kind(content_type)
    fmt = accept_format(headers["accept"]) if headers.get("accept") else None
    attributes = header_options(headers.get(CUSTOM_ATTRIBUTES_HEADER))
    body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fields: dict[str, Any] = {}
    if kind == "multipart":
        body, form = parse_multipart_bytes(content_type or "", body, settings.max_input_bytes)
        fields.update(form)
    elif kind == "json":
        body, fields = parse_json_body(body, settings.max_input_bytes)
    options = merge_options(attributes, fields)
    audio = decode(body, AudioLimits(settings.max_input_bytes, settings.max_duration_s))
    return Invocation(audio, options, fmt)


def _request_headers(context: Any) -> dict[str, str]:
    """The request's headers from a TorchServe context, with lower-case names ({} without a context)."""
    try:
        properties = context.request_processor[0].get_request_properties()
    except (AttributeError, IndexError, KeyError, TypeError):
        return {}
    headers = {}
    for name, value in dict(properties or {}).items():
        text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
        headers[str(name).lower()] = text
    return headers


def _can_answer(context: Any) -> bool:
    return callable(getattr(context, "set_response_status", None))


def _fail(error: KoeError, context: Any) -> Failure:
    if _can_answer(context):
        return Failure(error)
    raise _toolkit_error(error) from error


def _error_response(error: KoeError, context: Any) -> tuple[bytes, str]:
    if not _can_answer(context):
        raise _toolkit_error(error) from error
    status = http_status(error)
    context.set_response_status(code=status, phrase=HTTPStatus(status).phrase)
    return json.dumps(error_body(error)).encode("utf-8"), "application/json"


def _toolkit_error(error: KoeError) -> Exception:
    """The toolkit's exception carrying koe's status code, or the koe error itself without the toolkit."""
    try:
        from sagemaker_inference.errors import GenericInferenceToolkitError
    except ImportError:
        return error
    status = http_status(error)
    toolkit_error: Exception = GenericInferenceToolkitError(
        status, json.dumps(error_body(error)), HTTPStatus(status).phrase
    )
    return toolkit_error
