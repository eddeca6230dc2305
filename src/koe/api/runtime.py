"""The SageMaker runtime API on koe: `boto3.client("sagemaker-runtime", endpoint_url=...)` works unchanged.

    POST /endpoints/{name}/async-invocations   InvokeEndpointAsync: queue a job; 202 with its locations
    POST /endpoints/{name}/invocations         InvokeEndpoint: transcribe the body now (/invocations rules)

InvokeEndpointAsync reads SageMaker's headers and checks them with SageMaker's limits (botocore's service
model): `X-Amzn-SageMaker-InputLocation` (s3:// through koe's S3 settings, or file:// under the allowed
folders; without it, the request body is the input, as botocore's inline `Body`), `-Content-Type`, `-Accept`
(the output format), `-Custom-Attributes` (koe options, checked now rather than when the job runs),
`-Inference-Id` (the job id; generated when absent), `-RequestTTLSeconds` (60..21600, default 21600),
`-InvocationTimeoutSeconds` (1..3600, default 900), `-S3OutputPathExtension` and `-Filename` (where the
output goes under the output path). The answer is 202 with `InferenceId`, `OutputLocation` and
`FailureLocation` in the body and the `X-Amzn-SageMaker-OutputLocation` / `-FailureLocation` headers.

Endpoint names: any name SageMaker would accept (`^[a-zA-Z0-9](-*[a-zA-Z0-9])*$`, up to 63 characters) reaches
this one model, so ported code keeps its endpoint name; with `KOE_STRICT_ENDPOINT_NAME=true` only
`KOE_ENDPOINT_NAME` does, and any other is a ValidationError "Endpoint ... not found" (404), as AWS answers.

Errors come in the shape botocore parses for this rest-json service (`X-Amzn-ErrorType` header + a JSON body
with `message`), with the error codes of the service model, so callers get a `ClientError` whose code they can
test (and `client.exceptions.ValidationError` etc. match):

    ValidationError ........ a bad header or endpoint name (400); a koe refusal at submission keeps koe's
                             status (403 location not allowed, 406 Accept, 413 too large, 422 options,
                             409 id reused)
    ModelError (424) ....... InvokeEndpoint: the model refused or failed the request; OriginalStatusCode and
                             OriginalMessage carry koe's own status and error body, as SageMaker relays them
    ModelNotReadyException . InvokeEndpoint while the model is still loading (429; koe serve waits for its
                             on-demand load instead)
    ServiceUnavailable ..... the model cannot be loaded (503)
    InternalFailure ........ anything unexpected (500)
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from koe.api import schema
from koe.api.deps import app_settings, engine_for
from koe.api.inputs import received_body
from koe.api.routing import scoped_errors
from koe.api.sagemaker import transcribe_request
from koe.api.state import app_state
from koe.bodies import CUSTOM_ATTRIBUTES_HEADER, accept_format, header_options
from koe.config import Settings
from koe.errors import (
    InputTooLargeError,
    KoeError,
    ModelUnavailableError,
    NotReadyError,
    error_body,
    http_status,
    internal_error,
    too_large_for_sync,
)
from koe.formats import Format, fit_options
from koe.jobs.endpoint import LocalEndpoint
from koe.options import TranscribeOptions, parse_options

logger = logging.getLogger("koe.api.runtime")

# Error codes (botocore's sagemaker-runtime service model, and AWS's authentication errors).
VALIDATION = "ValidationError"
MODEL_ERROR = "ModelError"
MODEL_NOT_READY = "ModelNotReadyException"
UNAVAILABLE = "ServiceUnavailable"
INTERNAL = "InternalFailure"
MISSING_TOKEN = "MissingAuthenticationTokenException"
BAD_TOKEN = "UnrecognizedClientException"

ENDPOINT_NAME = re.compile(r"\A[a-zA-Z0-9](-*[a-zA-Z0-9])*\Z")
INFERENCE_ID = re.compile(r"\A[!-~][ -~]{0,63}\Z")  # \S[\p{Print}]*, in the ASCII that HTTP headers carry
OUTPUT_EXTENSION = re.compile(r"\A(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+\Z")
FILENAME = re.compile(r"\A(?!.*\..*\.)[a-zA-Z0-9][a-zA-Z0-9\-_.]*\Z")
TTL_RANGE = (60, 21600)
TIMEOUT_RANGE = (1, 3600)
VARIANT = "AllTraffic"

H = "x-amzn-sagemaker-"
INPUT_LOCATION = H + "inputlocation"
CONTENT_TYPE = H + "content-type"
ACCEPT = H + "accept"
INFERENCE_ID_HEADER = H + "inference-id"
TTL = H + "requestttlseconds"
TIMEOUT = H + "invocationtimeoutseconds"
EXTENSION = H + "s3outputpathextension"
FILENAME_HEADER = H + "filename"
OUTPUT_LOCATION_HEADER = "X-Amzn-SageMaker-OutputLocation"
FAILURE_LOCATION_HEADER = "X-Amzn-SageMaker-FailureLocation"


class RuntimeApiError(Exception):
    """An error the runtime API answers with an AWS error code of its own (koe.errors.AwsError is another
    thing: a failed call to AWS by the deploy commands)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def validation_error(problems: list[str]) -> RuntimeApiError:
    """AWS's wording: "2 validation errors detected: Value '5' at 'requestTTLSeconds' failed to ...; ..."."""
    count = len(problems)
    noun = "validation error" if count == 1 else "validation errors"
    return RuntimeApiError(VALIDATION, f"{count} {noun} detected: {'; '.join(problems)}")


def _value_problem(value: str, member: str, constraint: str) -> str:
    shown = value if len(value) <= 100 else value[:100] + "..."
    return f"Value '{shown}' at '{member}' failed to satisfy constraint: Member must {constraint}"


# Error shape ----------------------------------------------------------------------------------------------


def aws_error_response(
    code: str,
    message: str,
    status: int,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """An error as botocore's rest-json parser reads it: code in `X-Amzn-ErrorType`, `message` in the body."""
    all_headers = {"X-Amzn-ErrorType": code, "X-Amzn-RequestId": str(uuid.uuid4()), **(headers or {})}
    return JSONResponse({"message": message, **(extra or {})}, status_code=status, headers=all_headers)


def render_error(request: Request, exc: Exception) -> Response:
    synchronous = not request.url.path.endswith("/async-invocations")
    if isinstance(exc, RuntimeApiError):
        return aws_error_response(exc.code, exc.message, exc.status)
    if isinstance(exc, KoeError):
        return koe_error_response(exc, synchronous=synchronous)
    if isinstance(exc, RequestValidationError | HTTPException):
        detail = exc.errors() if isinstance(exc, RequestValidationError) else exc.detail
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        return aws_error_response(VALIDATION, str(detail), status)
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return aws_error_response(INTERNAL, internal_error(exc).message, 500)


def koe_error_response(exc: KoeError, *, synchronous: bool) -> JSONResponse:
    status = http_status(exc)
    if isinstance(exc, NotReadyError) and synchronous:
        return aws_error_response(MODEL_NOT_READY, exc.message, 429)
    if isinstance(exc, NotReadyError | ModelUnavailableError):
        return aws_error_response(UNAVAILABLE, exc.message, 503)
    if synchronous:
        # SageMaker relays a container's error as ModelError, with the container's status and body inside.
        kind = "client" if status < 500 else "server"
        original = json.dumps(error_body(exc), ensure_ascii=False)
        message = f'Received {kind} error ({status}) from model with message "{exc.message}"'
        extra = {"OriginalStatusCode": status, "OriginalMessage": original}
        return aws_error_response(MODEL_ERROR, message, 424, extra=extra)
    if status >= 500:
        logger.error("async invocation refused: %s: %s", exc.type, exc.message)
        return aws_error_response(INTERNAL, exc.message, 500)
    return aws_error_response(VALIDATION, exc.message, status)


router = APIRouter(tags=["sagemaker-runtime"], route_class=scoped_errors(render_error))


# Endpoint names -------------------------------------------------------------------------------------------


def check_endpoint(settings: Settings, name: str) -> None:
    """A name SageMaker would accept; with strict_endpoint_name, also the configured one."""
    if len(name) > 63 or not ENDPOINT_NAME.match(name):
        raise validation_error(
            [_value_problem(name, "endpointName", "satisfy regular expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9])*")]
            if len(name) <= 63
            else [_value_problem(name, "endpointName", "have length less than or equal to 63")]
        )
    if settings.strict_endpoint_name and name != settings.endpoint_name:
        raise RuntimeApiError(VALIDATION, f"Endpoint {name} of account local not found.", 404)


# InvokeEndpointAsync headers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsyncInvocation:
    """InvokeEndpointAsync's request, checked."""

    input_location: str | None
    content_type: str | None
    format: Format
    options: TranscribeOptions
    inference_id: str
    ttl_s: int
    timeout_s: int
    output_extension: str | None
    filename: str | None


def parse_async_headers(headers: Mapping[str, str], settings: Settings) -> AsyncInvocation:
    """SageMaker's InvokeEndpointAsync headers -> an AsyncInvocation, or the AWS-worded ValidationError that
    lists every problem. koe's own checks (options, Accept) run after the AWS ones."""
    problems: list[str] = []

    def text(header: str, member: str, *, low: int = 0, high: int = 1024) -> str | None:
        value = headers.get(header)
        if value is None:
            return None
        if len(value) < low:
            problems.append(_value_problem(value, member, f"have length greater than or equal to {low}"))
        elif len(value) > high:
            problems.append(_value_problem(value, member, f"have length less than or equal to {high}"))
        elif not value.isascii():
            problems.append(_value_problem(value, member, "satisfy regular expression pattern: \\p{ASCII}*"))
        return value

    def pattern(value: str | None, member: str, regex: re.Pattern[str], shown: str) -> str | None:
        if value is not None and not regex.match(value):
            problems.append(_value_problem(value, member, f"satisfy regular expression pattern: {shown}"))
        return value

    def integer(header: str, member: str, bounds: tuple[int, int], default: int) -> int:
        value = headers.get(header)
        if value is None:
            return default
        try:
            number = int(value.strip())
        except ValueError:
            problems.append(_value_problem(value, member, "be an integer"))
            return default
        low, high = bounds
        if number < low:
            problems.append(_value_problem(value, member, f"have value greater than or equal to {low}"))
        elif number > high:
            problems.append(_value_problem(value, member, f"have value less than or equal to {high}"))
        return number

    location = text(INPUT_LOCATION, "inputLocation", low=1, high=1024)
    content_type = text(CONTENT_TYPE, "contentType")
    accept = text(ACCEPT, "accept")
    attributes = text(CUSTOM_ATTRIBUTES_HEADER, "customAttributes")
    inference_id = pattern(
        text(INFERENCE_ID_HEADER, "inferenceId", low=1, high=64),
        "inferenceId",
        INFERENCE_ID,
        "\\A\\S[\\p{Print}]*\\z",
    )
    ttl_s = integer(TTL, "requestTTLSeconds", TTL_RANGE, settings.request_ttl_s)
    timeout_s = integer(TIMEOUT, "invocationTimeoutSeconds", TIMEOUT_RANGE, settings.invocation_timeout_s)
    extension = pattern(
        text(EXTENSION, "s3OutputPathExtension", low=1, high=512),
        "s3OutputPathExtension",
        OUTPUT_EXTENSION,
        "^(?!s3:|https:)[a-zA-Z0-9!_.*'()/-]+$",
    )
    filename = pattern(
        text(FILENAME_HEADER, "filename", low=1, high=32),
        "filename",
        FILENAME,
        "^(?!.*\\..*\\.)[a-zA-Z0-9][a-zA-Z0-9-_\\.]*$",
    )
    if location is not None and not location.startswith(("s3://", "file://")):
        problems.append(_value_problem(location, "inputLocation", "be an s3:// location (or a file:// one, on koe)"))
    if problems:
        raise validation_error(problems)
    fmt = accept_format(accept)
    options = fit_options(parse_options(header_options(attributes)), [fmt])
    return AsyncInvocation(
        input_location=location,
        content_type=content_type,
        format=fmt,
        options=options,
        inference_id=inference_id or str(uuid.uuid4()),
        ttl_s=ttl_s,
        timeout_s=timeout_s,
        output_extension=extension.strip("/") if extension else None,
        filename=filename,
    )


# Routes ---------------------------------------------------------------------------------------------------


@router.post(
    "/endpoints/{endpoint_name}/invocations",
    summary="InvokeEndpoint: transcribe the request body now (same body rules as /invocations)",
    response_class=Response,
    openapi_extra=schema.transcribe_body(),
)
async def invoke_endpoint(request: Request, endpoint_name: str) -> Response:
    settings = app_settings(request)
    check_endpoint(settings, endpoint_name)
    if app_state(request).jobs is not None:
        await engine_for(request)  # koe serve loads the model on demand: wait for it rather than answer 429
    try:
        response = await transcribe_request(request, max_bytes=settings.max_sync_bytes)
    except InputTooLargeError as exc:
        limit = min(settings.max_sync_bytes, settings.max_input_bytes)
        instead = "for larger inputs use InvokeEndpointAsync (upload the audio, then invoke_endpoint_async)"
        raise RuntimeApiError(VALIDATION, too_large_for_sync(exc, "InvokeEndpoint", limit, instead), 413) from None
    response.headers["x-Amzn-Invoked-Production-Variant"] = VARIANT
    return response


@router.post(
    "/endpoints/{endpoint_name}/async-invocations",
    summary="InvokeEndpointAsync: queue a transcription of InputLocation; 202 with the output locations",
    status_code=202,
    response_class=JSONResponse,
    openapi_extra=schema.async_invocation(),
)
async def invoke_endpoint_async(request: Request, endpoint_name: str) -> JSONResponse:
    settings = app_settings(request)
    check_endpoint(settings, endpoint_name)
    invocation = parse_async_headers(request.headers, settings)
    output, failure = await submit(request, invocation)
    body = {"InferenceId": invocation.inference_id, "OutputLocation": output, "FailureLocation": failure}
    headers = {OUTPUT_LOCATION_HEADER: output, FAILURE_LOCATION_HEADER: failure}
    return JSONResponse(body, status_code=202, headers=headers)


async def submit(request: Request, invocation: AsyncInvocation) -> tuple[str, str]:
    """Queue the invocation on the local endpoint; (output location, failure location)."""
    endpoint = app_state(request).jobs
    if endpoint is None:
        raise RuntimeApiError(
            VALIDATION,
            "this server has no async queue: InvokeEndpointAsync works on `koe serve` (KOE_JOBS_ENABLED); "
            "in the SageMaker container, SageMaker itself queues async invocations",
        )
    settings = endpoint.settings
    location = invocation.input_location
    inline = location is None
    if location is None:
        limit = min(settings.max_sync_bytes, settings.max_input_bytes)
        location = await inline_input(request, endpoint, limit, invocation.inference_id)
    try:
        return await _submit(endpoint, invocation, location)
    except BaseException:
        if inline:  # refused: its upload goes (unless the same invocation, queued earlier, reads it)
            await run_in_threadpool(endpoint.release_upload, location)
        raise


async def _submit(endpoint: LocalEndpoint, invocation: AsyncInvocation, location: str) -> tuple[str, str]:
    output_path, failure_path = endpoint.output_path, default_failure_path(endpoint)
    if invocation.output_extension:
        output_path = await run_in_threadpool(subfolder, endpoint, output_path, invocation.output_extension)
    job, _created = await run_in_threadpool(
        partial(
            endpoint.submit,
            location,
            job_id=invocation.inference_id,
            options=invocation.options,
            format=invocation.format,
            content_type=invocation.content_type,
            ttl_s=invocation.ttl_s,
            timeout_s=invocation.timeout_s,
            output_path=output_path,
            failure_path=failure_path,
        )
    )
    return job.output_location, job.failure_location


async def inline_input(request: Request, endpoint: LocalEndpoint, limit: int, inference_id: str) -> str:
    """botocore's inline `Body` (no InputLocation): store it in the data folder as the invocation's upload (removed
    when its job ends); its file:// location."""
    if request.headers.get("content-length", "0").strip() == "0" and "transfer-encoding" not in request.headers:
        raise validation_error(["Value null at 'inputLocation' failed to satisfy constraint: Member must not be null"])
    try:
        async with received_body(request, max_bytes=limit, spool_dir=endpoint.settings.spool_dir) as body:
            return await run_in_threadpool(endpoint.ingest_upload, body.audio, inference_id)
    except InputTooLargeError as exc:
        raise RuntimeApiError(
            VALIDATION,
            f"{exc.message.rstrip('.')}. An inline Body takes up to {limit} bytes (KOE_MAX_SYNC_BYTES); "
            "upload larger inputs and pass their InputLocation",
            413,
        ) from None


def default_failure_path(endpoint: LocalEndpoint) -> str:
    """KOE_FAILURE_PATH, else a `failures` folder beside an s3:// output path (same scheme and bucket).

    On SageMaker both locations are S3, and clients rely on it: the SageMaker Python SDK's AsyncPredictor
    parses the FailureLocation as s3:// (`ValueError: Expecting 's3' scheme`) even for a successful result.
    With only KOE_OUTPUT_PATH set to s3://, the failure path would otherwise stay file://<data_dir>/failures."""
    output = endpoint.output_path
    if endpoint.settings.failure_path or not output.startswith("s3://"):
        return endpoint.failure_path
    bucket, _, key = output.removeprefix("s3://").rstrip("/").partition("/")
    parent = key.rsplit("/", 1)[0] if "/" in key else ""
    return f"s3://{bucket}/{parent}/failures" if parent else f"s3://{bucket}/failures"


def subfolder(endpoint: LocalEndpoint, folder: str, extension: str) -> str:
    """`folder` + S3OutputPathExtension (segments joined one by one, so each is checked)."""
    for part in extension.split("/"):
        if part:
            folder = endpoint.store.join(folder, part)
    return folder


__all__ = [
    "BAD_TOKEN",
    "MISSING_TOKEN",
    "AsyncInvocation",
    "aws_error_response",
    "parse_async_headers",
    "router",
]
