"""Bad input at every door: the CLI (`koe transcribe`), POST /invocations, POST /v1/jobs, POST
/v1/audio/transcriptions, and the SageMaker runtime API (POST /endpoints/{name}/invocations and
/async-invocations), against one real `koe serve` for the module.

Each input gets its specific error (a 4xx in the door's own error shape, or a failed job with a failure object for
the async doors); inputs that are odd but decodable (a truncated mp3 still holds audio, a wav header may claim
4 GB, 8 channels at 192 kHz are downmixed) are transcribed. After every request /ping answers 200, and at the
end nothing was written outside the data folder and the spool folder holds no leftover request bodies.
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
import struct
import subprocess
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from conftest import AUDIO_DIR
from koe import errors
from koe.audio import decode
from support.jobs_support import KOE, KoeProcess, koe_env, start_server, wait_finished
from support.media import encode_audio, video_only
from support.reliability import read_jobs, report, snapshot

MAX_DURATION_S = 60
ENDPOINT = "/endpoints/koe-test/"
SPEECH = AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav"  # 2 s


def _error_classes(cls: type[errors.KoeError]) -> list[type[errors.KoeError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _error_classes(sub))]


STATUS = {cls.type: errors.http_status(cls("")) for cls in _error_classes(errors.KoeError)}
"""koe's error type -> HTTP status."""


# -- the bad media ------------------------------------------------------------------------------------------


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    pixels = b"".join(b"\0" + b"\xff\x00\x00" * 4 for _ in range(4))
    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


PDF = b"%PDF-1.4\n1 0 obj <</Type /Catalog /Pages 2 0 R>> endobj\n2 0 obj <</Type /Pages /Kids [] /Count 0>> endobj\n"


def zipped(member: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("speech.wav", member)
    return buffer.getvalue()


def corrupt(data: bytes, start: int, count: int, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[start : start + count] = rng.randbytes(count)
    return bytes(out)


def wav_claiming_4_gb(wav: bytes) -> bytes:
    """A real 2 s wav whose RIFF and data chunk sizes claim about 4 GB."""
    data = wav.index(b"data")
    return wav[:4] + struct.pack("<I", 0xFFFFFFF0) + wav[8 : data + 4] + struct.pack("<I", 0xFFFFFFE0) + wav[data + 8 :]


def hours_of_silence(path: Path, hours: float = 3.0, rate: int = 1000) -> bytes:
    """FLAC of `hours` of digital silence: under 1 MB that decodes to hours (FLAC blocks of 60 s at 1 kHz)."""
    block = 60 * rate
    with av.open(str(path), "w") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono", options={"block_time_ms": "60000"})  # type: ignore[call-overload]
        zeros = np.zeros((1, block), np.int16)
        for i in range(int(hours * 3600 / 60)):
            frame = av.AudioFrame.from_ndarray(zeros, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, i * block
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path.read_bytes()


OK = "ok"
"""Expected outcome of an odd input that still decodes: a transcript."""

MEDIA_EXPECTED = {
    "zero_bytes": "empty_input",
    "random_bytes": "undecodable_audio",
    "png_image": "no_audio_stream",  # FFmpeg opens it as an image: a container without audio
    "pdf": "undecodable_audio",
    "zip_of_a_wav": "undecodable_audio",
    "mp3_cut_inside_its_first_frame": "undecodable_audio",
    "mp3_cut_in_half": OK,
    "mp3_corrupted_middle": OK,
    "flac_cut_inside_its_header": "undecodable_audio",
    "flac_cut_in_half": OK,
    "flac_corrupted_header": "undecodable_audio",
    "flac_corrupted_middle": OK,
    "wav_cut_inside_its_header": "undecodable_audio",
    "wav_header_without_samples": "undecodable_audio",
    "wav_corrupted_header": "undecodable_audio",
    "wav_header_claiming_4_GB": OK,
    "hours_of_silence": "audio_too_long",
    "video_without_audio": "no_audio_stream",
    "8_channels_192_kHz": OK,
}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("media")
    rng = random.Random(7)
    samples = decode(SPEECH).samples
    wav = SPEECH.read_bytes()
    mp3 = encode_audio(samples, folder / "s.mp3", codec="libmp3lame").read_bytes()
    flac = encode_audio(samples, folder / "s.flac", codec="flac").read_bytes()
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(192_000) / 192_000)).astype(np.float32)
    built = {
        "zero_bytes": b"",
        "random_bytes": rng.randbytes(65536),
        "png_image": png(),
        "pdf": PDF,
        "zip_of_a_wav": zipped(wav),
        "mp3_cut_inside_its_first_frame": mp3[:200],
        "mp3_cut_in_half": mp3[: len(mp3) // 2],
        "mp3_corrupted_middle": corrupt(mp3, len(mp3) // 2, 512, rng),
        "flac_cut_inside_its_header": flac[:100],
        "flac_cut_in_half": flac[: len(flac) // 2],
        "flac_corrupted_header": corrupt(flac, 0, 64, rng),
        "flac_corrupted_middle": corrupt(flac, len(flac) // 2, 1024, rng),
        "wav_cut_inside_its_header": wav[:30],
        "wav_header_without_samples": wav[: wav.index(b"data") + 8],
        "wav_corrupted_header": corrupt(wav, 0, 44, rng),
        "wav_header_claiming_4_GB": wav_claiming_4_gb(wav),
        "hours_of_silence": hours_of_silence(folder / "silence.flac"),
        "video_without_audio": video_only(folder / "video.mp4").read_bytes(),
        "8_channels_192_kHz": encode_audio(
            tone, folder / "8ch.wav", codec="pcm_s16le", rate=192_000, layout="7.1"
        ).read_bytes(),
    }
    assert set(built) == set(MEDIA_EXPECTED)
    return built


# -- one server for the module -----------------------------------------------------------------------------


@dataclass
class Stack:
    server: KoeProcess
    root: Path
    data: Path
    spool: Path
    sentinel: Path

    @property
    def url(self) -> str:
        return self.server.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("bad-input")
    data, spool, sentinel = root / "data", root / "spool", root / "sentinel"
    spool.mkdir()
    (sentinel / "nested").mkdir(parents=True)
    (sentinel / "secret.wav").write_bytes(SPEECH.read_bytes())
    (sentinel / "nested" / "notes.txt").write_text("do not touch")
    (sentinel / "escape").symlink_to("/etc")
    env = koe_env(data, max_duration_s=MAX_DURATION_S, worker_concurrency=2, spool_dir=spool, endpoint_name="koe-test")
    env["TMPDIR"] = str(spool)
    before = snapshot(root, skip=(data, spool))
    server = start_server(env, tmp_path_factory.mktemp("logs") / "serve.log")
    stack = Stack(server, root, data, spool, sentinel)
    yield stack
    server.stop()
    log = server.text()
    assert snapshot(root, skip=(data, spool)) == before, "something was written outside the roots"
    left = [p.name for p in spool.iterdir() if p.name != ".ses"]  # .ses: onnxruntime's (the VAD model)
    assert not left, f"request bodies left in the spool: {left}"
    assert "Traceback" not in log, "an unhandled exception reached the server log"


def healthy(stack: Stack) -> None:
    response = httpx.get(f"{stack.url}/ping", timeout=5)
    assert response.status_code == 200
    assert stack.server.process.poll() is None


# -- the doors ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a door answered: the HTTP status and the error type it named (koe's type; OpenAI's code; for the
    runtime API the type inside the relayed error), or for the async doors the id of the job it queued."""

    status: int
    error_type: str | None = None
    job_id: str | None = None
    body: Any = None


def koe_outcome(response: httpx.Response) -> Outcome:
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
    error = body.get("error") if isinstance(body, dict) else None
    return Outcome(response.status_code, error.get("type") if isinstance(error, dict) else None, body=body)


def post_invocations(url: str, data: bytes, name: str) -> Outcome:
    response = httpx.post(f"{url}/invocations", content=data, headers={"Content-Type": "application/octet-stream"},
                          timeout=120)  # fmt: skip
    return koe_outcome(response)


def post_job(url: str, data: bytes, name: str) -> Outcome:
    files = {"file": (f"{name}.bin", data, "application/octet-stream")}
    response = httpx.post(f"{url}/v1/jobs", files=files, data={"id": f"jobs-{name}", "format": "text"}, timeout=60)
    outcome = koe_outcome(response)
    if response.status_code == 202:
        outcome.job_id = response.json()["id"]
    return outcome


def post_openai(url: str, data: bytes, name: str) -> Outcome:
    files = {"file": (f"{name}.bin", data, "application/octet-stream")}
    response = httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "whisper-1"}, timeout=120)
    outcome = koe_outcome(response)
    if outcome.error_type is not None:  # OpenAI's shape: koe's error type is the code
        assert outcome.body["error"]["type"] in ("invalid_request_error", "server_error")
        outcome.error_type = outcome.body["error"]["code"]
    return outcome


def post_runtime_sync(url: str, data: bytes, name: str) -> Outcome:
    response = httpx.post(f"{url}{ENDPOINT}invocations", content=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=120)  # fmt: skip
    if response.status_code == 200:
        return Outcome(200)
    body = response.json()
    assert response.headers["x-amzn-errortype"] == "ModelError" and response.status_code == 424, body
    original = json.loads(body["OriginalMessage"])["error"]["type"]
    return Outcome(int(body["OriginalStatusCode"]), original, body=body)


def post_runtime_async(url: str, data: bytes, name: str) -> Outcome:
    headers = {"Content-Type": "application/octet-stream", "X-Amzn-SageMaker-Inference-Id": f"async-{name}"}
    response = httpx.post(f"{url}{ENDPOINT}async-invocations", content=data, headers=headers, timeout=60)
    body = response.json()
    if response.status_code == 202:
        return Outcome(202, job_id=body["InferenceId"], body=body)
    return Outcome(response.status_code, response.headers.get("x-amzn-errortype"), body=body)


Door = Callable[[str, bytes, str], Outcome]
SYNC_DOORS: dict[str, Door] = {
    "invocations": post_invocations,
    "openai": post_openai,
    "runtime_invoke_endpoint": post_runtime_sync,
}
ASYNC_DOORS: dict[str, Door] = {"jobs": post_job, "runtime_invoke_endpoint_async": post_runtime_async}


def failure_object(stack: Stack, job_id: str) -> dict[str, Any]:
    view = httpx.get(f"{stack.url}/v1/jobs/{job_id}", timeout=10).json()
    path = Path(view["failure_location"].removeprefix("file://"))
    result: dict[str, Any] = json.loads(path.read_text())
    return result


@pytest.mark.parametrize("door", sorted(SYNC_DOORS))
def test_bad_media_at_the_synchronous_doors(stack: Stack, media: dict[str, bytes], door: str) -> None:
    for name, expected in MEDIA_EXPECTED.items():
        outcome = SYNC_DOORS[door](stack.url, media[name], name)
        if expected == OK:
            assert outcome.status == 200, (name, outcome)
        else:
            assert (outcome.status, outcome.error_type) == (STATUS[expected], expected), (name, outcome)
        healthy(stack)
    report("bad_media", door=door, inputs=len(MEDIA_EXPECTED))


@pytest.mark.parametrize("door", sorted(ASYNC_DOORS))
def test_bad_media_at_the_asynchronous_doors(stack: Stack, media: dict[str, bytes], door: str) -> None:
    queued: dict[str, str] = {}
    for name in MEDIA_EXPECTED:
        outcome = ASYNC_DOORS[door](stack.url, media[name], name)
        if name == "zero_bytes":  # refused at the door: there is nothing to queue
            expected_error = "empty_input" if door == "jobs" else "ValidationError"
            assert (outcome.status, outcome.error_type) == (400, expected_error), outcome
        else:
            assert outcome.status == 202 and outcome.job_id, (name, outcome)
            queued[name] = outcome.job_id
        healthy(stack)
    for name, job_id in queued.items():
        view = wait_finished(stack.url, job_id, 180)
        expected = MEDIA_EXPECTED[name]
        output = Path(view["output_location"].removeprefix("file://"))
        if expected == OK:
            assert view["status"] == "completed", (name, view)
            assert output.is_file()
        else:
            assert view["status"] == "failed" and view["error"]["type"] == expected, (name, view)
            assert failure_object(stack, job_id)["error"]["type"] == expected
            assert not output.exists()
        healthy(stack)
    report("bad_media", door=door, inputs=len(MEDIA_EXPECTED))


def test_bad_media_at_the_cli(stack: Stack, media: dict[str, bytes], tmp_path: Path) -> None:
    """`koe transcribe` with every bad file at once: one line per failed file naming the problem, the good ones
    transcribed, exit code 1."""
    files = []
    for name, data in media.items():
        path = tmp_path / f"{name}.bin"
        path.write_bytes(data)
        files.append(path)
    env = {**koe_env(tmp_path / "cli-data", max_duration_s=MAX_DURATION_S), "COLUMNS": "400", "TMPDIR": str(tmp_path)}
    result = subprocess.run([*KOE, "transcribe", *map(str, files), "--format", "text"], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 1, result.stderr
    words = {
        "empty_input": "empty",
        "undecodable_audio": "decod",
        "no_audio_stream": "no audio stream",
        "audio_too_long": "longer than the limit",
    }
    for name, expected in MEDIA_EXPECTED.items():
        line = next((ln for ln in result.stderr.splitlines() if f"{name}.bin:" in ln), None)
        if expected == OK:
            assert line is None, line
        else:
            assert line is not None and words[expected] in line, (name, line)
    assert "Traceback" not in result.stderr
    report("bad_media", door="cli", inputs=len(MEDIA_EXPECTED))


# -- bad requests: bodies, headers, options, ids and locations ----------------------------------------------


@dataclass(frozen=True)
class Bad:
    """One bad request: where it goes, what it sends, and the status and error type it must get."""

    name: str
    method: str
    path: str
    status: int
    error: str | None
    content: bytes | None = None
    headers: tuple[tuple[str, str | bytes], ...] = ()
    json: Any = None
    files: Any = None
    data: Any = None


def multipart(body: bytes, boundary: str = "koe-boundary") -> tuple[bytes, tuple[tuple[str, str], ...]]:
    return body, (("Content-Type", f"multipart/form-data; boundary={boundary}"),)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--koe-boundary\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


WAV = SPEECH.read_bytes()
GOOD_PARTS = part("file", WAV, "a.wav")
MALFORMED_MULTIPART = {
    "multipart_without_boundary": (b"--x\r\n\r\n", (("Content-Type", "multipart/form-data"),)),
    "multipart_with_another_boundary": multipart(GOOD_PARTS + b"--koe-boundary--\r\n", "not-the-boundary"),
    "multipart_without_closing_boundary": multipart(GOOD_PARTS),
    "multipart_without_a_file": multipart(part("language", b"en") + b"--koe-boundary--\r\n"),
    "multipart_with_two_files": multipart(GOOD_PARTS + GOOD_PARTS + b"--koe-boundary--\r\n"),
    "multipart_garbage": multipart(random.Random(3).randbytes(4096)),
    "multipart_field_not_utf8": multipart(GOOD_PARTS + part("language", b"\xff\xfe") + b"--koe-boundary--\r\n"),
}
LONG_ATTRIBUTES = "language=en;" + "x" * 1100
BIG_HEADER = "a" * 70_000
JSON_HEADERS = (("Content-Type", "application/json"),)
RAW_HEADERS = (("Content-Type", "application/octet-stream"),)


def bad_requests(data_dir: Path, sentinel: Path) -> list[Bad]:
    cases: list[Bad] = []
    upload_paths = {
        "invocations": ("/invocations", 400, "invalid_input"),
        "jobs": ("/v1/jobs", 400, "invalid_input"),
        "openai": ("/v1/audio/transcriptions", 400, "invalid_input"),
        "runtime_invoke_endpoint": (f"{ENDPOINT}invocations", 424, "invalid_input"),
        "runtime_invoke_endpoint_async": (f"{ENDPOINT}async-invocations", 400, "ValidationError"),
    }
    for door, (path, status, error) in upload_paths.items():
        for what, (body, headers) in MALFORMED_MULTIPART.items():
            cases.append(Bad(f"{door}:{what}", "POST", path, status, error, body, headers))
        # Over-long custom attributes (SageMaker's limit: 1024 characters).
        long_status, long_error = {
            "invocations": (422, "invalid_option"),
            "jobs": (422, "invalid_option"),
            "runtime_invoke_endpoint": (424, "invalid_option"),
            "runtime_invoke_endpoint_async": (400, "ValidationError"),
        }.get(door, (200, None))
        if door != "openai":  # OpenAI's API has no custom attributes
            headers = (*RAW_HEADERS, ("X-Amzn-SageMaker-Custom-Attributes", LONG_ATTRIBUTES))
            cases.append(Bad(f"{door}:custom_attributes_too_long", "POST", path, long_status, long_error, WAV, headers))
        # Unknown and out-of-range options.
        for option in ("colour=red", "beam_size=99", "temperature=2", "language=klingon", "word_timestamps=maybe"):
            key, value = option.split("=")
            if door == "openai":
                files = {"file": ("a.wav", WAV, "audio/wav")}
                cases.append(Bad(f"{door}:option_{key}", "POST", path, 422, "invalid_option", files=files,
                                 data={key: value}))  # fmt: skip
                continue
            status_opt, error_opt = {
                "runtime_invoke_endpoint": (424, "invalid_option"),
                "runtime_invoke_endpoint_async": (422, "ValidationError"),
            }.get(door, (422, "invalid_option"))
            headers = (*RAW_HEADERS, ("X-Amzn-SageMaker-Custom-Attributes", option))
            cases.append(Bad(f"{door}:option_{key}", "POST", path, status_opt, error_opt, WAV, headers))
        # An over-long header line (beyond the HTTP server's limit on a request head).
        big = (*RAW_HEADERS, ("X-Big", BIG_HEADER))
        cases.append(Bad(f"{door}:header_too_long", "POST", path, 431, "headers_too_large", WAV, big))

    # Invalid JSON bodies.
    for body in (b"{not json", b"[1, 2]", b'{"audio": "***not base64***"}', b'"just a string"', b"\xff\xfe{}"):
        label = re.sub(r"\W+", "_", body.decode("latin-1"))[:20]
        cases.append(Bad(f"invocations:json_{label}", "POST", "/invocations", 400, "invalid_input", body, JSON_HEADERS))
        cases.append(Bad(f"jobs:json_{label}", "POST", "/v1/jobs", 400, "invalid_input", body, JSON_HEADERS))
    cases.append(Bad("invocations:unsupported_content_type", "POST", "/invocations", 415, "unsupported_media_type",
                     WAV, (("Content-Type", "text/html"),)))  # fmt: skip
    cases.append(Bad("invocations:unacceptable_accept", "POST", "/invocations", 406, "not_acceptable", WAV,
                     (*RAW_HEADERS, ("Accept", "image/png"))))  # fmt: skip
    cases.append(
        Bad("openai:not_multipart", "POST", "/v1/audio/transcriptions", 400, "invalid_input", WAV, RAW_HEADERS)
    )
    cases.append(Bad("openai:unknown_model", "POST", "/v1/audio/transcriptions", 404, "model_not_found",
                     files={"file": ("a.wav", WAV, "audio/wav")}, data={"model": "../../etc/passwd"}))  # fmt: skip
    cases.append(Bad("openai:response_format", "POST", "/v1/audio/transcriptions", 422, "invalid_option",
                     files={"file": ("a.wav", WAV, "audio/wav")}, data={"response_format": "docx"}))  # fmt: skip

    # Job ids and inference ids: `../`, absolute paths, NUL bytes, unicode, too long.
    inside = f"file://{data_dir}/inputs"
    for label, job_id, status, error in (
        ("id_nul", "a\x00b", 422, "invalid_option"),
        ("id_unicode", "ジョブ", 422, "invalid_option"),
        ("id_too_long", "x" * 65, 422, "invalid_option"),
        ("id_leading_space", " x", 422, "invalid_option"),
        ("id_newline", "a\nb", 422, "invalid_option"),
    ):
        files = {"file": ("a.wav", WAV, "audio/wav")}
        cases.append(Bad(f"jobs:{label}", "POST", "/v1/jobs", status, error, files=files, data={"id": job_id}))
    for label, raw in (("id_unicode", "ジョブ".encode()), ("id_too_long", b"x" * 65), ("id_control", b"a\x7fb")):
        id_headers: tuple[tuple[str, str | bytes], ...] = (*RAW_HEADERS, ("X-Amzn-SageMaker-Inference-Id", raw))
        cases.append(Bad(f"runtime_invoke_endpoint_async:{label}", "POST", f"{ENDPOINT}async-invocations", 400,
                         "ValidationError", WAV, id_headers))  # fmt: skip

    # Locations outside the roots, through every field that takes one.
    outside = [
        "file:///etc/passwd",
        f"file://{sentinel}/secret.wav",
        f"file://{data_dir}/../sentinel/secret.wav",
        f"file://{data_dir}/inputs/%2e%2e/%2e%2e/sentinel/secret.wav",
        f"file://{sentinel}/escape/passwd",
        "file://evil.example.com/etc/passwd",
        "http://127.0.0.1:1/secret",
        "ftp://example.com/a.wav",
        f"file://{data_dir}/inputs/a\x00b",
        "s3:///no-bucket",
        "/etc/passwd",
        "../../etc/passwd",
    ]
    for i, location in enumerate(outside):
        status = 403
        cases.append(Bad(f"jobs:input_location_{i}", "POST", "/v1/jobs", status, "location_not_allowed",
                         json={"input_location": location}))  # fmt: skip
        cases.append(Bad(f"jobs:output_path_{i}", "POST", "/v1/jobs", status, "location_not_allowed",
                         json={"input_location": f"{inside}/x", "output_path": location}))  # fmt: skip
        cases.append(Bad(f"jobs:failure_path_{i}", "POST", "/v1/jobs", status, "location_not_allowed",
                         json={"input_location": f"{inside}/x", "failure_path": location}))  # fmt: skip
        if "\x00" not in location:
            runtime_status = 400 if not location.startswith(("file://", "s3://")) else 403
            cases.append(Bad(f"runtime_invoke_endpoint_async:input_location_{i}", "POST",
                             f"{ENDPOINT}async-invocations", runtime_status, "ValidationError",
                             headers=(("X-Amzn-SageMaker-InputLocation", location),)))  # fmt: skip
    for extension in ("../../sentinel", "a/../../b", "..", "s3://other/x"):
        headers = (*RAW_HEADERS, ("X-Amzn-SageMaker-S3OutputPathExtension", extension))
        status = 400 if extension.startswith("s3:") else 403
        cases.append(Bad(f"runtime_invoke_endpoint_async:output_extension_{extension}", "POST",
                         f"{ENDPOINT}async-invocations", status, "ValidationError", WAV, headers))  # fmt: skip
    for name in ("a--", "a" * 64, "bad_name", "x.y", "-a"):
        cases.append(Bad(f"runtime:endpoint_name_{name[:8]}", "POST", f"/endpoints/{name}/invocations", 400,
                         "ValidationError", WAV, RAW_HEADERS))  # fmt: skip
    for path in ("/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/%00", "/v1/jobs/%2Fetc%2Fpasswd/result",
                 "/v1/jobs/ジョブ"):  # fmt: skip
        cases.append(Bad(f"jobs:get_{path[9:20]}", "GET", path, 404, "job_not_found"))
    cases.append(Bad("jobs:list_bad_status", "GET", "/v1/jobs?status=../../x", 422, "invalid_option"))
    cases.append(Bad("jobs:list_bad_limit", "GET", "/v1/jobs?limit=100000", 422, "invalid_option"))
    cases.append(Bad("jobs:list_bad_cursor", "GET", "/v1/jobs?cursor=../../x", 422, "invalid_option"))
    cases.append(Bad("jobs:ttl_out_of_range", "POST", "/v1/jobs", 422, "invalid_option",
                     json={"input_location": f"{inside}/x", "ttl_s": 999999}))  # fmt: skip
    cases.append(Bad("jobs:timeout_not_a_number", "POST", "/v1/jobs", 400, "invalid_input",
                     files={"file": ("a.wav", WAV, "audio/wav")}, data={"timeout_s": "soon"}))  # fmt: skip
    cases.append(Bad("jobs:webhook_not_http", "POST", "/v1/jobs", 422, "invalid_option",
                     json={"input_location": f"{inside}/x", "webhook_url": "file:///etc/passwd"}))  # fmt: skip
    cases.append(Bad("jobs:unknown_format", "POST", "/v1/jobs", 422, "invalid_option",
                     json={"input_location": f"{inside}/x", "format": "../../docx"}))  # fmt: skip
    for header, value in (("X-Amzn-SageMaker-RequestTTLSeconds", "59"), ("X-Amzn-SageMaker-RequestTTLSeconds", "1e9"),
                          ("X-Amzn-SageMaker-InvocationTimeoutSeconds", "0"),
                          ("X-Amzn-SageMaker-InvocationTimeoutSeconds", "3601"),
                          ("X-Amzn-SageMaker-Accept", "image/png")):  # fmt: skip
        status = 406 if header.endswith("Accept") else 400
        cases.append(Bad(f"runtime_invoke_endpoint_async:{header[16:]}_{value}", "POST",
                         f"{ENDPOINT}async-invocations", status, "ValidationError", WAV,
                         (*RAW_HEADERS, (header, value))))  # fmt: skip
    return cases


def send(url: str, case: Bad) -> httpx.Response:
    headers = [(k.encode(), v.encode("utf-8") if isinstance(v, str) else v) for k, v in case.headers]
    return httpx.request(case.method, url + case.path, content=case.content, headers=headers, json=case.json,
                         files=case.files, data=case.data, timeout=60)  # fmt: skip


def error_of(response: httpx.Response) -> str | None:
    """The error type a response names, in whichever dialect its door speaks."""
    if "x-amzn-errortype" in response.headers:
        if response.status_code == 424:  # InvokeEndpoint relays koe's own error
            return str(json.loads(response.json()["OriginalMessage"])["error"]["type"])
        return response.headers["x-amzn-errortype"]
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(error, dict):
        return None
    return str(error.get("code") or error.get("type")) if "param" in error else str(error.get("type"))


def test_bad_requests(stack: Stack) -> None:
    cases = bad_requests(stack.data, stack.sentinel)
    problems = []
    per_door: dict[str, int] = {}
    for case in cases:
        try:
            response = send(stack.url, case)
        except httpx.HTTPError as exc:
            problems.append(f"{case.name}: {type(exc).__name__}: {exc}")
            continue
        got = (response.status_code, error_of(response))
        if got != (case.status, case.error):
            problems.append(f"{case.name}: got {got}, want {(case.status, case.error)}: {response.text[:200]}")
        door = case.name.split(":")[0]
        per_door[door] = per_door.get(door, 0) + 1
        healthy(stack)
    report("bad_requests", per_door=per_door, total=len(cases))
    assert not problems, "\n".join(problems)


def test_ids_with_paths_stay_inside_the_data_folder(stack: Stack) -> None:
    """Ids are single object names: `../`, `/`, `\\` and `%` are encoded, never followed."""
    for job_id in ("../../sentinel/owned", "/etc/passwd", "..\\..\\x", "%2e%2e%2fsentinel", "..", "."):
        files = {"file": ("a.wav", WAV, "audio/wav")}
        response = httpx.post(f"{stack.url}/v1/jobs", files=files, data={"id": job_id, "format": "text"}, timeout=60)
        assert response.status_code == 202, response.text
        view = response.json()
        for key in ("output_location", "failure_location"):
            path = Path(view[key].removeprefix("file://"))
            assert path.parent in (stack.data / "outputs", stack.data / "failures"), view[key]
        headers = {"Content-Type": "audio/wav", "X-Amzn-SageMaker-Inference-Id": f"rt{job_id}"}
        response = httpx.post(f"{stack.url}{ENDPOINT}async-invocations", content=WAV, headers=headers, timeout=60)
        assert response.status_code in (200, 202), response.text
        healthy(stack)
    deadline = time.monotonic() + 120
    while any(j["status"] in ("queued", "running") for j in httpx.get(f"{stack.url}/v1/jobs").json()["jobs"]):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    rows = read_jobs(stack.data / "koe.db")
    for job_id in ("../../sentinel/owned", "rt/etc/passwd", ".."):
        assert rows[job_id]["status"] == "completed", rows[job_id]
        output = json.loads(rows[job_id]["request"])["output_location"]
        assert Path(output.removeprefix("file://")).parent == stack.data / "outputs"


def test_base64_json_body_with_bad_audio(stack: Stack, media: dict[str, bytes]) -> None:
    """/invocations' JSON body ({"audio": base64}) takes the same path as raw bytes."""
    for name in ("random_bytes", "video_without_audio", "hours_of_silence"):
        body = {"audio": base64.b64encode(media[name]).decode()}
        response = httpx.post(f"{stack.url}/invocations", json=body, timeout=60)
        expected = MEDIA_EXPECTED[name]
        assert (response.status_code, response.json()["error"]["type"]) == (STATUS[expected], expected)
        healthy(stack)
