"""`koe.Client` against a real uvicorn server on loopback running the app on the fake engine."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from apps import fake_app
from fakes import FakeEngine

import koe
from koe.client import FINISHED, ApiError, UnreachableError
from koe.config import Settings
from support.serving import free_port, server_in_thread


def test_client_submits_follows_and_fetches_a_job(tmp_path: Path, jfk: Path) -> None:
    settings = Settings(model="tiny.en", data_dir=tmp_path, jobs_enabled=True, model_idle_s=0)
    app = fake_app(settings, lambda given: FakeEngine(given.model))
    with server_in_thread(app) as url, koe.Client(url) as client:
        view = client.submit(jfk, format="srt", id="client-1", language=None)
        assert view["id"] == "client-1" and view["status"] in ("queued", "running", "completed")
        deadline = time.monotonic() + 20
        while (job := client.job("client-1"))["status"] not in FINISHED:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
        assert job["status"] == "completed"
        srt = client.result("client-1")
        assert srt.startswith("1\n00:00:00,000 --> 00:00:05,000\npart 1 from 0.0 to 5.0\n")
        assert "from 10.0 to 11.0" in client.result("client-1", "text")
        assert [j["id"] for j in client.jobs(status="completed")] == ["client-1"]
        with pytest.raises(ApiError) as missing:
            client.job("no-such-job")
    assert missing.value.status == 404 and "no-such-job" in str(missing.value)


def test_client_says_when_the_server_cannot_be_reached() -> None:
    with koe.Client(f"http://127.0.0.1:{free_port()}") as client, pytest.raises(UnreachableError, match="cannot reach"):
        client.jobs()
