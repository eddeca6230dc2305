"""OpenAI's audio API on koe, through the real `openai` client against a real uvicorn server on loopback.

The server is the `koe serve` app (local endpoint on, models loaded on demand) with the session's tiny.en
engine; the multilingual `base` loads on demand for the translation test, as on `koe serve`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import srt
import webvtt

from conftest import AUDIO_DIR
from koe.api import create_app
from koe.api.openai import parse_fields, temperature_ladder
from koe.config import Settings
from koe.engine import Engine
from koe.errors import OptionsError
from koe.options import DEFAULT_TEMPERATURES
from support.serving import JFK_WORDS, server_in_thread, wait_ready, words

TWO_SEGMENTS = AUDIO_DIR / "en" / "reazonspeech_test_en_1.wav"  # 12 s; tiny.en makes two segments of it


def make_settings(tmp: Path, **changes: object) -> Settings:
    return Settings(model="tiny.en", data_dir=tmp, jobs_enabled=True, model_idle_s=0, **changes)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(engine: Engine, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    def load(settings: Settings) -> Engine:
        if settings.model == "tiny.en":
            return engine
        return Engine.load(settings.model, cache_dir=cache_dir, device="cpu", cpu_threads=2)

    app = create_app(make_settings(tmp_path_factory.mktemp("openai")), engine_factory=load)
    with server_in_thread(app) as url:
        wait_ready(url)
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[:2] == ["tiny.en", "whisper-1"]
    assert "base" in ids  # bundled: loadable on demand without a network
    assert client.models.retrieve("whisper-1").owned_by == "koe"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
def test_text_formats(client: openai.OpenAI, jfk: Path, fmt: str) -> None:
    with jfk.open("rb") as fh:
        result = client.audio.transcriptions.create(file=fh, model="whisper-1", response_format=fmt)  # type: ignore[call-overload]
    text = result if isinstance(result, str) else result.text
    assert JFK_WORDS in words(text)
    if fmt == "verbose_json":
        assert result.language == "english"
        assert result.duration == pytest.approx(11.0, abs=0.1)
        assert result.segments and result.segments[0].text.strip()
        assert result.words is None  # only with timestamp_granularities=["word"]


def _check_cues(cues: list[tuple[float, float, str]]) -> None:
    assert len(cues) >= 2
    previous_end = 0.0
    for start, end, _ in cues:
        assert previous_end <= start < end
        previous_end = end
    assert "transformer" in words(" ".join(text for *_, text in cues))


def test_srt(client: openai.OpenAI) -> None:
    with TWO_SEGMENTS.open("rb") as fh:
        body = client.audio.transcriptions.create(file=fh, model="tiny.en", response_format="srt")
    subs = list(srt.parse(body))
    _check_cues([(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs])


def test_vtt(client: openai.OpenAI) -> None:
    with TWO_SEGMENTS.open("rb") as fh:
        body = client.audio.transcriptions.create(file=fh, model="tiny.en", response_format="vtt")
    captions = webvtt.from_string(body)
    ms = [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds(), c.text) for c in captions]
    _check_cues([(start / 1000, end / 1000, text) for start, end, text in ms])


def test_word_timestamps(client: openai.OpenAI, jfk: Path) -> None:
    with jfk.open("rb") as fh:
        result = client.audio.transcriptions.create(
            file=fh,
            model="whisper-1",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.words and result.segments
    assert JFK_WORDS in words(" ".join(w.word for w in result.words))
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert all(w.start <= w.end for w in result.words)
    assert result.words[-1].end <= result.duration


def test_stream(client: openai.OpenAI, jfk: Path) -> None:
    with jfk.open("rb") as fh:
        events = list(client.audio.transcriptions.create(file=fh, model="whisper-1", stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert deltas and events[-1].type == "transcript.text.done"
    assert events[-1].text == "".join(d.delta for d in deltas).strip()
    assert JFK_WORDS in words(events[-1].text)


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # openai marks translations deprecated
def test_translation(client: openai.OpenAI, jfk: Path) -> None:
    """The default model (tiny.en) cannot translate: a clear 422; the multilingual `base` can."""
    with jfk.open("rb") as fh, pytest.raises(openai.UnprocessableEntityError) as caught:
        client.audio.translations.create(file=fh, model="whisper-1")
    assert "English-only" in caught.value.message
    assert caught.value.param == "model"
    with jfk.open("rb") as fh:
        result = client.audio.translations.create(file=fh, model="base", response_format="json")
    assert "country" in words(result.text)


def test_errors_raise_the_matching_openai_exception(client: openai.OpenAI, jfk: Path) -> None:
    with jfk.open("rb") as fh, pytest.raises(openai.NotFoundError) as not_found:
        client.audio.transcriptions.create(file=fh, model="whisper-9")
    assert not_found.value.code == "model_not_found"
    assert not_found.value.param == "model"
    assert "'whisper-9'" in not_found.value.message
    with pytest.raises(openai.UnprocessableEntityError) as bad_format:
        client.audio.transcriptions.create(file=io.BytesIO(b"x"), model="whisper-1", response_format="xml")  # type: ignore[arg-type]
    assert bad_format.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as undecodable:
        client.audio.transcriptions.create(file=("noise.wav", b"not audio at all"), model="whisper-1")
    assert undecodable.value.param == "file"
    with pytest.raises(openai.UnprocessableEntityError) as granularity:
        client.audio.transcriptions.create(
            file=io.BytesIO(b"x"), model="whisper-1", response_format="json", timestamp_granularities=["word"]
        )
    assert "verbose_json" in granularity.value.message


def test_error_body_is_openai_shaped(server: str) -> None:
    no_file = httpx.post(f"{server}/v1/audio/transcriptions", files={"model": (None, "whisper-1")})
    assert no_file.status_code == 400
    error = no_file.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "file" in error["message"]
    not_multipart = httpx.post(f"{server}/v1/audio/translations", content=b"raw", headers={"content-type": "audio/wav"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["error"]["message"]


def test_upload_over_the_sync_limit_is_413_pointing_to_async(engine: Engine, jfk: Path, tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path, max_sync_bytes=50_000), engine_factory=lambda _: engine)
    with server_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with jfk.open("rb") as fh, pytest.raises(openai.APIStatusError) as caught:
            client.audio.transcriptions.create(file=fh, model="whisper-1")
    assert caught.value.status_code == 413
    assert "async-invocations" in caught.value.message
    assert caught.value.param == "file"


# Field mapping, without a server.


def test_temperature_ladder() -> None:
    assert temperature_ladder("0") == DEFAULT_TEMPERATURES
    assert temperature_ladder("0.5") == (0.5, 0.7, 0.9)
    assert temperature_ladder("1") == (1.0,)
    with pytest.raises(OptionsError, match="temperature"):
        temperature_ladder("hot")


def test_fields_map_to_koe_options() -> None:
    asked = parse_fields(
        {
            "model": "whisper-1",
            "language": "en",
            "prompt": "Kennedy",
            "response_format": "verbose_json",
            "timestamp_granularities[]": "word,segment",
            "temperature": "0.2",
            "beam_size": "2",
            "chunking_strategy": "auto",
        },
        "transcribe",
    )
    assert asked.options.initial_prompt == "Kennedy"
    assert asked.options.word_timestamps and asked.options.beam_size == 2
    assert asked.options.temperature[0] == 0.2
    assert asked.granularities == {"word", "segment"}
    assert parse_fields({}, "translate").options.task == "translate"
    for bad in ({"stream": "maybe"}, {"include[]": "logprobs"}, {"task": "translate"}, {"no_such": "1"}):
        with pytest.raises(OptionsError):
            parse_fields(bad, "transcribe")
