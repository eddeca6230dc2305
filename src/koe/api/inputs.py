"""Receiving a transcription request over HTTP: the body (raw audio, multipart or JSON) streamed to disk.

The parsing that needs no HTTP (body kinds, JSON bodies, multipart parts, options) is in `koe.bodies`; this
module adds the streaming.

- Raw and multipart bodies are streamed to a temporary file; the byte limit is enforced while streaming
  (413), so a 1 GB body is never held in memory, and `received_body` removes the file on every path.
- JSON bodies (`{"audio": "<base64>", ...options}`) are spooled to disk too (within `MAX_JSON_BYTES`); the
  base64 is decoded from the spooled file a slice at a time (`extract_json_audio`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
from starlette.requests import ClientDisconnect, Request

from koe.bodies import MAX_FIELDS, MAX_FORM_BYTES, MultipartReader, body_kind, extract_json_audio, json_limit
from koe.errors import EmptyInputError, InputError, InputTooLargeError

PARSE_BATCH = 1024 * 1024
"""Body bytes handed to the multipart parser at a time, in a worker thread (parsing is CPU work)."""


@dataclass
class ReceivedBody:
    """A request body on disk: the audio file and the option fields that came with it."""

    audio: Path
    fields: dict[str, Any] = field(default_factory=dict)
    filename: str | None = None


@asynccontextmanager
async def received_body(
    request: Request, *, max_bytes: int, spool_dir: Path | None = None
) -> AsyncIterator[ReceivedBody]:
    """Stream `request`'s body (raw, multipart or JSON) to a temporary file; the file is gone on exit."""
    kind = body_kind(request.headers.get("content-type"))
    _check_declared_length(request, max_bytes if kind != "json" else json_limit(max_bytes))
    fd, name = tempfile.mkstemp(prefix="koe-body-", dir=spool_dir)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as sink:
            if kind == "raw":
                await _spool_raw(request, sink, max_bytes)
                body = ReceivedBody(path)
            elif kind == "multipart":
                body = await _spool_multipart(request, sink, max_bytes, path)
            else:
                fields = await _spool_json(request, sink, max_bytes, spool_dir)
                body = ReceivedBody(path, fields)
        if body.audio.stat().st_size == 0:
            raise EmptyInputError("the input is empty (0 bytes of audio)")
        yield body
    finally:
        path.unlink(missing_ok=True)


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise InputTooLargeError(f"the request body is {declared} bytes; the limit is {limit} bytes")


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, raising InputTooLargeError as soon as more than `limit` bytes arrived."""
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise InputTooLargeError(f"the request body is larger than the limit of {limit} bytes")
            yield chunk
    except ClientDisconnect:
        raise InputError("the client disconnected before the body was complete") from None


async def _spool_raw(request: Request, sink: BinaryIO, limit: int) -> None:
    async for chunk in _chunks(request, limit):
        sink.write(chunk)


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body in memory, at most `limit` bytes (for small bodies such as JSON)."""
    parts = [chunk async for chunk in _chunks(request, limit)]
    return b"".join(parts)


async def _spool_multipart(request: Request, sink: BinaryIO, limit: int, path: Path) -> ReceivedBody:
    # The limit covers the whole multipart body; the option fields are small beside the audio. Parsing runs in a
    # worker thread, a batch of chunks at a time, so a large body never holds the event loop.
    reader = MultipartReader(request.headers.get("content-type", ""), lambda: sink)
    batch = bytearray()
    async for chunk in _chunks(request, limit + MAX_FORM_BYTES + MAX_FIELDS * 1024):
        batch += chunk
        if len(batch) >= PARSE_BATCH:
            await anyio.to_thread.run_sync(reader.write, bytes(batch))
            batch.clear()
        if reader.file_bytes > limit:
            raise InputTooLargeError(f"the uploaded file is larger than the limit of {limit} bytes")
    await anyio.to_thread.run_sync(reader.write, bytes(batch))
    if reader.file_bytes > limit:
        raise InputTooLargeError(f"the uploaded file is larger than the limit of {limit} bytes")
    reader.finish()
    return ReceivedBody(path, reader.fields, reader.filename)


async def _spool_json(request: Request, sink: BinaryIO, max_bytes: int, spool_dir: Path | None) -> dict[str, Any]:
    fd, name = tempfile.mkstemp(prefix="koe-json-", dir=spool_dir)
    try:
        with os.fdopen(fd, "w+b") as raw:
            async for chunk in _chunks(request, json_limit(max_bytes)):
                raw.write(chunk)
            raw.flush()
            return await anyio.to_thread.run_sync(extract_json_audio, raw, sink, max_bytes)
    finally:
        Path(name).unlink(missing_ok=True)
