"""The SageMaker container contract over real HTTP on loopback: /ping, /invocations, errors, concurrency,
temp files, graceful SIGTERM, and the container entry's settings. Real tiny.en model, real speech."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import srt
import webvtt

from koe.api import create_app
from koe.config import Settings
from koe.container import DEFAULT_PORT, container_settings, default_model_dir, main
from koe.engine import Engine
from koe.errors import EngineError
from support.serving import (
    JFK_WORDS,
    free_port,
    python_command,
    server_in_thread,
    server_process,
    vtt_seconds,
    wait_ready,
    words,
)

MAX_BYTES = 2_000_000
FAST = {"X-Amzn-SageMaker-Custom-Attributes": "beam_size=1"}
AUDIO = Path(__file__).resolve().parents[2] / "shared" / "audio"
SHORT_CLIPS = {  # clip -> words that must appear in its transcript
    "en/jfk.flac": JFK_WORDS,
    "en/azure_whatstheweatherlike.wav": "weather like",
    "en/ljspeech_LJ001-0002.flac": "comparatively modern",
    "en/librivox_sense_and_sensibility_01_0880.wav": "young man",
}
LONG_CLIP = "en/librivox_shakespeare_sonnet_1.mp3"  # 53 s: several seconds of work on 2 CPU cores
LONG_HEADERS = {"Content-Type": "audio/mpeg", "Accept": "text/plain", **FAST}


@pytest.fixture(scope="session")
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="session")
def server(engine: Engine, spool_dir: Path) -> Iterator[str]:
    """One real uvicorn server for the module, sharing the session's tiny.en engine."""
    settings = Settings(model="tiny.en", device="cpu", max_input_bytes=MAX_BYTES, spool_dir=spool_dir)
    app = create_app(settings, engine_factory=lambda _: engine)
    with server_in_thread(app) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="session")
def jfk_bytes(jfk: Path) -> bytes:
    return jfk.read_bytes()


def post(url: str, content: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/invocations", content=content, timeout=120, **kwargs)


def assert_error(response: httpx.Response, status: int, kind: str) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    assert body["error"]["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    error: dict[str, str] = body["error"]
    return error


# --- /ping -------------------------------------------------------------------------------------------


def test_ping_answers_200_with_an_empty_body_once_loaded(server: str) -> None:
    response = httpx.get(f"{server}/ping")
    assert response.status_code == 200
    assert response.content == b""


def test_ping_and_invocations_answer_503_until_the_model_is_loaded(engine: Engine) -> None:
    release = threading.Event()

    def slow_factory(settings: Settings) -> Engine:
        release.wait(30)
        return engine

    app = create_app(Settings(device="cpu"), engine_factory=slow_factory)
    with server_in_thread(app) as url:
        started = time.monotonic()
        assert_error(httpx.get(f"{url}/ping"), 503, "not_ready")
        assert time.monotonic() - started < 2
        assert_error(post(url, b"RIFF", headers={"Content-Type": "audio/wav"}), 503, "not_ready")
        release.set()
        assert wait_ready(url, timeout=10)[-1] == 200


def test_ping_reports_why_a_model_cannot_load(tmp_path: Path) -> None:
    app = create_app(Settings(model=str(tmp_path), device="cpu"))
    with server_in_thread(app) as url:
        deadline = time.monotonic() + 10
        while (response := httpx.get(f"{url}/ping")).json()["error"]["type"] == "not_ready":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        error = assert_error(response, 503, "model_unavailable")
        assert str(tmp_path) in error["message"]


# --- content types -----------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["audio/flac", "application/octet-stream", "video/webm"])
def test_raw_bodies_of_every_audio_content_type(server: str, jfk_bytes: bytes, content_type: str) -> None:
    response = post(server, jfk_bytes, headers={"Content-Type": content_type, "Accept": "text/plain", **FAST})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert JFK_WORDS in words(response.text)


def test_multipart_body_with_option_fields(server: str, jfk_bytes: bytes) -> None:
    files = {"file": ("jfk.flac", jfk_bytes, "audio/flac")}
    data = {"word_timestamps": "true", "beam_size": "1", "language": "en"}
    response = httpx.post(f"{server}/invocations", files=files, data=data, timeout=120)  # no Accept: JSON
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert JFK_WORDS in words(body["text"])
    assert body["words"] and {"word", "start", "end"} <= set(body["words"][0])


def test_json_body_with_base64_audio_and_options(server: str, jfk_bytes: bytes) -> None:
    payload = {"audio": base64.b64encode(jfk_bytes).decode(), "beam_size": 1, "temperature": [0.0, 0.2]}
    response = httpx.post(f"{server}/invocations", json=payload, headers={"Accept": "text/plain"}, timeout=120)
    assert response.status_code == 200, response.text
    assert JFK_WORDS in words(response.text)


# --- Accept ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(server: str, jfk_bytes: bytes) -> dict[str, httpx.Response]:
    """jfk.flac answered once per Accept value."""
    accepts = [
        "text/plain",
        "application/json",
        "text/vtt",
        "application/x-subrip",
        "text/tab-separated-values",
    ]
    out = {}
    for accept in accepts:
        headers = {"Content-Type": "audio/flac", "Accept": accept, **FAST}
        out[accept] = post(server, jfk_bytes, headers=headers)
        assert out[accept].status_code == 200, out[accept].text
    return out


def test_accept_text_plain(rendered: dict[str, httpx.Response]) -> None:
    response = rendered["text/plain"]
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert JFK_WORDS in words(response.text)


def test_accept_json_gives_verbose_json(rendered: dict[str, httpx.Response]) -> None:
    response = rendered["application/json"]
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["language"] == "english" and body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(11.0, abs=0.1)
    assert JFK_WORDS in words(body["text"])
    segment = body["segments"][0]
    assert {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob"} <= set(segment)


def test_accept_srt(rendered: dict[str, httpx.Response]) -> None:
    response = rendered["application/x-subrip"]
    assert response.headers["content-type"] == "application/x-subrip; charset=utf-8"
    cues = list(srt.parse(response.text))
    assert cues and JFK_WORDS in words(" ".join(c.content for c in cues))
    starts = [c.start.total_seconds() for c in cues]
    assert starts == sorted(starts) and all(c.end > c.start for c in cues)


def test_accept_vtt(rendered: dict[str, httpx.Response]) -> None:
    response = rendered["text/vtt"]
    assert response.headers["content-type"] == "text/vtt; charset=utf-8"
    cues = list(webvtt.from_string(response.text))
    assert cues and JFK_WORDS in words(" ".join(c.text for c in cues))
    starts = [vtt_seconds(c.start) for c in cues]
    assert starts == sorted(starts) and all(vtt_seconds(c.end) > vtt_seconds(c.start) for c in cues)


def test_accept_tsv(rendered: dict[str, httpx.Response]) -> None:
    response = rendered["text/tab-separated-values"]
    assert response.headers["content-type"] == "text/tab-separated-values; charset=utf-8"
    header, *rows = response.text.strip().split("\n")
    assert header == "start\tend\ttext"
    starts = [int(r.split("\t")[0]) for r in rows]
    assert starts == sorted(starts)
    assert JFK_WORDS in words(" ".join(r.split("\t")[2] for r in rows))


# --- custom attributes -------------------------------------------------------------------------------


def test_custom_attributes_set_options(server: str, jfk_bytes: bytes) -> None:
    headers = {
        "Content-Type": "audio/flac",
        "Accept": "*/*",
        "X-Amzn-SageMaker-Custom-Attributes": "word_timestamps=true; beam_size=1, temperature=0|0.2;vad=0",
    }
    response = post(server, jfk_bytes, headers=headers)
    assert response.headers["content-type"] == "application/json"  # */* means verbose JSON
    body = response.json()
    assert JFK_WORDS in words(body["text"])
    assert len(body["words"]) >= 20
    assert all(w["end"] >= w["start"] for w in body["words"])


def test_options_given_both_as_attribute_and_field_are_refused(server: str, jfk_bytes: bytes) -> None:
    files = {"file": ("jfk.flac", jfk_bytes)}
    response = httpx.post(
        f"{server}/invocations",
        files=files,
        data={"beam_size": "2"},
        headers={"X-Amzn-SageMaker-Custom-Attributes": "beam_size=1"},
    )
    assert "beam_size" in assert_error(response, 422, "invalid_option")["message"]


# --- errors ------------------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, dict[str, str], bytes, int, str]] = [
    ("empty body", {"Content-Type": "audio/wav"}, b"", 400, "empty_input"),
    ("random bytes", {"Content-Type": "audio/mpeg"}, bytes(range(256)) * 40, 400, "undecodable_audio"),
    ("invalid JSON", {"Content-Type": "application/json"}, b"{not json", 400, "invalid_input"),
    ("JSON without audio", {"Content-Type": "application/json"}, b'{"beam_size": 1}', 400, "invalid_input"),
    ("JSON bad base64", {"Content-Type": "application/json"}, b'{"audio": "%%%"}', 400, "invalid_input"),
    (
        "multipart without a file",
        {"Content-Type": "multipart/form-data; boundary=XyZ"},
        b'--XyZ\r\nContent-Disposition: form-data; name="beam_size"\r\n\r\n1\r\n--XyZ--\r\n',
        400,
        "invalid_input",
    ),
    (
        "truncated multipart",
        {"Content-Type": "multipart/form-data; boundary=XyZ"},
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF',
        400,
        "invalid_input",
    ),
    (
        "unsupported Accept",
        {"Content-Type": "audio/wav", "Accept": "image/png"},
        b"RIFF",
        406,
        "not_acceptable",
    ),
    ("body over the limit", {"Content-Type": "audio/wav"}, b"\0" * (MAX_BYTES + 1), 413, "input_too_large"),
    ("text body", {"Content-Type": "text/plain"}, b"hello", 415, "unsupported_media_type"),
    (
        "form-urlencoded",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"a=1",
        415,
        "unsupported_media_type",
    ),
    (
        "unknown attribute",
        {"Content-Type": "audio/wav", "X-Amzn-SageMaker-Custom-Attributes": "colour=blue"},
        b"RIFF",
        422,
        "invalid_option",
    ),
    (
        "out-of-range attribute",
        {"Content-Type": "audio/wav", "X-Amzn-SageMaker-Custom-Attributes": "beam_size=99"},
        b"RIFF",
        422,
        "invalid_option",
    ),
    (
        "attribute not key=value",
        {"Content-Type": "audio/wav", "X-Amzn-SageMaker-Custom-Attributes": "beam_size"},
        b"RIFF",
        422,
        "invalid_option",
    ),
    (
        "unknown JSON field",
        {"Content-Type": "application/json"},
        b'{"audio": "UklGRg==", "colour": "blue"}',
        422,
        "invalid_option",
    ),
]


@pytest.mark.parametrize(
    ("headers", "content", "status", "kind"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_codes_and_bodies(server: str, headers: dict[str, str], content: bytes, status: int, kind: str) -> None:
    assert_error(post(server, content, headers=headers), status, kind)


def test_option_the_model_cannot_honour_is_422(server: str, jfk_bytes: bytes) -> None:
    headers = {"Content-Type": "audio/flac", "X-Amzn-SageMaker-Custom-Attributes": "language=ja"}
    assert "English-only" in assert_error(post(server, jfk_bytes, headers=headers), 422, "invalid_option")["message"]


def test_streamed_body_over_the_limit_is_cut_off_with_413(server: str) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield b"\0" * 100_000

    assert_error(post(server, chunks(), headers={"Content-Type": "audio/wav"}), 413, "input_too_large")


def test_unknown_route_and_method_use_the_error_shape(server: str) -> None:
    assert_error(httpx.get(f"{server}/nope"), 404, "not_found")
    assert_error(httpx.get(f"{server}/invocations"), 405, "method_not_allowed")


class BrokenEngine(Engine):
    """A real engine whose transcribe fails the way a bug or a driver fault would."""

    def __init__(self, engine: Engine, error: Exception) -> None:
        super().__init__(engine.model, name=engine.name, path=engine.path, placement=engine.placement)
        self.error = error

    def transcribe(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "kind"),
    [(ZeroDivisionError("secret detail"), "internal_error"), (EngineError("CUDA failed"), "engine_error")],
)
def test_failures_inside_inference_are_500_without_traceback(
    engine: Engine, jfk_bytes: bytes, error: Exception, kind: str
) -> None:
    app = create_app(Settings(device="cpu"), engine_factory=lambda _: BrokenEngine(engine, error))
    with server_in_thread(app) as url:
        wait_ready(url)
        response = post(url, jfk_bytes, headers={"Content-Type": "audio/flac"})
        assert_error(response, 500, kind)
        assert "secret detail" not in response.text
        assert httpx.get(f"{url}/ping").status_code == 200  # and the server keeps serving


# --- concurrency and health under load ---------------------------------------------------------------


def test_concurrent_invocations_share_one_engine(server: str) -> None:
    def invoke(clip: str) -> str:
        data = (AUDIO / clip).read_bytes()
        response = post(server, data, headers={"Content-Type": "application/octet-stream", "Accept": "text/plain"})
        assert response.status_code == 200, response.text
        return response.text

    with concurrent.futures.ThreadPoolExecutor(len(SHORT_CLIPS)) as pool:
        texts = dict(zip(SHORT_CLIPS, pool.map(invoke, SHORT_CLIPS), strict=True))
    for clip, expected in SHORT_CLIPS.items():
        assert expected in words(texts[clip]), (clip, texts[clip])


def test_ping_answers_fast_while_a_long_transcription_runs(server: str) -> None:
    data = (AUDIO / LONG_CLIP).read_bytes()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        long_job = pool.submit(post, server, data, headers=LONG_HEADERS)
        time.sleep(0.3)
        timings = []
        while not long_job.done():
            started = time.monotonic()
            assert httpx.get(f"{server}/ping", timeout=5).status_code == 200
            timings.append(time.monotonic() - started)
            time.sleep(0.1)
        response = long_job.result()
    assert response.status_code == 200 and "fairest creatures" in words(response.text)
    assert len(timings) >= 5, "the transcription ended too soon to measure /ping under load"
    assert max(timings) < 2.0, timings


def test_temporary_files_are_gone_after_every_path(server: str, spool_dir: Path, jfk_bytes: bytes) -> None:
    post(server, jfk_bytes, headers={"Content-Type": "audio/flac", **FAST})
    post(server, b"garbage" * 100, headers={"Content-Type": "audio/wav"})
    post(server, b"\0" * (MAX_BYTES + 10), headers={"Content-Type": "audio/wav"})
    post(server, iter([b"\0" * 1_000_000] * 3), headers={"Content-Type": "audio/wav"})
    httpx.post(f"{server}/invocations", files={"file": ("a.wav", b"junk")}, data={"colour": "x"})
    assert list(spool_dir.iterdir()) == []


# --- graceful shutdown (the container entry in a subprocess) ------------------------------------------


def test_sigterm_finishes_in_flight_requests_then_exits(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "KOE_HOST": "127.0.0.1",
        "KOE_MODEL": "tiny.en",
        "KOE_DEVICE": "cpu",
        "KOE_CPU_THREADS": "2",
    }
    command = python_command("-m", "koe.container", "serve")
    with server_process(command, env, port, tmp_path / "serve.log") as (url, process):
        wait_ready(url, process=process)
        data = (AUDIO / LONG_CLIP).read_bytes()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post, url, data, headers=LONG_HEADERS)
            time.sleep(1.0)
            assert not in_flight.done()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.TransportError):  # no new connections while draining
                httpx.get(f"{url}/ping", timeout=2)
            response = in_flight.result(timeout=60)
        assert response.status_code == 200
        assert "fairest creatures" in words(response.text)
        assert process.wait(30) == 0
    assert "finishing in-flight requests" in (tmp_path / "serve.log").read_text()


# --- the container entry's settings ------------------------------------------------------------------


def test_container_defaults_follow_the_sagemaker_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KOE_HOST", "KOE_PORT", "KOE_MODEL", "SAGEMAKER_BIND_TO_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = container_settings()
    assert (settings.host, settings.port, settings.model) == ("0.0.0.0", DEFAULT_PORT, "/opt/ml/model")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "9123")
    monkeypatch.setenv("KOE_MODEL", "tiny.en")
    settings = container_settings()
    assert (settings.port, settings.model) == (9123, "tiny.en")
    monkeypatch.setenv("SAGEMAKER_BIND_TO_PORT", "http")
    with pytest.raises(SystemExit):
        container_settings()


def test_container_model_folder_precedence(tmp_path: Path) -> None:
    sagemaker_dir, baked_dir = tmp_path / "opt-ml-model", tmp_path / "baked"
    assert default_model_dir(sagemaker_dir, baked_dir) == sagemaker_dir  # nothing anywhere: SageMaker's
    baked_dir.mkdir()
    for name in ("model.bin", "config.json"):
        (baked_dir / name).write_text("{}")
    assert default_model_dir(sagemaker_dir, baked_dir) == baked_dir
    sagemaker_dir.mkdir()
    for name in ("model.bin", "config.json"):
        (sagemaker_dir / name).write_text("{}")
    assert default_model_dir(sagemaker_dir, baked_dir) == sagemaker_dir


def test_container_refuses_train_and_bakes_a_model(tmp_path: Path) -> None:
    assert main(["train"]) == 2
    assert main(["bake", "tiny.en", "--to", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "model.bin").is_file()
    assert main(["bake", "no-such-model", "--to", str(tmp_path / "other")]) == 1


def test_openapi_lists_the_sagemaker_routes(server: str) -> None:
    paths = json.loads(httpx.get(f"{server}/openapi.json").text)["paths"]
    assert {"/ping", "/invocations"} <= set(paths)
