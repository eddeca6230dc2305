"""The HTTP doors in process, on the fake engine: what each route parses, refuses and renders.

The real model behind these routes is tested end to end in tests/test_container.py, test_openai_api.py and
test_bad_input.py (a real server on loopback); here the same app runs in process without a model, so the routes'
own rules run in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from apps import fake_app, served
from fakes import FakeEngine

from koe.bodies import CUSTOM_ATTRIBUTES_HEADER as ATTRIBUTES
from koe.config import Settings
from koe.engine import Engine
from koe.errors import ModelUnavailableError


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(model="tiny.en", data_dir=tmp_path, jobs_enabled=False)


@pytest.fixture
def flac(jfk: Path) -> bytes:
    return jfk.read_bytes()  # real speech, 11.0 s: the real decoder runs on it


def spans(text: str) -> list[tuple[float, float]]:
    """(start, end) of each fake segment, read back from the text the fake engine wrote."""
    words = text.split()
    return [(float(words[i + 3]), float(words[i + 5])) for i, w in enumerate(words) if w == "part"]


def test_ping_is_503_while_the_model_loads_and_200_after(settings: Settings) -> None:
    loaded = threading.Event()

    def slow(_: Settings) -> Engine:
        loaded.wait(10)
        return FakeEngine().as_engine()

    async def scenario() -> None:
        app = fake_app(settings, slow)
        async with served(app, ready=False) as http:
            early = await http.get("/ping")
            assert early.status_code == 503 and early.json()["error"]["type"] == "not_ready"
            loaded.set()
            for _ in range(500):
                if (await http.get("/ping")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await http.get("/ping")).status_code == 200

    asyncio.run(scenario())


def test_a_model_that_cannot_load_is_503_with_its_reason(settings: Settings, flac: bytes) -> None:
    def broken(_: Settings) -> Engine:
        raise ModelUnavailableError("cannot load model 'tiny.en' from /nowhere: no model.bin")

    async def scenario() -> None:
        async with served(fake_app(settings, broken)) as http:
            ping = await http.get("/ping")
            answer = await http.post("/invocations", content=flac, headers={"content-type": "audio/flac"})
        assert ping.status_code == 503 and "no model.bin" in ping.json()["error"]["message"]
        assert answer.status_code == 503 and answer.json()["error"]["type"] == "model_unavailable"

    asyncio.run(scenario())


def test_invocations_reads_raw_multipart_and_json_bodies_alike(settings: Settings, flac: bytes) -> None:
    engine = FakeEngine()
    encoded = base64.b64encode(flac).decode()

    async def scenario() -> list[dict[str, object]]:
        async with served(fake_app(settings, lambda _: engine)) as http:
            accept = {"accept": "application/json"}
            raw = await http.post("/invocations", content=flac, headers={"content-type": "audio/flac", **accept})
            form = await http.post(
                "/invocations",
                files={"file": ("jfk.flac", flac, "audio/flac")},
                data={"beam_size": "2"},
                headers=accept,
            )
            body = await http.post("/invocations", json={"audio": encoded, "beam_size": 3}, headers=accept)
        for answer in (raw, form, body):
            assert answer.status_code == 200, answer.text
        return [raw.json(), form.json(), body.json()]

    answers = asyncio.run(scenario())
    for answer in answers:
        assert spans(str(answer["text"])) == [(0.0, 5.0), (5.0, 10.0), (10.0, 11.0)]
    assert [call.beam_size for call in engine.calls] == [5, 2, 3]  # each body's own option arrived


def test_invocations_renders_the_accepted_format_with_increasing_timestamps(settings: Settings, flac: bytes) -> None:
    async def scenario() -> str:
        async with served(fake_app(settings, lambda _: FakeEngine())) as http:
            answer = await http.post(
                "/invocations", content=flac, headers={"content-type": "audio/flac", "accept": "text/vtt"}
            )
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/vtt")
        return answer.text

    vtt = asyncio.run(scenario())
    assert vtt.startswith("WEBVTT")
    cues = [line.split(" --> ") for line in vtt.splitlines() if " --> " in line]
    starts = [cue[0] for cue in cues]
    assert len(cues) == 3 and starts == sorted(starts) and cues[-1][1].endswith("00:11.000")


def test_options_come_from_custom_attributes_and_fields_but_not_both(settings: Settings, flac: bytes) -> None:
    engine = FakeEngine()

    async def scenario() -> tuple[int, int, str]:
        async with served(fake_app(settings, lambda _: engine)) as http:
            header = {ATTRIBUTES: "beam_size=4;word_timestamps=true"}
            ok = await http.post("/invocations", content=flac, headers={"content-type": "audio/flac", **header})
            twice = await http.post(
                "/invocations", files={"file": ("a.flac", flac)}, data={"beam_size": "2"}, headers=header
            )
        return ok.status_code, twice.status_code, twice.json()["error"]["message"]

    ok, twice, message = asyncio.run(scenario())
    assert ok == 200 and engine.calls[0].beam_size == 4 and engine.calls[0].word_timestamps
    assert twice == 422 and "beam_size" in message and "both" in message
    assert len(engine.calls) == 1  # the refused request never reached the model


@pytest.mark.parametrize(
    ("headers", "body", "status", "kind"),
    [
        ({"content-type": "text/plain"}, b"hello", 415, "unsupported_media_type"),
        ({"content-type": "audio/flac", "accept": "image/png"}, None, 406, "not_acceptable"),
        (
            {"content-type": "audio/flac", ATTRIBUTES: "colour=blue"},
            None,
            422,
            "invalid_option",
        ),
        (
            {"content-type": "audio/flac", ATTRIBUTES: "language=ja"},
            None,
            422,
            "invalid_option",
        ),
        ({"content-type": "audio/flac"}, b"not audio at all" * 64, 400, "undecodable_audio"),
        ({"content-type": "audio/flac"}, b"", 400, "empty_input"),
        ({"content-type": "application/json"}, b'{"audio": "!!"}', 400, "invalid_input"),
    ],
)
def test_bad_requests_get_their_specific_error_and_never_reach_the_model(
    settings: Settings, flac: bytes, headers: dict[str, str], body: bytes | None, status: int, kind: str
) -> None:
    engine = FakeEngine()

    async def scenario() -> tuple[int, dict[str, str], int]:
        async with served(fake_app(settings, lambda _: engine)) as http:
            answer = await http.post("/invocations", content=flac if body is None else body, headers=headers)
            after = await http.get("/ping")  # and the server keeps serving
        return answer.status_code, answer.json()["error"], after.status_code

    got, error, ping = asyncio.run(scenario())
    assert (got, error["type"]) == (status, kind), error
    assert error["message"] and "Traceback" not in error["message"]
    assert ping == 200 and engine.calls == []


def test_a_body_over_the_limit_is_413(settings: Settings, flac: bytes) -> None:
    small = settings.model_copy(update={"max_input_bytes": 10_000})

    async def scenario() -> tuple[int, str]:
        async with served(fake_app(small, lambda _: FakeEngine())) as http:
            answer = await http.post("/invocations", content=flac, headers={"content-type": "audio/flac"})
        return answer.status_code, answer.json()["error"]["message"]

    status, message = asyncio.run(scenario())
    assert status == 413 and "10000" in message


def test_openai_models_name_the_served_model_and_whisper_1(settings: Settings) -> None:
    async def scenario() -> tuple[list[str], int, int, str]:
        async with served(fake_app(settings, lambda _: FakeEngine())) as http:
            listed = (await http.get("/v1/models")).json()
            one = await http.get("/v1/models/whisper-1")
            other = await http.get("/v1/models/large-v3")
        return [m["id"] for m in listed["data"]], one.status_code, other.status_code, other.text

    ids, one, other, body = asyncio.run(scenario())
    assert ids == ["tiny.en", "whisper-1"]
    assert one == 200 and other == 404 and "model_not_found" in body


def test_openai_transcriptions_verbose_json_and_refusals(settings: Settings, flac: bytes) -> None:
    engine = FakeEngine()
    upload = {"file": ("jfk.flac", flac, "audio/flac")}

    async def scenario() -> tuple[dict[str, Any], int, str, int]:
        async with served(fake_app(settings, lambda _: engine)) as http:
            verbose = await http.post(
                "/v1/audio/transcriptions",
                files=upload,
                data={
                    "model": "whisper-1",
                    "response_format": "verbose_json",
                    "timestamp_granularities[]": ["word", "segment"],
                },
            )
            unknown = await http.post("/v1/audio/transcriptions", files=upload, data={"model": "large-v3"})
            translate = await http.post("/v1/audio/translations", files=upload, data={"model": "whisper-1"})
        assert verbose.status_code == 200, verbose.text
        return verbose.json(), unknown.status_code, unknown.text, translate.status_code

    verbose, unknown, unknown_body, translate = asyncio.run(scenario())
    assert verbose["duration"] == pytest.approx(11.0, abs=0.05)
    assert [s["start"] for s in verbose["segments"]] == [0.0, 5.0, 10.0]
    starts = [w["start"] for w in verbose["words"]]
    assert len(starts) == 18 and starts == sorted(starts)  # "part N from S to E": 6 words, 3 segments
    assert engine.calls[0].word_timestamps  # granularity word asked the model for word timestamps
    assert unknown == 404 and "large-v3" in json.loads(unknown_body)["error"]["message"]
    assert translate == 422 and len(engine.calls) == 1  # tiny.en cannot translate: refused before any work


def test_the_jobs_route_queues_an_upload_and_serves_its_result(tmp_path: Path, flac: bytes) -> None:
    local = Settings(model="tiny.en", data_dir=tmp_path, jobs_enabled=True, model_idle_s=0)

    async def scenario() -> tuple[dict[str, Any], str, int]:
        async with served(fake_app(local, lambda _: FakeEngine()), ready=False) as http:
            queued = await http.post("/v1/jobs", files={"file": ("jfk.flac", flac)}, data={"id": "upload-1"})
            assert queued.status_code == 202, queued.text
            for _ in range(1000):
                job = (await http.get("/v1/jobs/upload-1")).json()
                if job["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.01)
            text = await http.get("/v1/jobs/upload-1/result", params={"format": "text"})
            missing = await http.get("/v1/jobs/no-such-job")
        return job, text.text, missing.status_code

    job, text, missing = asyncio.run(scenario())
    assert job["status"] == "completed", job
    assert spans(text) == [(0.0, 5.0), (5.0, 10.0), (10.0, 11.0)]
    assert missing == 404
