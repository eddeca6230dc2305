"""A real moto server on 127.0.0.1 for the deploy tests, and the gaps in moto that the tests fill.

Everything goes over HTTP to the server, through the real boto3: koe's `Aws` wrapper on one side, plain boto3
clients (`raw`) for the independent describe calls on the other. Where moto differs from AWS (reference
sagemaker.md §5), the code stays right for AWS and the tests say what moto lacks:

- UpdateEndpoint is not implemented in moto 5.2.5 (HTTP 500). `moto_server` adds it to moto's SageMaker
  responses for the tests' duration: it validates the config and points the endpoint at it, AWS's end state.
  `roll_back_next_update(reason)` makes the next one end as a failed blue/green update does on AWS: InService
  on the OLD config, with a FailureReason.
- DescribeEndpoint omits AsyncInferenceConfig (AWS returns it): koe reads it from the endpoint config.
- Endpoints are InService at once; waiting is tested by setting the state on moto's backend object.
- InvokeEndpointAsync never reads the input or writes to S3OutputPath/S3FailurePath: it answers with
  s3://sagemaker-output-<uuid>/response.json or failure.json, taking results from a queue (`queue_results`).
- Target tracking creates no CloudWatch alarms; DeregisterScalableTarget keeps the policies (AWS deletes them).
- SageMaker never publishes async notices to SNS in moto: the bulk tests publish SageMaker's JSON themselves.

Every call, including those moto only emulates in part (UpdateEndpoint above), goes through the real boto3
client, so botocore validates each request's shape against the AWS service model before it is sent.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.sagemaker.models import sagemaker_backends
from moto.sagemaker.responses import SageMakerResponse
from moto.server import ThreadedMotoServer

from koe.deploy.aws import Aws

ACCOUNT = "123456789012"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}
# One boto3 session for the whole run: it caches the parsed service models (SageMaker's alone takes about half a
# second to load), so the tests' own clients do not parse them again and again.
_SESSION: list[boto3.Session] = []


def session() -> boto3.Session:
    if not _SESSION:
        _SESSION.append(boto3.Session(**CREDENTIALS))
    return _SESSION[0]


_ROLLBACKS: list[str] = []


def roll_back_next_update(reason: str) -> None:
    _ROLLBACKS.append(reason)


def _update_endpoint(self: SageMakerResponse) -> str:
    """UpdateEndpoint for moto: what AWS leaves behind once the update finishes (or is rolled back)."""
    from moto.sagemaker.exceptions import ValidationError

    backend = self.sagemaker_backend
    name, config_name = self._get_param("EndpointName"), self._get_param("EndpointConfigName")
    if name not in backend.endpoints:
        raise ValidationError(message=f"Could not find endpoint '{name}'.")
    if config_name not in backend.endpoint_configs:
        raise ValidationError(message=f"Could not find endpoint configuration '{config_name}'.")
    endpoint = backend.endpoints[name]
    if _ROLLBACKS:
        endpoint.endpoint_status = "InService"
        endpoint.failure_reason = _ROLLBACKS.pop(0)  # type: ignore[assignment]
        return json.dumps({"EndpointArn": endpoint.arn})
    endpoint.endpoint_config_name = config_name
    endpoint.production_variants = endpoint._process_production_variants(
        backend.endpoint_configs[config_name].production_variants
    )
    return json.dumps({"EndpointArn": endpoint.arn})


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    original = getattr(SageMakerResponse, "update_endpoint", None)
    SageMakerResponse.update_endpoint = _update_endpoint  # type: ignore[attr-defined]
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        if original is None:
            del SageMakerResponse.update_endpoint  # type: ignore[attr-defined]
        server.stop()


@pytest.fixture
def aws_env(moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A clean moto and an environment in which the CLI's boto3 finds dummy credentials and nothing else."""
    _post(f"{moto_url}/moto-api/reset", {})
    _ROLLBACKS.clear()
    empty = tmp_path_factory.mktemp("aws-config") / "none"
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("KOE_AWS_ENDPOINT_URL", moto_url)
    return moto_url


@pytest.fixture
def aws(aws_env: str) -> Aws:
    return Aws(session(), region=REGION, endpoint_url=aws_env, max_attempts=1)


class Raw:
    """Plain boto3 clients on the moto server, for checking what koe did without going through koe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._session = session()

    def __call__(self, service: str) -> Any:
        return self._session.client(service, endpoint_url=self.url)


@pytest.fixture
def raw(aws_env: str) -> Raw:
    return Raw(aws_env)


def queue_results(url: str, results: list[tuple[bool, str]]) -> None:
    """Queue InvokeEndpointAsync outcomes in moto, FIFO: (is_failure, body)."""
    body = {
        "account_id": ACCOUNT,
        "region": REGION,
        "results": [{"is_failure": failed, "data": data} for failed, data in results],
    }
    _post(f"{url}/moto-api/static/sagemaker/async-endpoint-results", body)


def set_endpoint_state(name: str, status: str, reason: str | None = None) -> None:
    """Put an endpoint into `status` on moto's backend (moto's endpoints are InService at once)."""
    endpoint = sagemaker_backends[ACCOUNT][REGION].endpoints[name]
    endpoint.endpoint_status = status
    endpoint.failure_reason = reason  # type: ignore[assignment]


def _post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    with opener.open(request, timeout=10) as response:
        assert 200 <= response.status < 300, response.status
