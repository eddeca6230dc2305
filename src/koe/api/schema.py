"""OpenAPI declarations for the routes that read their body themselves (streamed, so FastAPI sees no parameter).

Declaring the bodies (raw audio, multipart, JSON) and the headers these routes read lets clients generate code and
lets schemathesis reach them with real bodies instead of empty ones.
"""

from __future__ import annotations

from typing import Any

BINARY = {"type": "string", "format": "binary"}
TEXT = {"type": "string"}

OPTION_FIELDS: dict[str, Any] = {
    "language": {"type": "string", "description": "auto, or a language code such as en or ja."},
    "task": {"type": "string", "enum": ["transcribe", "translate"]},
    "beam_size": {"type": "integer", "minimum": 1, "maximum": 16},
    "temperature": {"type": "string", "description": "A temperature, or a fallback ladder: 0|0.2|0.4."},
    "word_timestamps": {"type": "boolean"},
    "vad": {"type": "boolean"},
    "mode": {"type": "string", "enum": ["auto", "batched", "sequential"]},
}
"""The transcription options most clients send (the full set: koe.options)."""

CUSTOM_ATTRIBUTES = {
    "name": "X-Amzn-SageMaker-Custom-Attributes",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 1024},
    "description": "Options as `name=value` pairs separated by commas or semicolons.",
}
ACCEPT = {
    "name": "Accept",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "The output format: application/json, text/plain, text/vtt, application/x-subrip, ...",
}


JOB_FIELDS: dict[str, Any] = {
    "id": {"type": "string", "maxLength": 64, "description": "Your id for the job (idempotent resubmission)."},
    "format": {"type": "string", "enum": ["text", "json", "verbose_json", "srt", "vtt", "tsv"]},
    "model": TEXT,
    "webhook_url": {"type": "string", "description": "Notified when the job ends (KOE_WEBHOOK_HOSTS)."},
    "ttl_s": {"type": "number", "description": "How long the job may wait in the queue (1..21600)."},
    "timeout_s": {"type": "number", "description": "How long one attempt may run (1..3600)."},
}
JOB_JSON: dict[str, Any] = {
    "type": "object",
    "required": ["input_location"],
    "properties": {
        "input_location": {"type": "string", "description": "file:// (inside the roots) or s3:// (allowed bucket)."},
        **JOB_FIELDS,
        "content_type": TEXT,
        "output_path": TEXT,
        "failure_path": TEXT,
        "options": {"type": "object", "properties": OPTION_FIELDS},
    },
}
AUDIO_JSON: dict[str, Any] = {
    "type": "object",
    "required": ["audio"],
    "properties": {"audio": {"type": "string", "format": "byte", "description": "The audio, base64."}, **OPTION_FIELDS},
}
TRANSCRIBE_BODY_DOC = "raw audio, a multipart form (`file` + options) or JSON (`audio` in base64 + options)"


def header(name: str, description: str, schema: dict[str, Any] | None = None, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "schema": schema or TEXT, "description": description}


def audio_body(
    form_fields: dict[str, Any],
    json_body: dict[str, Any],
    *,
    headers: list[dict[str, Any]] | None = None,
    raw: bool = True,
) -> dict[str, Any]:
    """`openapi_extra` for a route taking audio as raw bytes, as a multipart form (`file` + `form_fields`) or as
    JSON (`json_body`, an object schema)."""
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": ["file"], "properties": {"file": BINARY, **form_fields}}
        },
        "application/json": {"schema": json_body},
    }
    if raw:
        content = {"audio/wav": {"schema": BINARY}, "application/octet-stream": {"schema": BINARY}, **content}
    extra: dict[str, Any] = {"requestBody": {"required": True, "content": content}}
    if headers:
        extra["parameters"] = headers
    return extra


def transcribe_body() -> dict[str, Any]:
    """/invocations and InvokeEndpoint: audio in any of the three shapes, options in the body or a header."""
    return audio_body(OPTION_FIELDS, AUDIO_JSON, headers=[CUSTOM_ATTRIBUTES, ACCEPT])


def job_body() -> dict[str, Any]:
    """POST /v1/jobs: an upload (raw, fields in the query; or multipart) or JSON naming an input location."""
    return audio_body({**JOB_FIELDS, **OPTION_FIELDS}, JOB_JSON, headers=[CUSTOM_ATTRIBUTES])


def async_invocation() -> dict[str, Any]:
    """InvokeEndpointAsync: everything in SageMaker's headers; koe serve also takes the audio inline."""
    prefix = "X-Amzn-SageMaker-"
    headers = [
        header(prefix + "InputLocation", "s3:// or file:// location of the audio.", required=False),
        header(prefix + "Content-Type", "The input's media type."),
        header(prefix + "Accept", "The output format's media type."),
        header(prefix + "Custom-Attributes", "Options as name=value pairs.", {"type": "string", "maxLength": 1024}),
        header(prefix + "Inference-Id", "Your id for the invocation.", {"type": "string", "maxLength": 64}),
        header(prefix + "RequestTTLSeconds", "60..21600", {"type": "integer"}),
        header(prefix + "InvocationTimeoutSeconds", "1..3600", {"type": "integer"}),
    ]
    body = {"required": False, "content": {"application/octet-stream": {"schema": BINARY}}}
    return {"parameters": headers, "requestBody": body}


__all__ = ["ACCEPT", "CUSTOM_ATTRIBUTES", "OPTION_FIELDS", "async_invocation", "audio_body", "header", "job_body",
           "transcribe_body"]  # fmt: skip
