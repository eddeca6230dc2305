"""Security: API keys on every route (beyond tests/test_auth.py's walk of the OpenAPI schema: every mounted route,
and paths that try to slip past the check), file:// and s3:// locations confined to the configured roots and
buckets, no tracebacks or secrets in responses or in the server's log, property tests (hypothesis) for job ids,
locations, custom attributes and multipart bodies, and schemathesis against the app's OpenAPI schema: no 5xx.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from conftest import AUDIO_DIR
from koe.api import create_app
from koe.api.app import DEFAULT_ROUTERS
from koe.api.runtime import RuntimeApiError, parse_async_headers
from koe.api.state import app_state
from koe.bodies import MultipartReader
from koe.config import Settings
from koe.engine import Engine
from koe.errors import KoeError, LocationError
from koe.jobs.job import valid_job_id
from koe.options import format_custom_attributes, parse_custom_attributes, parse_options
from koe.storage import FileStore, Location, ObjectStore, S3Store, object_name, parse_location
from support.jobs_support import KOE as KOE_CLI
from support.jobs_support import boto_client, koe_env, moto_server, start_server, wait_for
from support.reliability import FaultProxy
from support.serving import server_in_thread, wait_ready

KEY = "koe-test-key-7f3a9c1e5b"
AWS_SECRET = "aws-secret-Zq8Xv2Lm4Np6Rt0Ys9Ku"
CLIP = AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav"


# -- API keys: every mounted route, and attempts to get around the check --------------------------------------


@pytest.fixture(scope="module")
def keyed_app(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = Settings(
        model="tiny.en",
        data_dir=tmp_path_factory.mktemp("security"),
        jobs_enabled=True,
        api_keys=[KEY],  # type: ignore[list-item]
    )
    return create_app(settings, engine_factory=lambda _: engine)


@pytest.fixture(scope="module")
def keyed_url(keyed_app: FastAPI) -> Iterator[str]:
    with server_in_thread(keyed_app) as base:
        wait_ready(base)
        yield base


OPEN_ROUTES = {("GET", "/ping"), ("HEAD", "/ping"), ("GET", "/"), ("HEAD", "/")}
PAGE_PREFIX = "/static/"


def mounted_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, in the schema or not: the app's own (OpenAPI, docs) and
    every route of every router it includes (the web page's helpers too)."""
    routes = [r for r in app.routes if isinstance(r, Route)]
    routes += [r for router in DEFAULT_ROUTERS for r in router.routes if isinstance(r, Route)]
    found = set()
    for route in routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in route.methods or {"GET"}:
            found.add((method, path))
    return sorted(found)


def test_every_mounted_route_needs_the_key(keyed_app: FastAPI, keyed_url: str) -> None:
    routes = mounted_routes(keyed_app)
    assert len(routes) > 15
    in_schema = set(keyed_app.openapi()["paths"])
    assert any(re.sub(r"x", "", p) not in in_schema for _, p in routes), "expected routes outside the schema too"
    with httpx.Client(base_url=keyed_url, timeout=60) as client:
        for method, path in routes:
            response = client.request(method, path)
            if (method, path) in OPEN_ROUTES or (path.startswith(PAGE_PREFIX) and method in ("GET", "HEAD")):
                assert response.status_code != 401, f"{method} {path}"
            else:
                assert response.status_code == 401, f"{method} {path} answered {response.status_code} without a key"
            keyed = client.request(method, path, headers={"Authorization": f"Bearer {KEY}"})
            assert keyed.status_code not in (401, 500), f"{method} {path}: {keyed.text[:200]}"


@pytest.mark.parametrize(
    "path",
    [
        "/ping/../v1/jobs",
        "/ping%2F..%2Fv1%2Fjobs",
        "//v1/jobs",
        "/v1//jobs",
        "/V1/JOBS",
        "/ping/",
        "/static/../v1/jobs",
        "/static/%2e%2e/v1/jobs",
        "/v1/jobs%00",
        "/v1/jobs?x=/ping",
        "/openapi.json",
        "/docs",
        "/redoc",
    ],
)
def test_paths_that_try_to_slip_past_the_key(keyed_url: str, path: str) -> None:
    """Raw request targets (not normalized by the client): each is refused (401) or is not a route (404/405)."""
    with httpx.Client(timeout=30) as client:
        request = client.build_request("GET", keyed_url)
        request.url = request.url.copy_with(raw_path=path.encode())
        response = client.send(request)
    assert response.status_code in (401, 404, 405), f"{path}: {response.status_code} {response.text[:200]}"
    if response.status_code != 401:
        assert "jobs" not in response.text or "error" in response.text


def test_keys_in_unusual_places_do_not_count(keyed_url: str) -> None:
    for params, headers in (
        ({"api_key": KEY}, {}),
        ({}, {"Authorization": KEY}),
        ({}, {"Authorization": f"Token {KEY}"}),
        ({}, {"Cookie": f"api_key={KEY}"}),
        ({}, {"X-Api-Key": KEY[:-1]}),
        ({}, {"X-Api-Key": KEY + " extra"}),
        ({}, {"Authorization": f"Bearer {KEY.upper()}"}),
    ):
        response = httpx.get(f"{keyed_url}/v1/jobs", params=params, headers=headers, timeout=30)
        assert response.status_code == 401, (params, headers)


# -- locations: file:// inside the roots, s3:// inside the allowed buckets ------------------------------------


PIECES = st.sampled_from(
    [
        "..",
        ".",
        "%2e%2e",
        "%2E.",
        "",
        "a",
        "data",
        "inputs",
        "x.wav",
        "\x00",
        "%00",
        "~",
        "\\..",
        "..\\",
        "%2f",
        "ジョブ",
        "é",
        " ",
        "//",
        "etc",
        "passwd",
        "%252e%252e",
    ]
)


@st.composite
def locations(draw: st.DrawFn, root: str) -> str:
    scheme = draw(st.sampled_from(["file://", "file://localhost", "file://evil", "s3://", "s3://koe/", "s3://other/",
                                   "http://", "FILE://", ""]))  # fmt: skip
    base = draw(st.sampled_from([root, "/", "/etc", root + "/..", ""]))
    parts = draw(st.lists(PIECES, max_size=6))
    return scheme + base + "/" + "/".join(parts)


@given(data=st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_locations_are_confined(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Any string as a location: refused with LocationError, or a file:// path that resolves inside the root, or an
    s3:// location in the allowed bucket. Nothing else is ever returned or raised."""
    root = Path(os.path.realpath(tmp_path_factory.getbasetemp() / "confined"))
    root.mkdir(exist_ok=True)
    store = ObjectStore(FileStore([root]), S3Store(lambda: None, buckets=["koe"]))
    url = data.draw(st.one_of(locations(str(root)), st.text(max_size=80)))
    try:
        checked = store.check(url)
    except LocationError:
        return
    location = parse_location(checked)
    if location.scheme == "file":
        real = Path(os.path.realpath(location.key))
        assert real == root or real.is_relative_to(root), (url, checked)
    else:
        assert location.scheme == "s3" and location.bucket == "koe", (url, checked)
        assert ".." not in location.key.split("/")


@given(st.text(max_size=80))
@settings(max_examples=500, deadline=None)
def test_job_ids_become_one_object_name(job_id: str) -> None:
    """A job id is 1..64 printable ASCII characters; the object named after it is one path segment inside its
    folder, whatever the id holds (`../`, `/`, `\\`, `%`)."""
    expected = 1 <= len(job_id) <= 64 and all(32 <= ord(c) <= 126 for c in job_id) and job_id[0] != " "
    try:
        valid_job_id(job_id)
    except ValueError:
        assert not expected, job_id
        return
    assert expected, job_id
    for suffix in (".out", "-error.out"):
        name = object_name(job_id, suffix)
        assert "/" not in name and "\\" not in name and name not in (".", "..")
        joined = Location("file", "", "/data/outputs").join(name)
        assert Path(joined.key).parent == Path("/data/outputs")
        assert Location("s3", "koe", "out").join(name).key == f"out/{name}"


@given(
    st.dictionaries(
        st.sampled_from(["language", "task", "beam_size", "temperature", "vad", "word_timestamps", "mode"]),
        st.sampled_from(
            [
                "en",
                "ja",
                "auto",
                "transcribe",
                "translate",
                "1",
                "5",
                "16",
                "0",
                "0|0.2",
                "0.4",
                "true",
                "false",
                "auto",
                "batched",
                "sequential",
            ]
        ),
        max_size=5,
    )
)
@settings(max_examples=300, deadline=None)
def test_custom_attributes_round_trip(values: dict[str, str]) -> None:
    """Options that parse survive format -> parse -> format unchanged (what `koe invoke` sends is what the server
    reads)."""
    try:
        options = parse_options(values)
    except KoeError:
        return
    header = format_custom_attributes(options.model_dump(exclude_defaults=True))
    assert len(header) <= 1024
    assert parse_options(parse_custom_attributes(header)) == options


HEADER_VALUES = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.text(max_size=20),
    st.sampled_from(
        [
            "-1",
            "0",
            "59",
            "60",
            "21600",
            "21601",
            "1e3",
            " 7 ",
            "3600",
            "3601",
            "../x",
            "s3://b/k",
            "file:///etc/passwd",
            "x" * 1100,
        ]
    ),
)
ASYNC_HEADERS = [
    "x-amzn-sagemaker-inputlocation", "x-amzn-sagemaker-content-type", "x-amzn-sagemaker-accept",
    "x-amzn-sagemaker-custom-attributes", "x-amzn-sagemaker-inference-id", "x-amzn-sagemaker-requestttlseconds",
    "x-amzn-sagemaker-invocationtimeoutseconds", "x-amzn-sagemaker-s3outputpathextension", "x-amzn-sagemaker-filename",
]  # fmt: skip


@given(st.dictionaries(st.sampled_from(ASYNC_HEADERS), HEADER_VALUES, max_size=6))
@settings(max_examples=400, deadline=None)
def test_async_invocation_headers_either_parse_or_are_refused(headers: dict[str, str]) -> None:
    """InvokeEndpointAsync's headers, any values: an AWS ValidationError or a koe error, never anything else; what
    parses is within SageMaker's limits."""
    try:
        invocation = parse_async_headers(headers, Settings())
    except (RuntimeApiError, KoeError):
        return
    assert 60 <= invocation.ttl_s <= 21600 and 1 <= invocation.timeout_s <= 3600
    assert 1 <= len(invocation.inference_id) <= 64


@given(st.binary(max_size=400), st.sampled_from(["koe", "x", "--", "a" * 70]))
@settings(max_examples=300, deadline=None)
def test_multipart_bodies_either_parse_or_are_refused(body: bytes, boundary: str) -> None:
    """Any bytes as a multipart body, bare, after a file part's head, and as a whole well-formed file part: refused
    with an InputError or OptionsError carrying a message, or parsed into exactly one file whose bytes all reached
    the sink. A well-formed part whose content does not hold the boundary always parses, to exactly its content."""
    import io

    from koe.errors import InputError, OptionsError

    prefix = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'.encode()
    well_formed = prefix + body + f"\r\n--{boundary}--\r\n".encode()
    for data in (body, prefix + body, well_formed):
        sink = io.BytesIO()
        try:
            reader = MultipartReader(f"multipart/form-data; boundary={boundary}", lambda sink=sink: sink)
            reader.write(data)
            reader.finish()
        except KoeError as exc:
            assert isinstance(exc, InputError | OptionsError), type(exc)
            assert exc.message
            assert data is not well_formed or f"--{boundary}".encode() in body, (body, exc.message)
            continue
        assert reader.file_bytes == len(sink.getvalue())
        assert all(isinstance(value, str) for value in reader.fields.values())
        if data is well_formed and f"--{boundary}".encode() not in body:
            assert sink.getvalue() == body and reader.filename == "a" and reader.fields == {}


# -- no tracebacks or secrets in responses or logs ----------------------------------------------------------


def test_no_tracebacks_or_secrets_in_responses_or_logs(tmp_path: Path) -> None:
    """A `koe serve` with an API key and S3 credentials, sent a battery of bad and failing requests (wrong keys,
    bad media, S3 errors): neither its answers nor its log (stdout and stderr) hold a traceback, the API key,
    the AWS secret key, or the wrong keys clients sent."""
    wrong_key = "wrong-key-Hh3Jk5Lp7"

    def rule(method: str, path: str, seen: int) -> tuple[str, Any]:
        return ("status", (500, "InternalError")) if "/broken/" in path else ("pass", None)

    with moto_server() as moto, FaultProxy(moto, rule) as proxy:
        s3 = boto_client("s3", moto)
        s3.create_bucket(Bucket="koe")
        s3.upload_file(str(CLIP), "koe", "in/clip.wav")
        env = koe_env(
            tmp_path / "data", api_keys=KEY, s3_endpoint_url=proxy.url, s3_region="us-east-1",
            s3_access_key_id="AKIAKOETESTKEY", s3_secret_access_key=AWS_SECRET, s3_buckets=["koe"],
            output_path="s3://koe/out", failure_path="s3://koe/fail", storage_attempts=2,
        )  # fmt: skip
        server = start_server(env, tmp_path / "serve.log")
        auth = {"Authorization": f"Bearer {KEY}"}
        answers: list[httpx.Response] = []
        try:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                for headers in ({}, {"Authorization": f"Bearer {wrong_key}"}, {"X-Api-Key": wrong_key}):
                    for path in ("/v1/jobs", "/metrics", "/v1/models", "/endpoints/koe/invocations"):
                        answers.append(http.get(path, headers=headers))
                bad = {"content": os.urandom(4096), "headers": {**auth, "Content-Type": "audio/wav"}}
                answers.append(http.post("/invocations", **bad))  # type: ignore[arg-type]
                answers.append(http.post("/endpoints/koe/invocations", **bad))  # type: ignore[arg-type]
                answers.append(http.post("/v1/audio/transcriptions", headers=auth, files={"file": ("a", b"\0" * 99)}))
                answers.append(http.post("/v1/jobs", headers=auth, json={"input_location": "s3://other/in/clip.wav"}))
                answers.append(http.post("/v1/jobs", headers=auth, json={"input_location": "file:///etc/shadow"}))
                for job, location in (("ok", "s3://koe/in/clip.wav"), ("broken", "s3://koe/broken/clip.wav"),
                                      ("missing", "s3://koe/in/none.wav")):  # fmt: skip
                    body = {"input_location": location, "id": job, "format": "text"}
                    answers.append(http.post("/v1/jobs", headers=auth, json=body))
                for job in ("ok", "broken", "missing"):
                    answers.append(http.get(f"/v1/jobs/{job}", headers=auth))
                http.headers.update(auth)

                def finished(job: str) -> dict[str, Any] | None:
                    view: dict[str, Any] = http.get(f"/v1/jobs/{job}").json()
                    return view if view["status"] not in ("queued", "running") else None

                views = {job: wait_for(partial(finished, job), 120, 0.2) for job in ("ok", "broken", "missing")}
                answers.append(http.get("/metrics"))
                answers.append(http.get("/v1/jobs"))
        finally:
            server.stop()
        failure = s3.get_object(Bucket="koe", Key="fail/broken-error.out")["Body"].read().decode()
        assert not proxy.requests(contains="/other"), "a bucket outside KOE_S3_BUCKETS was reached"
    assert views["ok"]["status"] == "completed"
    assert views["broken"]["status"] == "failed" and views["missing"]["status"] == "failed"
    assert [r.status_code for r in answers[:12]] == [401] * 12
    texts = [r.text + json.dumps(dict(r.headers)) for r in answers] + [failure, json.dumps(views)]
    log = server.text()
    for secret in (KEY, AWS_SECRET, wrong_key):
        for text in [*texts, log]:
            assert secret not in text
    for text in [*texts, log]:
        assert "Traceback" not in text and 'File "/' not in text
    assert not any(r.status_code >= 500 and r.status_code != 502 for r in answers), [r.status_code for r in answers]


# -- schemathesis: the whole OpenAPI schema, no 5xx -----------------------------------------------------------


@pytest.fixture(scope="module")
def open_app(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = Settings(model="tiny.en", data_dir=tmp_path_factory.mktemp("schemathesis"), jobs_enabled=True)
    return create_app(settings, engine_factory=lambda _: engine)


@pytest.fixture(scope="module")
def api_url(open_app: FastAPI) -> Iterator[str]:
    with server_in_thread(open_app) as base:
        wait_ready(base)
        yield base


def test_schemathesis_no_server_errors(api_url: str) -> None:
    """Every operation of the OpenAPI schema, with schemathesis' generated requests (a bounded number each):
    no answer is a 5xx. (schemathesis' pytest plugin needs pytest < 9, so its strategies are driven directly.)"""
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    failures: list[str] = []
    calls = [0]
    bodies: dict[str, set[str]] = {}
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 14
    for operation in operations:
        for media_type in [None, *_declared_media_types(operation)]:

            @given(case=operation.as_strategy(media_type=media_type) if media_type else operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def call(case: Any) -> None:
                response = case.call(timeout=60)
                calls[0] += 1
                if case.body is not None and not isinstance(case.body, type(None)):
                    bodies.setdefault(f"{case.method} {case.operation.path}", set()).add(str(case.media_type))
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} ({case.media_type}): {response.status_code} "
                        f"{response.text[:300]}"
                    )

            call()
    assert not failures, "\n".join(failures[:20])
    assert calls[0] >= len(operations) * 3
    # The routes that read their body themselves are declared, so the fuzzer sends them every kind of body.
    every = {"multipart/form-data", "application/json", "application/octet-stream"}
    for route, kinds in {
        "POST /v1/jobs": every,
        "POST /invocations": every,
        "POST /endpoints/{endpoint_name}/invocations": every,
        "POST /v1/audio/transcriptions": {"multipart/form-data"},
    }.items():
        assert kinds <= bodies.get(route, set()), (route, bodies.get(route))


def _declared_media_types(operation: Any) -> list[str]:
    """The request body media types an operation declares (each is fuzzed on its own)."""
    body = operation.definition.raw.get("requestBody") or {}
    return list(body.get("content", {}))


EXAMPLES = int(os.environ.get("KOE_SCHEMATHESIS_EXAMPLES", "25"))


# -- the security review's holes (issue 14): each test failed before its fix ------------------------------------


def test_a_rebound_host_name_is_refused(api_url: str) -> None:
    """DNS rebinding: `attacker.example` rebound to 127.0.0.1 reaches the server with its own name in Host; the
    server answers only loopback names (and its configured ones), so the page reads nothing."""
    port = httpx.URL(api_url).port
    with httpx.Client(base_url=api_url, timeout=30) as http:
        for host in (f"attacker.example:{port}", "attacker.example", "127.0.0.1.attacker.example", "[::2]:1", "x:y"):
            response = http.get("/v1/jobs", headers={"Host": host})
            assert response.status_code == 403, (host, response.status_code, response.text[:200])
            assert response.json()["error"]["type"] == "forbidden"
            assert "jobs" not in response.json(), host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2", f"koe.localhost:{port}"):
            response = http.get("/v1/jobs", headers={"Host": host})
            assert response.status_code == 200, (host, response.text[:200])
            assert "jobs" in response.json()


def test_another_sites_page_cannot_submit_a_job(api_url: str) -> None:
    """A page on another site may POST a multipart form to 127.0.0.1 (no CORS preflight for that): the browser marks
    it with Origin and Sec-Fetch-Site, and the server refuses it before reading the upload; no job is queued."""
    port = httpx.URL(api_url).port
    audio = CLIP.read_bytes()
    attempts = [
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},
        {"Origin": f"http://localhost:{port + 1}"},  # another local app's page: another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{port}"},
    ]
    with httpx.Client(base_url=api_url, timeout=60) as http:
        before = len(http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
        for headers in attempts:
            for path in ("/v1/jobs", "/v1/audio/transcriptions", "/invocations"):
                files = {"file": ("a.wav", audio, "audio/wav")}
                response = http.post(path, headers=headers, files=files, data={"webhook_url": "http://10.0.0.1/"})
                assert response.status_code == 403, (headers, path, response.status_code, response.text[:200])
        assert len(http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before
        # The server's own page (same origin) and clients that are not browsers still submit.
        same = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
        for headers in (same, {}):
            files = {"file": ("a.wav", audio, "audio/wav")}
            response = http.post("/v1/jobs", headers=headers, files=files, data={"format": "text"})
            assert response.status_code in (200, 202), response.text[:200]
        # Reading is not state-changing: a cross-site GET gets an answer its page cannot read (no CORS headers).
        response = http.get("/v1/jobs", headers={"Origin": "https://attacker.example"})
        assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_configured_names_and_the_container_accept_their_hosts(tmp_path: Path) -> None:
    """KOE_ALLOWED_HOSTS adds names; the SageMaker container (behind SageMaker's proxy) answers any Host."""
    from koe.container import container_settings

    def status(settings: Settings, host: str, **headers: str) -> int:
        from starlette.testclient import TestClient

        app = create_app(settings, engine_factory=lambda _: None)  # type: ignore[arg-type,return-value]
        client = TestClient(app)  # no lifespan: nothing loads
        return client.get("/openapi.json", headers={"Host": host, **headers}).status_code

    named = Settings(data_dir=tmp_path, allowed_hosts="koe.lan,Transcribe.Example")  # type: ignore[arg-type]
    assert status(named, "koe.lan:8080") == 200 and status(named, "transcribe.example") == 200
    assert status(named, "attacker.example") == 403
    bound = Settings(data_dir=tmp_path, host="192.168.5.5")
    assert status(bound, "192.168.5.5:8080") == 200 and status(bound, "192.168.5.6:8080") == 403
    container = container_settings({})
    assert container.allowed_hosts == ["*"]
    assert status(container.model_copy(update={"data_dir": tmp_path}), "runtime.sagemaker.internal:8080") == 200


def _finished_job(webhook_url: str) -> Any:
    from koe.jobs.job import Job, JobRequest, JobStatus

    request = JobRequest(
        input_location="file:///in.wav",
        output_location="file:///out/j.out",
        failure_location="file:///fail/j-error.out",
        webhook_url=webhook_url,
    )
    return Job(id="j", status=JobStatus.COMPLETED, request=request, created_at=1.0, expires_at=2.0, finished_at=1.5)


PRIVATE_WEBHOOKS = [
    "http://127.0.0.1:9/hook",
    "http://localhost/hook",
    "http://10.0.0.1/hook",
    "http://192.168.1.1/hook",
    "http://172.16.0.1/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fe80::1]/hook",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
]


def test_a_job_cannot_point_its_webhook_inside(api_url: str) -> None:
    """SSRF: a job's webhook naming loopback, private, link-local or cloud-metadata addresses (by number or by a name
    that resolves there) is refused with a 422 when submitted; nothing is queued."""
    with httpx.Client(base_url=api_url, timeout=60) as http:
        before = len(http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
        for url in PRIVATE_WEBHOOKS:
            files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
            response = http.post("/v1/jobs", files=files, data={"webhook_url": url})
            assert response.status_code == 422, (url, response.status_code, response.text[:200])
            assert "webhook_url" in response.json()["error"]["message"]
        assert len(http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before


def test_webhook_policy_resolves_names_and_honours_the_allow_list() -> None:
    """The policy decides on the addresses a name resolves to (every one of them), and a host the operator names
    in KOE_WEBHOOK_HOSTS is allowed wherever it points; other hosts are then refused without a lookup."""
    from koe.errors import OptionsError
    from koe.jobs.webhook import WebhookPolicy

    table = {"hooks.example": ["93.184.215.14"], "mixed.example": ["93.184.215.14", "10.1.2.3"],
             "hooks.corp": ["10.9.9.9"], "v6.example": ["2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}  # fmt: skip
    looked_up: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return table[host]

    public = WebhookPolicy(["*"], resolver=resolver)
    assert public.check("https://hooks.example/x?token=1") == "https://hooks.example/x?token=1"
    assert public.target("https://hooks.example:8443/x").url == "https://93.184.215.14:8443/x"
    assert public.target("https://v6.example/x").url.startswith("https://[2606:2800:")
    for url in ("http://mixed.example/", "http://hooks.corp/", "ftp://hooks.example/", "http:///x", "http://a b/"):
        with pytest.raises(OptionsError):
            public.check(url)
    listed = WebhookPolicy(["hooks.corp"], resolver=resolver)
    target = listed.target("http://hooks.corp:8080/hook")
    assert target.url == "http://10.9.9.9:8080/hook" and target.headers == {"Host": "hooks.corp:8080"}
    looked_up.clear()
    with pytest.raises(OptionsError, match="not an allowed webhook host"):
        listed.check("http://hooks.example/")
    assert looked_up == []
    with pytest.raises(OptionsError):
        WebhookPolicy([], resolver=resolver).check("https://hooks.example/")


def test_a_webhook_delivery_connects_to_the_address_that_was_checked() -> None:
    """A name that passed at submission and is rebound to 127.0.0.1 by delivery time reaches nothing; a host the
    operator allowed is reached at the address resolved (the name itself need not resolve for httpx)."""
    from koe.jobs.notify import Notifier
    from koe.jobs.webhook import WebhookPolicy
    from support.jobs_support import webhook_receiver

    with webhook_receiver() as receiver:
        port = httpx.URL(receiver.url).port
        rebound = WebhookPolicy(["*"], resolver=lambda host, port: ["127.0.0.1"])
        notifier = Notifier(policy=rebound, attempts=1)
        assert notifier.notify(_finished_job(f"http://rebind.test:{port}/hook")) == 1
        assert receiver.messages == []
        allowed = Notifier(policy=WebhookPolicy(["rebind.test"], resolver=lambda host, port: ["127.0.0.1"]))
        assert allowed.notify(_finished_job(f"http://rebind.test:{port}/hook")) == 0
        assert [m["inferenceId"] for m in receiver.messages] == ["j"]


def test_a_blackholed_webhook_gives_up_inside_the_effects_lease() -> None:
    """A webhook that accepts the connection and never answers: the deliveries of one job stop at their time budget,
    which is well inside the effects lease, so no other process takes the effects over and notifies twice."""
    import socket
    import time

    from koe.jobs.notify import Notifier
    from koe.jobs.queue import EFFECTS_LEASE_S

    assert Notifier.from_settings(Settings()).budget_s <= EFFECTS_LEASE_S / 2
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)  # connections complete in the backlog; nothing ever reads or answers them
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/hook"
        notifier = Notifier(webhook_url=url, attempts=20, timeout_s=5, backoff_s=0.05, budget_s=1.5)
        started = time.monotonic()
        assert notifier.notify(_finished_job(url)) == 1
        assert time.monotonic() - started < 3.0


def test_webhook_secrets_are_never_shown(tmp_path: Path) -> None:
    """Credentials and tokens in a job's webhook URL reach the webhook, but neither the jobs API nor the server's
    log (koe's retry and give-up lines, httpx's request lines) shows them."""
    from support.jobs_support import webhook_receiver

    with webhook_receiver(fail_first=100) as receiver:
        port = httpx.URL(receiver.url).port
        url = f"http://hookuser:pa55-Wq7z@127.0.0.1:{port}/hook?token=t0ken-Kx9v&sig=s1g-Mm3"
        env = koe_env(tmp_path / "data", webhook_hosts="127.0.0.1", webhook_attempts=2)
        server = start_server(env, tmp_path / "serve.log")
        try:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
                submitted = http.post("/v1/jobs", files=files, data={"webhook_url": url, "format": "text"})
                assert submitted.status_code == 202, submitted.text
                job_id = submitted.json()["id"]
                wait_for(lambda: receiver.refused >= 2, 120, 0.2, "both webhook tries")
                wait_for(lambda: "giving up" in server.text(), 30, 0.2, "the give-up line")
                texts = [submitted.text, http.get(f"/v1/jobs/{job_id}").text, http.get("/v1/jobs").text]
        finally:
            server.stop()
    view = json.loads(texts[1])
    assert view["webhook_url"] == f"http://***@127.0.0.1:{port}/hook?***"
    log = server.text()
    assert "127.0.0.1" in log and "giving up" in log
    for secret in ("pa55-Wq7z", "t0ken-Kx9v", "s1g-Mm3", "hookuser"):
        for text in [*texts, log]:
            assert secret not in text, secret


def test_clients_name_only_allowed_buckets(tmp_path: Path, api_url: str) -> None:
    """By default (KOE_S3_BUCKETS empty) a client may name no bucket: not as input, not as output or failure path
    (where a failing job would make koe delete `.out` objects). The server's own output and failure paths' buckets
    are allowed; every bucket takes an explicit `*`."""
    default = ObjectStore.from_settings(Settings(data_dir=tmp_path))
    for url in ("s3://victim/in.wav", "s3://victim/out/", "s3://koe/x"):
        with pytest.raises(LocationError):
            default.check(url)
    own = ObjectStore.from_settings(Settings(data_dir=tmp_path, output_path="s3://results/out"))
    assert own.check("s3://results/out/j.out") == "s3://results/out/j.out"
    with pytest.raises(LocationError):
        own.check("s3://victim/in.wav")
    listed = ObjectStore.from_settings(Settings(data_dir=tmp_path, s3_buckets="media, other"))  # type: ignore[arg-type]
    assert listed.check("s3://other/k") == "s3://other/k"
    with pytest.raises(LocationError):
        listed.check("s3://victim/k")
    anything = ObjectStore.from_settings(Settings(data_dir=tmp_path, s3_buckets=["*"]))
    assert anything.check("s3://victim/k") == "s3://victim/k"
    with httpx.Client(base_url=api_url, timeout=60) as http:
        for body in ({"input_location": "s3://victim/in.wav"},
                     {"input_location": "s3://victim/in.wav", "output_path": "s3://victim/data/"},
                     {"input_location": "s3://victim/in.wav", "failure_path": "s3://victim/data/"}):  # fmt: skip
            response = http.post("/v1/jobs", json=body)
            assert response.status_code == 403, (body, response.text[:200])
            assert response.json()["error"]["type"] == "location_not_allowed"


def test_odd_cursors_are_a_422_not_a_500(api_url: str) -> None:
    """A cursor past SQLite's integers overflowed (500); any cursor that is not one of ours is a 422."""
    with httpx.Client(base_url=api_url, timeout=30) as http:
        for cursor in ("99999999999999999999", "9" * 400, "-1", "1e3", " 5", "٣", "0x10", "5\n"):
            response = http.get("/v1/jobs", params={"cursor": cursor})
            assert response.status_code == 422, (cursor, response.status_code, response.text[:200])
            assert response.json()["error"]["type"] == "invalid_option"
        assert http.get("/v1/jobs", params={"cursor": "4611686018427387904"}).status_code == 200


def test_non_latin1_output_paths_are_answered_not_500(engine: Engine, tmp_path: Path) -> None:
    """An s3:// output path with characters HTTP headers cannot carry failed after the job was queued (500, and
    the client never learnt the job existed). The answer now carries them percent-encoded in the headers and as
    given in the body."""
    from urllib.parse import unquote

    from starlette.testclient import TestClient

    settings = Settings(data_dir=tmp_path, jobs_enabled=True, s3_buckets=["*"], worker_concurrency=0)
    app = create_app(settings, engine_factory=lambda _: engine)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        body = {"input_location": "s3://media/声/in.wav", "output_path": "s3://media/出力/", "id": "j1"}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text[:300]
        assert response.json()["output_location"] == "s3://media/出力/j1.out"
        assert unquote(response.headers["x-amzn-sagemaker-outputlocation"]) == "s3://media/出力/j1.out"


CONTROL_LOCATIONS = ["a\x1b[31mred.wav", "a\r\n2026-01-01 INFO koe: forged.wav", "a\u2028b.wav", "a\u202egnp.wav",
                     "a\x85b.wav", "a\x7fb.wav", "a%0d%0ab.wav", "a%1bb.wav"]  # fmt: skip


def test_control_characters_in_locations_are_refused(open_app: FastAPI, api_url: str) -> None:
    """ESC, CR/LF, U+2028, bidi overrides (raw or percent-encoded) in a location would forge or hide log lines:
    such a location is refused (403) before a job exists."""
    root = app_state(open_app).settings.data_dir
    with httpx.Client(base_url=api_url, timeout=30) as http:
        for name in CONTROL_LOCATIONS:
            for field in ("input_location", "output_path"):
                body = {"input_location": f"file://{root}/in.wav", field: f"file://{root}/{name}"}
                response = http.post("/v1/jobs", json=body)
                assert response.status_code == 403, (name, field, response.status_code, response.text[:200])
            if "%" not in name:  # an s3:// key is taken literally: `%0d` there is three characters
                with pytest.raises(LocationError):
                    parse_location(f"s3://koe/{name}")


def _wait_empty(folder: Path, timeout: float = 60) -> None:
    wait_for(lambda: not folder.exists() or not any(folder.iterdir()), timeout, 0.05, f"{folder} to empty")


def test_uploads_are_removed_when_their_job_ends_or_is_refused(engine: Engine, tmp_path: Path) -> None:
    """An upload lives as long as its job: gone once the job completed (its effects done), gone at once when the
    submission is refused; the transcript is still served from the queue."""
    from starlette.testclient import TestClient

    settings = Settings(data_dir=tmp_path / "data", jobs_enabled=True, poll_s=0.05, heartbeat_s=0.2,
                        reap_interval_s=0.2)  # fmt: skip
    inputs = settings.data_dir / "inputs"
    app = create_app(settings, engine_factory=lambda _: engine)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
        job = client.post("/v1/jobs", files=files, data={"format": "text", "id": "kept-for-a-while"}).json()
        wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "completed", 120, 0.1, "the job")
        _wait_empty(inputs)
        assert "weather" in client.get(f"/v1/jobs/{job['id']}/result").text.lower()
        for data in ({"language": "xx"}, {"id": "x" * 65}, {"webhook_url": "http://10.0.0.1/"}):
            files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
            assert client.post("/v1/jobs", files=files, data=data).status_code in (403, 422), data
            assert not any(inputs.iterdir()), data
        # The same finished job submitted again answers the stored job and keeps no second copy.
        files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
        again = client.post("/v1/jobs", files=files, data={"format": "text", "id": "kept-for-a-while"})
        assert again.status_code == 200 and again.json()["status"] == "completed"
        assert not any(inputs.iterdir())


def test_orphaned_uploads_are_swept_at_start_and_a_cancelled_jobs_upload_goes(tmp_path: Path) -> None:
    """At start-up, uploads no queued or running job reads are removed (older than a few minutes: another process
    may be about to queue one); cancelling a queued job removes its upload; KOE_KEEP_UPLOADS keeps everything."""
    import time

    from koe.jobs.endpoint import LocalEndpoint

    def endpoint(**extra: Any) -> LocalEndpoint:
        return LocalEndpoint(Settings(data_dir=tmp_path / "data", worker_concurrency=0, **extra))

    first = endpoint()
    spooled = tmp_path / "spooled.wav"
    spooled.write_bytes(CLIP.read_bytes())
    queued_at = first.ingest_upload(spooled, "queued-job")
    first.submit(queued_at, job_id="queued-job")
    first.stop()
    inputs = tmp_path / "data" / "inputs"
    old = time.time() - 3600
    for name in ("orphan", "fresh"):
        (inputs / name).write_bytes(b"left behind")
    for path in inputs.iterdir():
        if path.name != "fresh":
            os.utime(path, (old, old))
    kept = endpoint(keep_uploads=True)
    kept.start()
    kept.stop()
    assert len(list(inputs.iterdir())) == 3
    second = endpoint()
    second.start()
    try:
        assert sorted(p.name for p in inputs.iterdir()) == sorted(["fresh", Path(parse_location(queued_at).key).name])
        second.cancel("queued-job")
        assert [p.name for p in inputs.iterdir()] == ["fresh"]
    finally:
        second.stop()


def test_the_data_folder_and_the_job_database_are_private(tmp_path: Path) -> None:
    """Every transcript is in the job database and the outputs folder: folders koe creates are 0700 and the
    database (with its WAL) 0600, whatever the umask."""
    import stat

    from koe.jobs.endpoint import LocalEndpoint

    previous = os.umask(0o022)
    try:
        data = tmp_path / "new" / "data"
        endpoint = LocalEndpoint(Settings(data_dir=data, worker_concurrency=0))
        try:
            spooled = tmp_path / "spooled.wav"
            spooled.write_bytes(b"RIFF")
            endpoint.store.files.ingest_file(spooled, endpoint.inputs_dir)
            endpoint.store.write(endpoint.output_path + "/j.out", b"a transcript")
            endpoint.queue.stats()
            modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [data.parent, *data.rglob("*"), data]}
        finally:
            endpoint.stop()
    finally:
        os.umask(previous)
    assert any(p.name == "koe.db-wal" for p in modes), sorted(str(p) for p in modes)
    for path, mode in modes.items():
        assert mode == (0o700 if path.is_dir() else 0o600), (str(path), oct(mode))


def test_listening_beyond_loopback_without_keys_needs_insecure(tmp_path: Path) -> None:
    """`koe serve --host 0.0.0.0` with no API keys used to start silently, open to the whole network: it now refuses
    to start and says why; `--insecure` starts it with a loud warning; with API keys it starts quietly."""
    import subprocess

    from support.jobs_support import start_koe
    from support.serving import free_port

    env = koe_env(tmp_path / "data")
    port = free_port()
    refused = subprocess.run([*KOE_CLI, "serve", "--host", "0.0.0.0", "--port", str(port)], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode != 0
    assert "without API keys" in refused.stderr and "--insecure" in refused.stderr, refused.stderr[-500:]
    for extra_env, args, warned in (({}, ["--insecure"], True), ({"KOE_API_KEYS": KEY}, [], False)):
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        server = start_koe(["serve", "--host", "0.0.0.0", "--port", str(port), *args], {**env, **extra_env}, log)
        try:
            wait_for(partial(_pings, port), 60, 0.2, "koe serve on 0.0.0.0")
        finally:
            server.stop()
        assert ("INSECURE" in server.text()) is warned, server.text()[-500:]


def _pings(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _wav(path: Path, rate: int, seconds: float, amplitude: float = 0.1) -> Path:
    """A 16-bit mono WAV at `rate` Hz (the stdlib's writer takes any rate, as an attacker's would)."""
    import wave

    import numpy as np

    count = int(rate * seconds)
    samples = (amplitude * 32767 * np.sin(np.arange(count) * 0.05)).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return path


def test_a_wav_at_8_hz_is_refused_before_it_expands(tmp_path: Path, api_url: str) -> None:
    """A 112 KB WAV at 8 Hz declares 7,000 s: resampled to 16 kHz it was 0.45 GB of float32 (held twice), and then
    hours of transcription. Absurd sample rates are refused at once, at every door."""
    from koe.audio import decode
    from koe.errors import UndecodableAudioError

    bomb = _wav(tmp_path / "bomb.wav", 8, 7000)
    assert bomb.stat().st_size < 120_000
    with pytest.raises(UndecodableAudioError, match="sample rate"):
        decode(bomb)
    with httpx.Client(base_url=api_url, timeout=30) as http:
        response = http.post("/invocations", content=bomb.read_bytes(), headers={"Content-Type": "audio/wav"})
        assert response.status_code == 400 and "sample rate" in response.text, response.text[:200]
        files = {"file": ("bomb.wav", bomb.read_bytes(), "audio/wav")}
        response = http.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"})
        assert response.status_code == 400 and "sample rate" in response.text, response.text[:200]
    telephone = decode(_wav(tmp_path / "phone.wav", 8000, 2))  # 8 kHz is a real rate
    assert abs(telephone.duration - 2.0) < 0.01


def test_decoding_holds_the_audio_once(tmp_path: Path) -> None:
    """Decoded samples go into one growing buffer: the peak while decoding 900 s is close to the audio's own size
    (the list of chunks plus np.concatenate held it twice)."""
    import tracemalloc

    from koe.audio import decode

    source = _wav(tmp_path / "long.wav", 8000, 900)
    tracemalloc.start()
    try:
        audio = decode(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = audio.samples.nbytes
    assert abs(audio.duration - 900) < 0.1
    assert peak < 1.3 * size, (peak / 2**20, size / 2**20)


def test_decoding_stops_when_asked_and_memory_is_claimed(tmp_path: Path) -> None:
    """A decode checks its caller between frames (a job's timeout or release stops it), and charges its buffer to
    the memory budget it was given."""
    from koe.audio import AudioMemory, decode

    class Stop(Exception):
        pass

    calls = [0]

    def check() -> None:
        calls[0] += 1
        if calls[0] > 3:
            raise Stop

    source = _wav(tmp_path / "long.wav", 8000, 600)
    with pytest.raises(Stop):
        decode(source, check=check)
    memory = AudioMemory(10 * 2**30)
    with memory.claim(wait=False) as claim:
        audio = decode(source, memory=claim)
        assert audio.samples.nbytes <= claim.held <= 2 * audio.samples.nbytes
        assert memory.used == claim.held
    assert memory.used == 0


def test_audio_memory_in_flight_is_capped(engine: Engine, tmp_path: Path) -> None:
    """Past KOE_MAX_AUDIO_MEMORY, synchronous routes answer 503 with Retry-After (in their own error shapes) and a
    job waits for memory instead of failing; it completes once memory is released."""
    import threading

    from starlette.testclient import TestClient

    settings = Settings(data_dir=tmp_path / "data", jobs_enabled=True, max_audio_memory=50 * 2**20, poll_s=0.05,
                        heartbeat_s=0.2, reap_interval_s=0.2)  # fmt: skip
    app = create_app(settings, engine_factory=lambda _: engine)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        hog = app_state(app).audio_memory.claim(wait=False)
        hog.grow(48 * 2**20)  # another request's audio, still held
        try:
            raw = client.post("/invocations", content=CLIP.read_bytes(), headers={"Content-Type": "audio/wav"})
            assert raw.status_code == 503 and raw.json()["error"]["type"] == "server_busy", raw.text[:200]
            assert int(raw.headers["retry-after"]) > 0
            files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
            openai = client.post("/v1/audio/transcriptions", files=files, data={"model": "whisper-1"})
            assert openai.status_code == 503 and "retry-after" in openai.headers, openai.text[:200]
            assert openai.json()["error"]["message"]
            files = {"file": ("a.wav", CLIP.read_bytes(), "audio/wav")}
            job = client.post("/v1/jobs", files=files, data={"format": "text"}).json()
            wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 30, 0.05, "a claim")
            threading.Event().wait(1.0)  # it waits for memory, not failing
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
        finally:
            hog.release()
        view = wait_for(lambda: _finished_view(client, job["id"]), 120, 0.1, "the job")
        assert view["status"] == "completed"
        assert "weather" in client.get(f"/v1/jobs/{job['id']}/result").text.lower()
        assert app_state(app).audio_memory.used == 0


def _finished_view(client: Any, job_id: str) -> dict[str, Any] | None:
    view: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return view if view["status"] not in ("queued", "running") else None


def _form(parts: list[tuple[str, bytes]], boundary: str = "koe") -> bytes:
    body = b""
    for name, value in parts:
        filename = '; filename="a.wav"' if name == "file" else ""
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
        body += value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def test_repeated_form_fields_are_bounded_and_joined_once() -> None:
    """`x[]` repeated 300 times at 60 KB each (18 MB of option text) was joined quadratically (`f"{old},{new}"`)
    and accepted; the form's non-file parts are now bounded in number and in total size, and an array field's
    values are joined once."""
    import io
    import time

    from koe.errors import InputError

    flood = _form([("file", b"RIFF"), *[("x[]", b"v" * 60_000)] * 300])
    reader = MultipartReader("multipart/form-data; boundary=koe", lambda: io.BytesIO())
    started = time.monotonic()
    with pytest.raises(InputError, match="fields"):
        reader.write(flood)
        reader.finish()
    assert time.monotonic() - started < 1.0
    many = _form([("file", b"RIFF"), *[("timestamp_granularities[]", b"word")] * 65])
    with pytest.raises(InputError, match="more than 64 fields"):
        reader = MultipartReader("multipart/form-data; boundary=koe", lambda: io.BytesIO())
        reader.write(many)
    ok = _form([("file", b"RIFF"), ("timestamp_granularities[]", b"word"), ("timestamp_granularities[]", b"segment"),
                ("language", b"en")])  # fmt: skip
    reader = MultipartReader("multipart/form-data; boundary=koe", lambda: io.BytesIO())
    reader.write(ok)
    reader.finish()
    assert reader.fields == {"timestamp_granularities[]": "word,segment", "language": "en"}


def test_json_audio_is_decoded_from_disk_not_held_in_memory(api_url: str) -> None:
    """A JSON body's base64 audio was held about 3x (the body, the parsed string, the decoded bytes). The body is
    now spooled to disk and decoded a slice at a time: taking 12 MB of audio as JSON costs the process (client and
    server together, traced) at most 8 MiB more at its peak than a raw body of the same size does (the transport's
    own buffers); it used to cost some 40 MiB more."""
    import base64
    import tracemalloc

    audio = os.urandom(12 * 2**20)
    body = json.dumps({"language": "en", "audio": base64.b64encode(audio).decode(), "task": "transcribe"}).encode()
    raw = os.urandom(len(body))
    peaks = {}
    with httpx.Client(base_url=api_url, timeout=120) as http:
        for kind, content in (("application/json", body), ("audio/wav", raw)):
            tracemalloc.start()
            try:
                response = http.post("/invocations", content=content, headers={"Content-Type": kind})
                peaks[kind] = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert response.status_code == 400 and response.json()["error"]["type"] == "undecodable_audio", kind
    extra = peaks["application/json"] - peaks["audio/wav"]
    assert extra < 8 * 2**20, {k: round(v / 2**20, 1) for k, v in peaks.items()}


def test_json_audio_extraction_matches_the_json_parser(tmp_path: Path) -> None:
    """The streaming extraction agrees with json.loads + base64 on what the audio and options are, and refuses what
    it refuses: escaped slashes, nested "audio" keys, a duplicate top-level "audio", bad base64, non-objects."""
    import base64
    import io

    from koe.bodies import extract_json_audio
    from koe.errors import InputError

    audio = os.urandom(100_000)
    text = base64.b64encode(audio).decode()

    def run(body: str | bytes) -> tuple[bytes, dict[str, Any]]:
        raw = tmp_path / "body.json"
        raw.write_bytes(body.encode() if isinstance(body, str) else body)
        sink = io.BytesIO()
        with raw.open("rb") as source:
            fields = extract_json_audio(source, sink, 10**7)
        return sink.getvalue(), fields

    for body in (
        json.dumps({"audio": text, "language": "en"}),
        json.dumps({"options": {"audio": "x"}, "audio": text, "list": ["audio", ":", {"a": "}"}]}),
        '{"task": "\\"audio\\"", "audio" : ' + json.dumps(text).replace("/", "\\/") + "}",
        '{"\\u0061udio": "' + text + '"}',
    ):
        got, fields = run(body)
        expected = json.loads(body)
        assert got == audio and fields == {k: v for k, v in expected.items() if k != "audio"}
    for bad in ('{"audio": "' + text + '", "audio": "QUFB"}', '{"audio": "abc$"}', '["audio", "QUFB"]',
                '{"audio": 5}', '{"audio": "QUFB"', '{"audio": "QQ==' + "QUFB" * 2**20 + '"}', "",
                '{"x": {"audio": "QUFB"}}'):  # fmt: skip
        with pytest.raises(InputError):
            run(bad)


def _fixture_tree(base: Path) -> tuple[Path, Path]:
    """A root reached through a symlink, holding symlinks that point in and out, beside an outside tree whose files
    all say OUTSIDE. Returns (the root as configured: the symlink, the outside folder)."""
    outside, real = base / "outside", base / "realroot"
    if not outside.exists():
        (outside / "deep").mkdir(parents=True)
        for path in (outside / "secret.txt", outside / "deep" / "key.pem", base / "beside.txt"):
            path.write_text(f"OUTSIDE {path.name}")
        (real / "sub").mkdir(parents=True)
        (real / "inside.wav").write_text("INSIDE inside.wav")
        (real / "sub" / "x.wav").write_text("INSIDE x.wav")
        (real / "link_out").symlink_to(outside, target_is_directory=True)
        (real / "link_up").symlink_to("..", target_is_directory=True)
        (real / "link_file_out").symlink_to(outside / "secret.txt")
        (real / "link_in").symlink_to("sub", target_is_directory=True)
        (real / "sub" / "link_back_out").symlink_to("../../outside", target_is_directory=True)
        (base / "root").symlink_to(real, target_is_directory=True)
    return base / "root", outside


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


TREE_PIECES = st.sampled_from(["link_out", "link_up", "link_file_out", "link_in", "link_back_out", "sub", "inside.wav",
                               "x.wav", "secret.txt", "deep", "key.pem", "..", ".", "%2e%2e", "new.out", "realroot",
                               "outside", "beside.txt", "root"])  # fmt: skip


@given(data=st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_locations_fuzzed_against_the_file_system(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """open, write and delete through the store with generated locations over a tree of symlinks (in the root, out
    of it, a symlinked root itself). The oracle is the file system, not the store's own check: no read ever returns
    an OUTSIDE file's bytes, and the outside tree (and the file beside the root) is byte-for-byte unchanged after
    every write and delete, whatever was accepted."""
    base = tmp_path_factory.getbasetemp() / "tree"
    root, outside = _fixture_tree(base)
    store = ObjectStore(FileStore([root]))
    before = {**_snapshot(outside), "beside": (base / "beside.txt").read_text()}
    start = data.draw(st.sampled_from([str(root), str(base / "realroot"), str(base), str(outside), "/"]))
    url = "file://" + start + "/" + "/".join(data.draw(st.lists(TREE_PIECES, min_size=1, max_size=5)))
    operation = data.draw(st.sampled_from(["open", "write", "delete"]))
    try:
        if operation == "open":
            with store.open(url, 10_000) as fh:
                assert not fh.read().startswith(b"OUTSIDE"), url
        elif operation == "write":
            store.write(url, b"INSIDE written")
        else:
            store.delete(url)
    except KoeError:
        pass
    except (IsADirectoryError, NotADirectoryError, PermissionError):
        pass  # a folder named as an object: the file system said no, and nothing outside changed (checked below)
    after = {**_snapshot(outside), "beside": (base / "beside.txt").read_text()}
    assert after == before, (operation, url)


def test_a_refused_inline_async_invocation_leaves_no_upload(tmp_path: Path) -> None:
    """InvokeEndpointAsync with the audio inline: a refused invocation (the same InferenceId again, with other
    bytes) keeps no upload; the first invocation's, still queued, stays."""
    from starlette.testclient import TestClient

    settings = Settings(data_dir=tmp_path / "data", jobs_enabled=True, worker_concurrency=0)
    inputs = settings.data_dir / "inputs"
    app = create_app(settings, engine_factory=lambda _: None)  # type: ignore[arg-type,return-value]
    with TestClient(app, base_url="http://127.0.0.1") as client:
        headers = {"X-Amzn-SageMaker-Inference-Id": "inline-1", "Content-Type": "application/octet-stream"}
        first = client.post("/endpoints/koe/async-invocations", content=CLIP.read_bytes(), headers=headers)
        assert first.status_code == 202, first.text
        assert len(list(inputs.iterdir())) == 1
        again = client.post("/endpoints/koe/async-invocations", content=b"other bytes" * 100, headers=headers)
        assert again.status_code >= 400, again.text
        assert len(list(inputs.iterdir())) == 1
