"""Request bodies, read without HTTP: their kinds, JSON bodies, multipart bytes, options and the output format.

Used by the HTTP routes (api/inputs.py streams a body to disk, then uses these) and by the SageMaker handler
module, which gets whole bodies as bytes and must not load the HTTP server to read them.

- A body is raw audio, multipart/form-data (one file part plus option fields) or JSON
  (`{"audio": "<base64>", ...options}`); anything else is a 415.
- JSON bodies on disk are read by `extract_json_audio`: the base64 is found by a scan of the JSON's structure and
  decoded a slice at a time, so neither the text nor the audio is ever held whole in memory.
- Options come from `X-Amzn-SageMaker-Custom-Attributes` and from form/JSON fields; a name given in both
  places, or an unknown name, is an `OptionsError` (422).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import mmap
import os
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any, BinaryIO, Literal

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from koe.errors import InputError, InputTooLargeError, OptionsError, UnsupportedMediaTypeError
from koe.formats import Format, format_for_accept
from koe.options import TranscribeOptions, parse_custom_attributes, parse_options

CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"
MAX_JSON_BYTES = 100 * 1024**2
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 64
"""Non-file parts in one form, repeats of an array field (`x[]`) included."""
MAX_FORM_BYTES = 256 * 1024
"""All non-file parts of one form together: options are small, and a form of many large fields is an attack."""
FILE_FIELDS = ("file", "audio")
ACCEPTED_CONTENT_TYPES = "audio/*, video/*, application/octet-stream, multipart/form-data, application/json"

BodyKind = Literal["raw", "multipart", "json"]


def body_kind(content_type: str | None) -> BodyKind:
    """How to read a body of this Content-Type; none means raw audio. Anything else is a 415."""
    media = (content_type or "").split(";")[0].strip().lower()
    if not media or media == "application/octet-stream" or media.startswith(("audio/", "video/")):
        return "raw"
    if media == "multipart/form-data":
        return "multipart"
    if media == "application/json":
        return "json"
    raise UnsupportedMediaTypeError(f"unsupported Content-Type {content_type!r}; use one of: {ACCEPTED_CONTENT_TYPES}")


def accept_format(accept: str | None) -> Format:
    """The output format an Accept header asks for (406 when koe cannot write it)."""
    return format_for_accept(accept)


def header_options(custom_attributes: str | None) -> dict[str, str]:
    """Options from a custom-attributes header, validated alone (so a bad one fails before any upload)."""
    attributes = parse_custom_attributes(custom_attributes)
    parse_options(attributes)
    return attributes


def merge_options(attributes: Mapping[str, Any], fields: Mapping[str, Any]) -> TranscribeOptions:
    """Options from the header's attributes and the body's fields; naming one option in both is an error."""
    twice = sorted(set(attributes) & set(fields))
    if twice:
        raise OptionsError(f"{', '.join(twice)}: given both in custom attributes and in the body")
    return parse_options({**attributes, **fields})


def json_limit(max_bytes: int) -> int:
    """The largest JSON body: base64 of `max_bytes` plus room for options, capped at `MAX_JSON_BYTES`."""
    return min(MAX_JSON_BYTES, max_bytes * 4 // 3 + MAX_FIELD_BYTES)


class MultipartReader:
    """A streaming multipart/form-data reader: the one file part goes to a sink, other parts become fields.

    The file part is the one with a filename, or one named `file` or `audio`; there must be exactly one.
    An array field (a name ending in `[]`, e.g. OpenAI's `timestamp_granularities[]`) may repeat: its values
    are joined with commas, once, at the end. At most `MAX_FIELDS` non-file parts of `MAX_FORM_BYTES` in all.
    """

    def __init__(self, content_type: str, open_sink: Callable[[], BinaryIO]) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise InputError("multipart/form-data body without a boundary in its Content-Type")
        self.fields: dict[str, str] = {}
        self._values: dict[str, list[str]] = {}
        self._parts = 0
        self.form_bytes = 0
        self.filename: str | None = None
        self.file_bytes = 0
        self._open_sink = open_sink
        self._sink: BinaryIO | None = None
        self._seen_file = False
        self._headers: dict[bytes, bytes] = {}
        self._header_name = b""
        self._header_value = b""
        self._name = ""
        self._value = bytearray()
        self._in_file = False
        self._ended = False
        try:
            self._parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._on_part_begin,
                    "on_header_field": self._on_header_field,
                    "on_header_value": self._on_header_value,
                    "on_header_end": self._on_header_end,
                    "on_headers_finished": self._on_headers_finished,
                    "on_part_data": self._on_part_data,
                    "on_part_end": self._on_part_end,
                    "on_end": self._on_end,
                },
            )
        except FormParserError as exc:
            raise InputError(f"malformed multipart/form-data body: {exc}") from None

    def write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise InputError(f"malformed multipart/form-data body: {exc}") from None

    def finish(self) -> None:
        """Check the body was complete and held a file."""
        with suppress(FormParserError):
            self._parser.finalize()
        if not self._ended:
            raise InputError("malformed multipart/form-data body: it ends before its closing boundary")
        if not self._seen_file:
            raise InputError(f"multipart/form-data body without a file part (name it {FILE_FIELDS[0]!r})")

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._value = bytearray()
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition"))
        self._name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        if filename is None and self._name not in FILE_FIELDS:
            self._parts += 1
            if self._parts > MAX_FIELDS:
                raise InputError(f"multipart/form-data body with more than {MAX_FIELDS} fields")
            return
        if self._seen_file:
            raise InputError("multipart/form-data body with more than one file part; send one per request")
        self._seen_file = self._in_file = True
        self.filename = filename.decode("utf-8", "replace") if filename else None
        self._sink = self._open_sink()

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            assert self._sink is not None
            self._sink.write(data[start:end])
            self.file_bytes += end - start
            return
        self._value += data[start:end]
        self.form_bytes += end - start
        if len(self._value) > MAX_FIELD_BYTES:
            raise InputError(f"multipart field {self._name[:100]!r} is longer than {MAX_FIELD_BYTES} bytes")
        if self.form_bytes > MAX_FORM_BYTES:
            raise InputError(f"the form's fields are larger than {MAX_FORM_BYTES} bytes in all (options are small)")

    def _on_part_end(self) -> None:
        if self._in_file:
            return
        if not self._name:
            raise InputError("multipart/form-data part without a name")
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"multipart field {self._name[:100]!r} is not UTF-8 text") from None
        values = self._values.setdefault(self._name, [])
        if values and not self._name.endswith("[]"):
            raise OptionsError(f"{self._name[:100]}: given twice in the form")
        values.append(value)

    def _on_end(self) -> None:
        self._ended = True
        self.fields = {name: ",".join(values) for name, values in self._values.items()}


def parse_multipart_bytes(content_type: str, data: bytes, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """A whole multipart body already in memory -> (audio bytes, fields). For the handler module."""
    sink = io.BytesIO()
    reader = MultipartReader(content_type, lambda: sink)
    reader.write(data)
    reader.finish()
    if reader.file_bytes > max_bytes:
        raise InputTooLargeError(f"the uploaded file is {reader.file_bytes} bytes; the limit is {max_bytes}")
    return sink.getvalue(), reader.fields


JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],:]')
"""A JSON string (with its escapes) or a structural character; everything else (numbers, literals) is skipped."""
MAX_JSON_OPTIONS = 1024 * 1024
B64_SLICE = 4 * 1024 * 1024
"""Base64 characters decoded at a time (a multiple of 4)."""


def extract_json_audio(source: BinaryIO, sink: BinaryIO, max_bytes: int) -> dict[str, Any]:
    """`{"audio": "<base64>", ...options}` in the file `source` -> the audio written to `sink`, the options
    returned. The file is mapped, not read: the base64 is found by a scan of the JSON's structure and decoded a
    slice at a time; the rest (the options) is parsed by `json`, which also checks the whole is valid JSON."""
    size = os.fstat(source.fileno()).st_size
    if size == 0:
        raise InputError("the body is not valid JSON: it is empty")
    with mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) as data:
        span = _audio_span(data)
        if span is None:  # no plain "audio" string member: the whole-body parser says what is wrong, or decodes it
            audio, fields = parse_json_body(bytes(data), max_bytes)
            sink.write(audio)
            return fields
        start, end = span
        rest = data[:start] + b'""' + data[end:]
        if len(rest) > MAX_JSON_OPTIONS:
            raise InputError(f"the JSON body's options are larger than {MAX_JSON_OPTIONS} bytes")
        _, fields = _json_object(rest)
        if fields.pop("audio", "") != "":
            raise InputError('the JSON body gives "audio" twice')
        _decode_base64(data, start + 1, end - 1, sink, max_bytes)
    return fields


def _audio_span(data: mmap.mmap) -> tuple[int, int] | None:
    """Where the top-level `"audio"` member's string value is (quotes included), or None."""
    depth = 0
    key: bytes | None = None
    previous: bytes | None = None
    for match in JSON_TOKEN.finditer(data):  # type: ignore[call-overload]
        token = match.group()
        if token in (b"{", b"["):
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
        elif token == b":":
            key = previous if depth == 1 else None
        elif token.startswith(b'"') and key == b'"audio"' and previous == b":":
            return match.start(), match.end()
        previous = token if len(token) < 16 else b'""'
    return None


def _json_object(data: bytes) -> tuple[Any, dict[str, Any]]:
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputError('a JSON body must be an object: {"audio": "<base64>", ...options}')
    if not isinstance(body.get("audio"), str):
        raise InputError('a JSON body needs an "audio" field holding the audio as base64')
    return body["audio"], body


def _decode_base64(data: mmap.mmap, start: int, end: int, sink: BinaryIO, max_bytes: int) -> None:
    """Decode the base64 in `data[start:end]` to `sink`, a slice at a time."""
    encoded: mmap.mmap | bytes = data
    if data.find(b"\\", start, end) >= 0:  # a JSON escape in base64: only `\/` is plausible (escaped slashes)
        encoded = data[start:end].replace(b"\\/", b"/")
        start, end = 0, len(encoded)
        if b"\\" in encoded:
            raise InputError('the JSON "audio" field is not valid base64')
    written = 0
    for offset in range(start, end, B64_SLICE):
        piece = encoded[offset : min(offset + B64_SLICE, end)]  # a copy of one slice, never the whole
        last = offset + B64_SLICE >= end
        try:
            if not last and piece.endswith(b"="):
                raise ValueError("padding inside")
            audio = base64.b64decode(piece, validate=True)
        except (binascii.Error, ValueError):
            raise InputError('the JSON "audio" field is not valid base64') from None
        written += len(audio)
        if written > max_bytes:
            raise InputTooLargeError(f"the audio is larger than the limit of {max_bytes} bytes")
        sink.write(audio)


def parse_json_body(data: bytes | str, max_bytes: int) -> tuple[bytes, dict[str, Any]]:
    """`{"audio": "<base64>", ...options}` -> (audio bytes, option fields)."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InputError('a JSON body must be an object: {"audio": "<base64>", ...options}')
    encoded = body.pop("audio", None)
    if not isinstance(encoded, str):
        raise InputError('a JSON body needs an "audio" field holding the audio as base64')
    try:
        audio = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InputError('the JSON "audio" field is not valid base64') from None
    if len(audio) > max_bytes:
        raise InputTooLargeError(f"the audio is {len(audio)} bytes; the limit is {max_bytes} bytes")
    return audio, body
