"""`koe serve` as a SageMaker async endpoint for clients written for SageMaker, with only endpoint URLs changed.

`koe serve` runs in a subprocess (tiny.en) with a moto S3 server on 127.0.0.1 as its object store, and ONLY
its output path set to s3:// (as a new user would set it up); the failure location must then be S3 as well,
in the same bucket, as it is on SageMaker.

- The boto3 tests always run: they check the locations InvokeEndpointAsync returns and read both objects.
- The SageMaker Python SDK test drives `sagemaker.predictor_async.AsyncPredictor` (upload, invoke, get_result,
  and a failing input that raises the SDK's `AsyncInferenceModelError`). The SDK is not a dev dependency:
  sagemaker 2.257.7 requires sagemaker-core, which pins rich<15 (koe pins rich 15.0.0), plus pandas, protobuf
  and a dozen more. The test is skipped unless `sagemaker` is importable; to run it, install the SDK beside
  the venv without touching koe's pins (what was done for issue 18):

      .venv/bin/pip install --target /tmp/sgsdk --no-deps sagemaker==2.257.7 sagemaker-core==1.0.78 \\
          google-pasta graphene graphql-core graphql-relay importlib-metadata==6.11.0 mock==4.0.3 omegaconf \\
          pandas pathos pox ppft multiprocess dill schema smdebug-rulesconfig==1.0.1 tblib cloudpickle \\
          platformdirs protobuf pytz zipp && rm -rf /tmp/sgsdk/tests
      PYTHONPATH=/tmp/sgsdk .venv/bin/pytest -q tests/test_deploy_sdk.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from support.jobs_support import moto_server
from support.serving import JFK_WORDS, free_port, python_command, server_process, wait_ready, words

BUCKET = "sagemaker-us-east-1-123456789012"
PREFIX = "async"
ENDPOINT = "koe-sdk"
AWS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def s3(moto_url: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_url, **AWS)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def koe_url(moto_url: str, s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("sdk")
    port = free_port()
    env = {
        "HF_HUB_OFFLINE": "1", "KOE_MODEL": "tiny.en", "KOE_DEVICE": "cpu", "KOE_CPU_THREADS": "2",
        "KOE_POLL_S": "0.1", "KOE_S3_ENDPOINT_URL": moto_url, "KOE_S3_REGION": AWS["region_name"],
        "KOE_S3_ACCESS_KEY_ID": "testing", "KOE_S3_SECRET_ACCESS_KEY": "testing",
        "KOE_OUTPUT_PATH": f"s3://{BUCKET}/{PREFIX}/output",  # and no KOE_FAILURE_PATH
    }  # fmt: skip
    command = python_command("-m", "koe", "serve", "--port", str(port), "--data-dir", str(data))
    with server_process(command, env, port, data / "serve.log") as (url, process):
        wait_ready(url, process=process)
        yield url


def read_when_there(s3: Any, url: str, timeout_s: float = 120) -> bytes:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            time.sleep(0.1)
    raise TimeoutError(url)


def test_failure_location_follows_an_s3_output_path(koe_url: str, s3: Any, jfk: Path) -> None:
    smr = boto3.client("sagemaker-runtime", endpoint_url=koe_url, **AWS)
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/input/jfk.flac", Body=jfk.read_bytes())
    good = smr.invoke_endpoint_async(
        EndpointName=ENDPOINT, InputLocation=f"s3://{BUCKET}/{PREFIX}/input/jfk.flac", ContentType="audio/flac",
        Accept="text/plain", CustomAttributes="beam_size=1",
    )  # fmt: skip
    assert good["OutputLocation"].startswith(f"s3://{BUCKET}/{PREFIX}/output/")
    assert good["FailureLocation"].startswith(f"s3://{BUCKET}/{PREFIX}/failures/")  # same scheme and bucket
    assert JFK_WORDS in words(read_when_there(s3, good["OutputLocation"]).decode())

    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/input/noise.bin", Body=b"this is not audio" * 100)
    bad = smr.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation=f"s3://{BUCKET}/{PREFIX}/input/noise.bin")
    error = json.loads(read_when_there(s3, bad["FailureLocation"]))["error"]
    assert error["type"] == "undecodable_audio" and error["message"]


def test_sagemaker_sdk_async_predictor(
    koe_url: str, moto_url: str, s3: Any, jfk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sagemaker", reason="the SageMaker Python SDK is not installed (see this module's docstring)")
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)  # the SDK's own S3 client, as a user would point it
    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(key, value)
    from sagemaker.async_inference import WaiterConfig
    from sagemaker.exceptions import AsyncInferenceModelError
    from sagemaker.predictor import Predictor
    from sagemaker.predictor_async import AsyncPredictor
    from sagemaker.session import Session

    session = Session(
        boto_session=boto3.Session(**AWS),
        sagemaker_runtime_client=boto3.client("sagemaker-runtime", endpoint_url=koe_url, **AWS),
        sagemaker_client=boto3.client("sagemaker", endpoint_url=moto_url, **AWS),
    )
    predictor = AsyncPredictor(Predictor(ENDPOINT, sagemaker_session=session))
    waiter = WaiterConfig(max_attempts=120, delay=1)

    # Upload (the SDK puts the bytes at input_path), invoke, get_result.
    response = predictor.predict_async(data=jfk.read_bytes(), input_path=f"s3://{BUCKET}/{PREFIX}/input/sdk.flac")
    assert response.failure_path.startswith(f"s3://{BUCKET}/")
    result = response.get_result(waiter)
    text = json.loads(result)["text"] if result.lstrip().startswith(b"{") else result.decode()
    assert JFK_WORDS in words(text)

    failing = predictor.predict_async(data=b"not audio" * 100, input_path=f"s3://{BUCKET}/{PREFIX}/input/bad.bin")
    with pytest.raises(AsyncInferenceModelError, match="undecodable_audio"):
        failing.get_result(waiter)
