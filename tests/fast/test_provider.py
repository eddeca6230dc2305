"""The model provider: one interface, loaded at start (the container) or on demand (`koe serve`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from apps import fake_app, served
from fakes import FakeEngine

from koe.config import Settings
from koe.errors import ModelUnavailableError, NotReadyError, UnknownModelError
from koe.ondemand import OnDemandModels
from koe.provider import WHISPER_1, LoadedModel, known_models, offline_models


def test_loaded_model_is_not_ready_until_loaded_then_answers_to_its_aliases() -> None:
    engine = FakeEngine("tiny.en")
    models = LoadedModel("tiny.en", engine.as_engine)
    with pytest.raises(NotReadyError):
        models.ready()
    assert models.loaded() is None
    models.load()
    for name in (None, "tiny.en", WHISPER_1, "default"):
        assert models.get(name) is engine and models.loaded(name) is engine
    with pytest.raises(UnknownModelError, match="not served here"):
        models.get("base")
    assert models.names() == ["tiny.en", WHISPER_1]
    models.healthy()
    engine.failed = "CUDA error: an illegal memory access was encountered"
    with pytest.raises(ModelUnavailableError, match="illegal memory access"):
        models.healthy()


def test_loaded_model_keeps_the_loads_error() -> None:
    def broken() -> FakeEngine:
        raise RuntimeError("no model.bin")

    models = LoadedModel("tiny.en", broken)  # type: ignore[arg-type]
    models.load()
    with pytest.raises(ModelUnavailableError, match=r"no model\.bin"):
        models.ready()
    with pytest.raises(ModelUnavailableError):
        models.healthy()


def test_on_demand_models_load_on_first_use_and_know_every_koe_model(tmp_path: Path) -> None:
    loads: list[str] = []

    def load(name: str) -> FakeEngine:
        loads.append(name)
        return FakeEngine(name, multilingual=name != "tiny.en")

    models = OnDemandModels(load, default="tiny.en", idle_s=0, cache_dir=tmp_path)  # type: ignore[arg-type]
    assert models.loaded() is None and loads == []
    models.healthy()  # nothing loaded is no fault: it loads on demand
    assert models.get(WHISPER_1).name == "tiny.en" and models.loaded() is not None
    assert models.check("base") == "base" and models.get("base").multilingual
    assert loads == ["tiny.en", "base"]
    with pytest.raises(UnknownModelError, match="large-v9") as caught:
        models.check("large-v9")
    assert "large-v3" in caught.value.message  # it names the models it knows
    names = models.names()
    assert names[:2] == ["tiny.en", WHISPER_1] and set(names[2:]) <= set(offline_models(tmp_path))
    assert {"tiny.en", "base", "large-v3"} <= set(known_models(tmp_path))


def test_koe_serve_lists_and_loads_other_models_on_demand(tmp_path: Path, jfk: Path) -> None:
    settings = Settings(model="tiny.en", data_dir=tmp_path, jobs_enabled=True, model_idle_s=0)
    loaded: list[str] = []

    def factory(given: Settings) -> FakeEngine:
        loaded.append(given.model)
        return FakeEngine(given.model, multilingual=given.model != "tiny.en")

    async def scenario() -> tuple[list[str], dict[str, object], int, int, str]:
        async with served(fake_app(settings, factory)) as http:
            ids = [m["id"] for m in (await http.get("/v1/models")).json()["data"]]
            web = (await http.get("/v1/web/models")).json()
            upload = {"file": ("jfk.flac", jfk.read_bytes())}
            base = await http.post("/v1/audio/translations", files=upload, data={"model": "base"})
            unknown = await http.post("/v1/audio/transcriptions", files=upload, data={"model": "large-v9"})
        return ids, web, base.status_code, unknown.status_code, unknown.json()["error"]["message"]

    ids, web, base, unknown, message = asyncio.run(scenario())
    assert ids[:2] == ["tiny.en", WHISPER_1]
    assert web["default"] == "tiny.en" and WHISPER_1 not in web["models"]  # type: ignore[operator]
    assert base == 200 and loaded == ["base"]  # base loaded on demand; tiny.en was never needed
    assert unknown == 404 and "large-v9" in message
