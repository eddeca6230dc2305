"""API keys on `koe serve`: every route of the OpenAPI schema, with no key, a wrong key and a right key.

The app is the `koe serve` app (local endpoint on) with two keys, under a real uvicorn server on 127.0.0.1.
Requests carry empty bodies: with the right key they fail on the body (4xx), never on the key (401).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
from fastapi import FastAPI
from starlette.datastructures import Headers

from koe.api import create_app
from koe.api.auth import key_matches, presented_key
from koe.config import Settings
from koe.container import container_settings
from koe.engine import Engine
from support.serving import server_in_thread, wait_ready

KEYS = ("first-key-0123456789", "second-key-abcdefghij")
OPEN = {("GET", "/ping")}


@pytest.fixture(scope="module")
def app(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = Settings(
        model="tiny.en",
        data_dir=tmp_path_factory.mktemp("auth"),
        jobs_enabled=True,
        api_keys=list(KEYS),  # type: ignore[arg-type]
    )
    return create_app(settings, engine_factory=lambda _: engine)


@pytest.fixture(scope="module")
def url(app: FastAPI) -> Iterator[str]:
    with server_in_thread(app) as base:
        wait_ready(base)
        yield base


def schema_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) for every operation in the app's OpenAPI schema, path parameters filled in."""
    routes = []
    for path, operations in app.openapi()["paths"].items():
        for method in operations:
            routes.append((method.upper(), re.sub(r"\{[^}]+\}", "x", path)))
    return sorted(routes)


def test_the_schema_has_every_api(app: FastAPI) -> None:
    paths = {path for _, path in schema_routes(app)}
    expected = {
        "/ping",
        "/invocations",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
        "/v1/models",
        "/v1/models/x",
        "/endpoints/x/invocations",
        "/endpoints/x/async-invocations",
        "/v1/jobs",
    }
    assert expected <= paths


@pytest.mark.parametrize(
    ("who", "headers"),
    [
        ("no key", {}),
        ("wrong key", {"Authorization": "Bearer not-a-key"}),
        ("wrong scheme", {"Authorization": f"Basic {KEYS[0]}"}),
        ("right key", {"Authorization": f"Bearer {KEYS[0]}"}),
        ("right key as X-Api-Key", {"X-Api-Key": KEYS[1]}),
    ],
)
def test_every_route(app: FastAPI, url: str, who: str, headers: dict[str, str]) -> None:
    authorized = who.startswith("right")
    seen = {}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for method, path in schema_routes(app):
            response = client.request(method, path)
            seen[f"{method} {path}"] = response.status_code
            if (method, path) in OPEN or authorized:
                assert response.status_code not in (401, 500), f"{method} {path}: {response.text}"
            else:
                assert response.status_code == 401, f"{method} {path} answered {response.status_code}"
                assert response.headers["www-authenticate"].startswith("Bearer")
                check_401_shape(path, response, missing=who == "no key" or who == "wrong scheme")
    assert len(seen) >= 10


def check_401_shape(path: str, response: httpx.Response, *, missing: bool) -> None:
    """Each API's own error shape: OpenAI's, botocore's, or koe's."""
    if path.startswith(("/v1/audio/", "/v1/models")):
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == ("missing_api_key" if missing else "invalid_api_key")
    elif path.startswith("/endpoints/"):
        expected = "MissingAuthenticationTokenException" if missing else "UnrecognizedClientException"
        assert response.headers["x-amzn-errortype"] == expected
        assert "API key" in response.json()["message"]
    else:
        assert response.json()["error"]["type"] == "unauthorized"


def test_routes_outside_the_schema(url: str) -> None:
    assert httpx.get(f"{url}/openapi.json").status_code == 401
    assert httpx.get(f"{url}/docs").status_code == 401
    assert httpx.get(f"{url}/openapi.json", headers={"X-Api-Key": KEYS[0]}).status_code == 200
    assert httpx.get(f"{url}/").status_code == 200  # the web page's shell holds no data; its API calls need a key
    assert httpx.post(f"{url}/", content=b"x").status_code in (401, 405)


def test_openai_client(url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert caught.value.code == "invalid_api_key"
    assert "not valid" in caught.value.message
    models = openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[1], max_retries=0).models.list()
    assert "whisper-1" in [m.id for m in models]


def test_boto3_client_with_the_key_in_an_event_hook(url: str) -> None:
    """boto3 signs with SigV4 (its own Authorization header), so the key goes in X-Api-Key."""
    client = boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="unused",
        aws_secret_access_key="unused",
    )
    with pytest.raises(client.exceptions.ClientError) as caught:
        client.invoke_endpoint(EndpointName="koe", Body=b"not audio", ContentType="audio/wav")
    assert caught.value.response["Error"]["Code"] == "MissingAuthenticationTokenException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401

    def add_key(request: Any, **_: Any) -> None:
        request.headers["X-Api-Key"] = KEYS[0]

    client.meta.events.register("before-sign.sagemaker-runtime.*", add_key)
    with pytest.raises(client.exceptions.ModelError):  # through the key check, refused by the model
        client.invoke_endpoint(EndpointName="koe", Body=b"not audio", ContentType="audio/wav")


def test_key_checks() -> None:
    keys = [k.encode() for k in KEYS]
    assert key_matches(KEYS[1], keys)
    assert not key_matches(KEYS[1][:-1], keys)
    assert not key_matches("ключ", keys)  # non-ASCII keys compare as bytes, without errors
    assert presented_key(Headers({"authorization": "Bearer  abc "})) == "abc"
    assert presented_key(Headers({"authorization": "AWS4-HMAC-SHA256 Credential=x", "x-api-key": "k"})) == "k"
    assert presented_key(Headers({"authorization": "Basic abc"})) is None


def test_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """KOE_API_KEYS is comma-separated for `koe serve`; the SageMaker container ignores it (IAM guards it)."""
    monkeypatch.setenv("KOE_API_KEYS", " a-key, another-key ,")
    assert [k.get_secret_value() for k in Settings().api_keys] == ["a-key", "another-key"]
    assert "a-key" not in repr(Settings())
    assert container_settings({}).api_keys == []
