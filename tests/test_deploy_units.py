"""The deploy pieces that need no AWS at all: spec validation and naming, error mapping, backoff, waiting."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError
from rich.console import Console

from koe.cli.plans import step_printer
from koe.deploy.autoscaling import WAKE_STEPS, ScalingNames, wake_alarm
from koe.deploy.aws import Aws, _map_client_error
from koe.deploy.invoke import Invocation, accept_for, content_type_for, failure_message, wait_for_results
from koe.deploy.plan import Call, Outcome, Plan, Step, Var, execute
from koe.deploy.spec import DeploySpec, mapping_matches, owned_names, parse_environment, split_s3_root
from koe.deploy.wait import Backoff, Clock
from koe.errors import AwsError, AwsNotFoundError, OptionsError

BASE: dict[str, Any] = {
    "name": "speech", "image_uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/koe:latest",
    "model": "s3://b-models/m/model.tar.gz", "role_arn": "arn:aws:iam::123456789012:role/r", "bucket": "my-bucket",
}  # fmt: skip


def spec(**changes: Any) -> DeploySpec:
    return DeploySpec(**{**BASE, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "bad_name"}, "name: 'bad_name'"),
        ({"name": "x" * 53}, "longer than 52"),
        ({"role_arn": "r"}, "role_arn"),
        ({"bucket": "Bad Bucket"}, "bucket"),
        ({"max_instances": 0}, "max_instances"),
        ({"max_concurrent_invocations": -1}, "max_concurrent_invocations"),
        ({"ami_version": "al2-ami-sagemaker-inference-neuron-2"}, "ami_version"),
        ({"startup_timeout_s": 30}, "startup_timeout_s"),
        ({"success_topic": "arn:aws:sqs:us-east-1:123456789012:q"}, "success_topic"),
        ({"instance_type": "g4dn.xlarge"}, "instance_type"),
        ({"instance_type": "ml.inf2.xlarge"}, "instance_type"),
        ({"min_instances": 3, "max_instances": 2}, "min_instances"),
        ({"invocation_timeout_s": 3601}, "invocation_timeout_s"),
        ({"throughput": 0}, "throughput"),
        ({"kms_key": "bad key"}, "kms_key"),
    ],
)
def test_spec_rejects_bad_values(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        spec(**changes)


def test_names_are_content_addressed() -> None:
    first = spec()
    assert first.prefix == "koe/speech" and first.output_path == "s3://my-bucket/koe/speech/output"
    assert owned_names("speech", [first.model_name, first.config_name, "speech-other", "speechy-0123456789"]) == sorted(
        {first.model_name, first.config_name}
    )
    assert spec().config_name == first.config_name and spec().model_name == first.model_name
    assert spec(max_instances=5).config_name == first.config_name  # autoscaling is not part of the config
    assert spec(max_concurrent_invocations=1).config_name != first.config_name
    assert spec(max_concurrent_invocations=1).model_name == first.model_name
    assert spec(batch_size=4).model_name != first.model_name  # environment is part of the model
    assert spec(batch_size=4).config_name != first.config_name  # ... and so of the config that names it
    assert len(first.config_name) <= 63 and len(spec(name="x" * 52).model_name) == 63


def test_environment_and_device() -> None:
    assert spec().model_environment() == {
        "KOE_MODEL": "/opt/ml/model", "KOE_DEVICE": "cuda", "KOE_MAX_DURATION_S": "14400",
    }  # fmt: skip
    assert spec(instance_type="ml.m5.xlarge").model_environment()["KOE_DEVICE"] == "cpu"
    env = parse_environment(["KOE_COMPUTE_TYPE=int8_float16", "A=b=c"])
    assert spec(environment=env).model_environment()["A"] == "b=c"
    with pytest.raises(OptionsError):
        parse_environment(["1BAD=x"])


def test_async_config_without_topics_has_no_notification_config() -> None:
    output = spec().async_config()["OutputConfig"]
    assert output == {
        "S3OutputPath": "s3://my-bucket/koe/speech/output",
        "S3FailurePath": "s3://my-bucket/koe/speech/failure",
    }


def test_packaged_model_location_changes_with_the_model_files(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "model.bin").write_bytes(b"1")
    before = spec(model=str(model)).model_data_url
    assert before is not None and before.endswith("/model.tar.gz")
    assert before.startswith("s3://my-bucket/koe/speech/model/my-model-")
    (model / "model.bin").write_bytes(b"22")
    assert spec(model=str(model)).model_data_url != before


def test_split_s3_root() -> None:
    assert split_s3_root("s3://b/koe/speech/output") == ("b", "koe/speech")
    assert split_s3_root("s3://b/output") == ("b", "")


def test_mapping_matches_ignores_extra_keys_only() -> None:
    assert mapping_matches({"a": 1, "b": [{"c": 0}]}, {"a": 1.0, "b": [{"c": 0, "x": 1}], "z": 2})
    assert not mapping_matches({"a": 1}, {"a": 2})
    assert not mapping_matches({"b": [1, 2]}, {"b": [1]})
    assert not mapping_matches({"a": 1}, {})


def test_wake_step_covers_everything_at_or_above_the_threshold() -> None:
    # Bounds are relative to the alarm threshold (1): one step from breach 0 (metric >= 1) upwards, no upper
    # bound and no negative step, so the wake alarm can only ever add capacity.
    assert WAKE_STEPS == ({"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1},)
    alarm = wake_alarm(ScalingNames("speech", "AllTraffic"), Var("wake"))
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1.0, "GreaterThanOrEqualToThreshold")
    assert alarm["AlarmActions"] == [Var("wake")]


def client_error(code: str, message: str, status: int = 400) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "DescribeModel")


def test_client_errors_map_to_koe_errors() -> None:
    missing = _map_client_error(
        "sagemaker", "describe_model", client_error("ValidationException", "Could not find model x")
    )
    assert isinstance(missing, AwsNotFoundError)
    assert missing.message == "sagemaker describe_model: ValidationException: Could not find model x"
    other = _map_client_error("sagemaker", "create_model", client_error("ValidationException", "bad image"))
    assert type(other) is AwsError
    denied = _map_client_error("s3", "put_object", client_error("AccessDenied", "Access Denied", 403))
    assert "koe iam-policy" in denied.message
    html = _map_client_error("sagemaker", "update_endpoint", client_error("500", "<!doctype html><html>..", 500))
    assert html.message == "sagemaker update_endpoint: 500: HTTP 500"
    assert isinstance(
        _map_client_error("ecr", "x", client_error("RepositoryNotFoundException", "no")), AwsNotFoundError
    )


def test_no_region_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    with pytest.raises(AwsError, match="no AWS region"):
        Aws.connect()


def test_backoff_is_capped_exponential() -> None:
    delays = Backoff(first=2, cap=30).delays()
    assert [next(delays) for _ in range(7)] == [2, 4, 8, 16, 30, 30, 30]


def test_formats_and_content_types() -> None:
    assert accept_for("text") == "text/plain" and accept_for("json") == "application/json"
    assert accept_for("srt") == "application/x-subrip" and accept_for("vtt") == "text/vtt"
    with pytest.raises(OptionsError):
        accept_for("docx")
    assert content_type_for(Path("a.flac")) == "audio/flac" and content_type_for(Path("a.mp4")) == "video/mp4"
    assert content_type_for(Path("a.bin")) == "application/octet-stream"


def test_failure_message() -> None:
    assert failure_message(b'{"error": {"type": "x", "message": "y"}}') == "x: y"
    assert failure_message(b"Traceback ...") == "Traceback ..."
    assert failure_message(b"e" * 3000).endswith(" ...")


class FakeStore:
    """Objects that appear after a number of checks (what S3 looks like while the endpoint works)."""

    def __init__(self, appear_after: dict[str, int]) -> None:
        self.appear_after = appear_after
        self.checks: dict[str, int] = {}

    def object_exists(self, url: str) -> bool:
        self.checks[url] = self.checks.get(url, 0) + 1
        return url in self.appear_after and self.checks[url] > self.appear_after[url]

    def read_object(self, url: str) -> tuple[bytes, str]:
        body = b'{"error": {"type": "engine_error", "message": "boom"}}' if "fail" in url else b"hello\n"
        return body, "text/plain"


def invocation(n: int) -> Invocation:
    return Invocation(Path(f"{n}.wav"), f"id-{n}", f"s3://in/{n}", f"s3://out/{n}.out", f"s3://fail/{n}.err")


def test_wait_watches_output_and_failure_with_backoff_until_the_deadline() -> None:
    store = FakeStore({"s3://out/1.out": 2, "s3://fail/2.err": 0})
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    done = wait_for_results(
        cast(Aws, store), [invocation(1), invocation(2), invocation(3)], timeout_s=100,
        backoff=Backoff(first=2, cap=30), console=Console(file=io.StringIO()), clock=Clock(lambda: now[0], sleep),
    )  # fmt: skip
    first, second, third = done
    assert (first.state, first.body) == ("completed", b"hello\n")
    assert (second.state, second.error) == ("failed", "engine_error: boom")
    assert third.state == "timed out" and "s3://out/3.out" in (third.error or "")
    assert slept == [2, 4, 8, 16, 30, 30] and sum(slept) <= 100
    assert store.checks["s3://out/2.out"] == 1  # found failed in the first round, never checked again


def test_invocation_without_failure_location_is_watched_on_output_only() -> None:
    store = FakeStore({"s3://out/1.out": 0})
    item = Invocation(Path("1.wav"), "id-1", "s3://in/1", "s3://out/1.out", None)
    [done] = wait_for_results(cast(Aws, store), [item], console=Console(file=io.StringIO()))
    assert done.state == "completed"


def test_ami_version_only_for_gpu_types_and_cpu_types_are_supported() -> None:
    gpu = spec().variant_config()
    assert (
        gpu["InferenceAmiVersion"] == "al2-ami-sagemaker-inference-gpu-3-1" and gpu["InstanceType"] == "ml.g4dn.xlarge"
    )
    for cpu_type in ("ml.c5.xlarge", "ml.m5.large", "ml.c7i.2xlarge", "ml.m6g.xlarge"):
        cpu = spec(instance_type=cpu_type)
        assert "InferenceAmiVersion" not in cpu.variant_config(), cpu_type
        assert cpu.model_environment()["KOE_DEVICE"] == "cpu"
    for gpu_type in ("ml.g5.xlarge", "ml.g6e.2xlarge", "ml.p4d.24xlarge"):
        assert spec(instance_type=gpu_type).variant_config()["InferenceAmiVersion"]


def test_audio_limit_follows_the_invocation_timeout_and_throughput() -> None:
    # The longest accepted audio is what one instance finishes inside InvocationTimeoutSeconds.
    assert spec().invocation_timeout_s == 3600 and spec().max_audio_s == 4 * 3600  # assumed 4x on a GPU
    assert spec(instance_type="ml.c5.xlarge").max_audio_s == 3600  # assumed 1x on CPU
    assert spec(instance_type="ml.c5.xlarge", throughput=2.5).max_audio_s == 9000
    assert spec(throughput=100).max_audio_s == 4 * 3600  # never above the container's own 4 h default
    assert spec(invocation_timeout_s=900, throughput=2).model_environment()["KOE_MAX_DURATION_S"] == "1800"


def test_kms_key_encrypts_outputs_and_the_volume_where_aws_allows() -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert spec(kms_key=key).async_config()["OutputConfig"]["KmsKeyId"] == key
    assert spec(kms_key=key).volume_kms_key is None  # g4dn has NVMe instance storage: AWS rejects a volume key
    assert spec(kms_key=key, instance_type="ml.c5d.xlarge").volume_kms_key is None
    assert spec(kms_key=key, instance_type="ml.c5.xlarge").volume_kms_key == key
    assert spec(kms_key=key).config_name != spec().config_name


def test_model_choices_are_packaged_from_the_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import koe.model_files
    from koe.deploy.spec import MODEL_CHOICES

    fetched: list[str] = []

    def download(name: str, cache: Path) -> Path:
        fetched.append(name)
        return tmp_path

    monkeypatch.setattr(koe.model_files, "_download", download)
    for name in MODEL_CHOICES:
        chosen = spec(model=name)
        assert chosen.packaged and chosen.model_data_url is not None
        assert chosen.model_data_url.startswith("s3://my-bucket/koe/speech/model/")
        koe.model_files.resolve(name, tmp_path)  # what `koe package` / the deploy's packaging step calls
    assert fetched == list(MODEL_CHOICES)  # each goes to a hub download (at package time), none is refused


# -- executing a plan: the library reports, the CLI prints --------------------------------------------------


class StepAws:
    """Two `Aws` methods: `ok` records its call, `boom` fails as AWS would."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def ok(self, what: str) -> None:
        self.calls.append(what)

    def boom(self) -> None:
        raise AwsError("quota exceeded")


def test_execute_reports_each_step_and_the_restore_and_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    taken = Step("autoscaling", "t", "delete", instructions=(Call("ok", {"what": "down"}),),
                 undo=(Call("ok", {"what": "up"}),))  # fmt: skip
    failing = Step("endpoint", "e", "update", instructions=(Call("boom"),))
    aws = StepAws()
    seen: list[tuple[str, Outcome]] = []
    with pytest.raises(AwsError, match=r"update endpoint e: quota exceeded \(autoscaling t restored as it was\)"):
        execute(
            Plan("p", (taken, failing)), cast(Aws, aws), report=lambda step, outcome: seen.append((step.name, outcome))
        )
    assert aws.calls == ["down", "up"]
    assert seen == [("t", "done"), ("t", "restored")]
    assert capsys.readouterr() == ("", "")  # the library side prints nothing; the CLI's reporter does


def test_the_cli_prints_one_line_per_step() -> None:
    out = io.StringIO()
    report = step_printer(Console(file=out, width=200))
    report(Step("model", "koe-m", "create"), "done")
    report(Step("endpoint", "koe-e", "wait"), "done")
    report(Step("autoscaling", "koe-t", "delete"), "restored")
    assert out.getvalue().splitlines() == ["created model koe-m", "ready endpoint koe-e", "restored autoscaling koe-t"]
