"""The SageMaker runtime API on `koe serve`, through the real boto3 `sagemaker-runtime` client.

`koe serve` runs in a subprocess (tiny.en, a temporary data folder) with a moto S3 server on 127.0.0.1 as its
object store; its output path plays the endpoint's `AsyncInferenceConfig.OutputConfig.S3OutputPath`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from conftest import AUDIO_DIR
from koe.api.runtime import RuntimeApiError, check_endpoint, parse_async_headers
from koe.audio import AudioLimits, decode
from koe.config import Settings
from support.jobs_support import moto_server
from support.media import encode_audio
from support.serving import JFK_WORDS, free_port, python_command, server_process, wait_ready, words

BUCKET = "sagemaker-ap-northeast-1-123456789012"  # what sagemaker.Session().default_bucket() names
ENDPOINT = "WhisperTranscribeModelEndpoint"  # the recipe's endpoint name, unchanged
PREFIX = "whisper-transcribe/async-inference"
AWS = {"region_name": "ap-northeast-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def allowed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder `koe serve` may read file:// inputs from (KOE_STORAGE_ROOTS)."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def koe_url(moto_url: str, allowed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`koe serve`, storing outputs in (moto's) S3 like the recipe's endpoint; file:// inputs under `allowed`."""
    data = tmp_path_factory.mktemp("runtime")
    port = free_port()
    env = {
        "HF_HUB_OFFLINE": "1",
        "KOE_MODEL": "tiny.en",
        "KOE_DEVICE": "cpu",
        "KOE_CPU_THREADS": "2",
        "KOE_POLL_S": "0.1",
        "KOE_S3_ENDPOINT_URL": moto_url,
        "KOE_S3_REGION": AWS["region_name"],
        "KOE_S3_ACCESS_KEY_ID": "testing",
        "KOE_S3_SECRET_ACCESS_KEY": "testing",
        "KOE_OUTPUT_PATH": f"s3://{BUCKET}/{PREFIX}/output",
        "KOE_FAILURE_PATH": f"s3://{BUCKET}/{PREFIX}/failure",
        "KOE_STORAGE_ROOTS": json.dumps([str(allowed)]),
        "KOE_MAX_SYNC_BYTES": "2000000",
    }
    command = python_command("-m", "koe", "serve", "--port", str(port), "--data-dir", str(data))
    with server_process(command, env, port, data / "serve.log") as (url, process):
        wait_ready(url, process=process)
        yield url


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_url, **AWS)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": AWS["region_name"]})
    return client


@pytest.fixture(scope="module")
def smr(koe_url: str) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=koe_url, **AWS)


@pytest.fixture(scope="module")
def test_mp3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """jfk.flac as the recipe's `test.mp3` (it sends ContentType audio/mpeg)."""
    audio = decode(AUDIO_DIR / "en" / "jfk.flac", AudioLimits(10**8, 60))
    return encode_audio(audio.samples, tmp_path_factory.mktemp("mp3") / "test.mp3", codec="libmp3lame")


def wait_for_object(s3: Any, key: str, timeout_s: float = 120) -> str:
    """The recipe's polling loop (list_objects on the output key every 0.1 s), with a deadline added."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "Contents" in s3.list_objects(Bucket=BUCKET, Prefix=key):
            return str(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())
        time.sleep(0.1)
    raise TimeoutError(f"no s3://{BUCKET}/{key} after {timeout_s}s")


def test_original_recipe_client(s3: Any, smr: Any, test_mp3: Path) -> None:
    """The recipe's client steps against koe: upload the mp3, invoke_endpoint_async with its arguments, poll the
    returned OutputLocation, read the text. Only the endpoint URLs differ (and the poll has a deadline)."""
    s3.upload_file(str(test_mp3), BUCKET, f"{PREFIX}/input/test.mp3")
    response = smr.invoke_endpoint_async(
        EndpointName=ENDPOINT,
        InputLocation=f"s3://{BUCKET}/{PREFIX}/input/test.mp3",
        ContentType="audio/mpeg",
        Accept="text/plain",
    )
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert response["InferenceId"]
    output_location = response["OutputLocation"]
    assert output_location.startswith(f"s3://{BUCKET}/{PREFIX}/output/")
    assert response["FailureLocation"].startswith(f"s3://{BUCKET}/{PREFIX}/failure/")
    predictions = wait_for_object(s3, output_location.replace(f"s3://{BUCKET}/", ""))
    assert JFK_WORDS in words(predictions)


def test_async_options_id_and_failure(s3: Any, smr: Any) -> None:
    """Inference-Id, custom attributes and Accept are honoured; a missing input fails into FailureLocation."""
    response = smr.invoke_endpoint_async(
        EndpointName=ENDPOINT,
        InputLocation=f"s3://{BUCKET}/{PREFIX}/input/missing.mp3",
        InferenceId="missing-1",
        CustomAttributes="beam_size=1",
        Accept="application/json",
        RequestTTLSeconds=600,
        InvocationTimeoutSeconds=60,
    )
    assert response["InferenceId"] == "missing-1"
    failure = json.loads(wait_for_object(s3, response["FailureLocation"].replace(f"s3://{BUCKET}/", "")))
    assert failure["error"]["type"] == "input_not_found"
    assert "Contents" not in s3.list_objects(Bucket=BUCKET, Prefix=response["OutputLocation"].split("/", 3)[3])


def test_inline_body_and_output_extension(s3: Any, smr: Any) -> None:
    clip = (AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav").read_bytes()
    response = smr.invoke_endpoint_async(
        EndpointName="any-other-name", Body=clip, Accept="text/plain", S3OutputPathExtension="inline/run1"
    )
    assert response["OutputLocation"].startswith(f"s3://{BUCKET}/{PREFIX}/output/inline/run1/")
    text = wait_for_object(s3, response["OutputLocation"].replace(f"s3://{BUCKET}/", ""))
    assert "weather" in words(text)


def test_file_input_location(s3: Any, smr: Any, allowed: Path) -> None:
    clip = allowed / "weather.wav"
    clip.write_bytes((AUDIO_DIR / "en" / "azure_whatstheweatherlike.wav").read_bytes())
    response = smr.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation=clip.as_uri(), Accept="text/vtt")
    vtt = wait_for_object(s3, response["OutputLocation"].replace(f"s3://{BUCKET}/", ""))
    assert vtt.startswith("WEBVTT") and "weather" in words(vtt)


def test_invoke_endpoint_sync(smr: Any, jfk: Path) -> None:
    response = smr.invoke_endpoint(
        EndpointName=ENDPOINT,
        Body=jfk.read_bytes(),
        ContentType="audio/flac",
        Accept="application/json",
        CustomAttributes="beam_size=1",
    )
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    body = json.loads(response["Body"].read())
    assert JFK_WORDS in words(body["text"])
    assert body["segments"]


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"RequestTTLSeconds": 99999}, 400, "at 'requestTTLSeconds' failed to satisfy constraint"),
        ({"InvocationTimeoutSeconds": 7200}, 400, "less than or equal to 3600"),
        ({"InferenceId": "x" * 65}, 400, "at 'inferenceId'"),
        ({"InputLocation": "https://example.com/a.mp3"}, 400, "at 'inputLocation'"),
        ({"InputLocation": "file:///etc/passwd"}, 403, "outside the allowed folders"),
        ({"Accept": "image/png"}, 406, "image/png"),
        ({"CustomAttributes": "beam_size=99"}, 422, "beam_size"),
        ({"S3OutputPathExtension": "s3://elsewhere"}, 400, "at 's3OutputPathExtension'"),
        ({"EndpointName": "bad_name"}, 400, "at 'endpointName'"),
        ({"InputLocation": None}, 400, "at 'inputLocation' failed to satisfy constraint: Member must not be null"),
    ],
)
def test_bad_async_requests_are_validation_errors(smr: Any, kwargs: dict[str, Any], status: int, needle: str) -> None:
    call = {"EndpointName": ENDPOINT, "InputLocation": f"s3://{BUCKET}/{PREFIX}/input/test.mp3", **kwargs}
    call = {k: v for k, v in call.items() if v is not None}
    with pytest.raises(smr.exceptions.ValidationError) as caught:
        smr.invoke_endpoint_async(**call)
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationError"
    assert needle in error["Error"]["Message"]
    assert error["ResponseMetadata"]["HTTPStatusCode"] == status


def test_model_errors_on_invoke_endpoint(smr: Any) -> None:
    with pytest.raises(smr.exceptions.ModelError) as caught:
        smr.invoke_endpoint(EndpointName=ENDPOINT, Body=b"this is not audio", ContentType="audio/wav")
    error = caught.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert "Received client error (400) from model" in error["Error"]["Message"]
    assert error["OriginalStatusCode"] == 400
    assert json.loads(error["OriginalMessage"])["error"]["type"] == "undecodable_audio"
    with pytest.raises(ClientError) as too_large:
        smr.invoke_endpoint(EndpointName=ENDPOINT, Body=b"\0" * 2_000_001, ContentType="audio/wav")
    assert too_large.value.response["Error"]["Code"] == "ValidationError"
    assert "InvokeEndpointAsync" in too_large.value.response["Error"]["Message"]


# Header checks and endpoint names, without a server.


def test_async_header_defaults_and_aws_wording() -> None:
    settings = Settings()
    parsed = parse_async_headers({"x-amzn-sagemaker-inputlocation": "s3://b/k"}, settings)
    assert (parsed.ttl_s, parsed.timeout_s, parsed.format) == (21600, 900, "verbose_json")
    assert len(parsed.inference_id) == 36  # a generated UUID, as SageMaker does
    with pytest.raises(RuntimeApiError) as caught:
        parse_async_headers(
            {"x-amzn-sagemaker-requestttlseconds": "59", "x-amzn-sagemaker-invocationtimeoutseconds": "x"}, settings
        )
    assert caught.value.message.startswith("2 validation errors detected: Value '59' at 'requestTTLSeconds'")


def test_endpoint_names() -> None:
    check_endpoint(Settings(), "Any-Name-1")
    strict = Settings(strict_endpoint_name=True, endpoint_name="koe")
    check_endpoint(strict, "koe")
    with pytest.raises(RuntimeApiError) as caught:
        check_endpoint(strict, "other")
    assert (caught.value.code, caught.value.status) == ("ValidationError", 404)
    assert caught.value.message == "Endpoint other of account local not found."
