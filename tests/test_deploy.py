"""`koe deploy / invoke / status / destroy` against a real moto server on 127.0.0.1 (see moto_aws.py for
what moto lacks and how the tests cover it)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from koe.cli import app
from koe.cli.plans import render_plan
from koe.deploy.autoscaling import ScalingNames
from koe.deploy.aws import Aws
from koe.deploy.plan import Call, PackageModel, execute, plan_deploy, plan_destroy
from koe.deploy.spec import DeploySpec
from koe.deploy.wait import Backoff, Clock, wait_for_endpoint
from koe.errors import AwsError, DeployError
from support import deploy_world, moto_aws
from support.deploy_world import seed
from support.moto_aws import ACCOUNT, Raw, queue_results, roll_back_next_update, set_endpoint_state

NAME = "koe-test"
BUCKET = "koe-test-bucket"
IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/koe:latest"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/koe-test-sagemaker"
MODEL_DATA = f"s3://{BUCKET}/models/tiny/model.tar.gz"
RID = f"endpoint/{NAME}/variant/AllTraffic"
# The moto fixtures, bound here so that pytest finds them in this module.
aws, aws_env, moto_url, raw = moto_aws.aws, moto_aws.aws_env, moto_aws.moto_url, moto_aws.raw
wide_console = deploy_world.wide_console  # autouse: rich tables on one line each, searchable
FAST = Backoff(first=0.01, cap=0.02)
MUTATING = ("Create", "Put", "Update", "Delete", "Register", "Deregister", "Upload")


@pytest.fixture
def seeded(aws: Aws, raw: Raw) -> dict[str, str]:
    """A bucket with model data in it and the two SNS topics, as a user would have them before deploying."""
    return seed(raw, BUCKET, {"success": "koe-done", "error": "koe-failed"})


def make_spec(topics: dict[str, str], **changes: Any) -> DeploySpec:
    values: dict[str, Any] = {
        "name": NAME, "image_uri": IMAGE, "model": MODEL_DATA, "role_arn": ROLE, "bucket": BUCKET,
        "max_instances": 2, "success_topic": topics["success"], "error_topic": topics["error"],
        "batch_size": 8,
    }  # fmt: skip
    values.update(changes)
    return DeploySpec(**values)


def deploy_args(topics: dict[str, str], *extra: str) -> list[str]:
    return [
        "deploy", "--name", NAME, "--image", IMAGE, "--model", MODEL_DATA, "--role", ROLE, "--bucket", BUCKET,
        "--max-instances", "2", "--success-topic", topics["success"], "--error-topic", topics["error"],
        "--batch-size", "8", *extra,
    ]  # fmt: skip


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def calls(aws: Aws) -> Iterator[list[str]]:
    """Every operation koe's `Aws` sends (read and write), in order, recorded by botocore event hooks."""
    seen: list[str] = []
    original = aws._client

    def client(service: str) -> Any:
        fresh = service not in aws._clients
        made = original(service)
        if fresh:
            made.meta.events.register("before-call", lambda model, **_: seen.append(model.name))
        return made

    aws._client = client  # type: ignore[method-assign]
    yield seen


def mutating(seen: list[str]) -> list[str]:
    return [op for op in seen if op.startswith(MUTATING)]


def run(plan: Any, aws: Aws) -> None:
    execute(plan, aws, console=Console(file=io.StringIO()), backoff=FAST)


def deployed(raw: Raw) -> dict[str, Any]:
    """Everything there is, from plain boto3 describe/list calls."""
    sm, aa, cw = raw("sagemaker"), raw("application-autoscaling"), raw("cloudwatch")
    ns = {"ServiceNamespace": "sagemaker"}
    return {
        "models": sorted(m["ModelName"] for m in sm.list_models()["Models"]),
        "configs": sorted(c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]),
        "endpoints": sorted(e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]),
        "targets": aa.describe_scalable_targets(**ns)["ScalableTargets"],
        "policies": {p["PolicyName"]: p for p in aa.describe_scaling_policies(**ns)["ScalingPolicies"]},
        "alarms": {a["AlarmName"]: a for a in cw.describe_alarms()["MetricAlarms"]},
    }


# ---- dry run ------------------------------------------------------------------------------------------------


def test_dry_run_plans_everything_and_changes_nothing(
    aws: Aws, raw: Raw, seeded: dict[str, str], calls: list[str]
) -> None:
    plan = plan_deploy(aws, make_spec(seeded))
    assert [(s.resource, s.action) for s in plan.steps] == [
        ("s3 bucket", "no-op"), ("lifecycle rule", "no-op"), ("model data", "no-op"), ("model", "create"),
        ("endpoint config", "create"), ("endpoint", "create"), ("scalable target", "create"),
        ("scaling policy", "create"), ("scaling policy", "create"), ("alarm", "create"),
        ("alarm", "create"), ("alarm", "create"), ("alarm", "create"),
    ]  # fmt: skip
    assert mutating(calls) == [], "planning only reads"
    table = Console(file=io.StringIO(), width=250)
    table.print(render_plan(plan))
    assert "endpoint config" in table.file.getvalue()  # type: ignore[attr-defined]

    result = cli(*deploy_args(seeded, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "dry run" in result.stderr
    for method in ("create_model(", "create_endpoint_config(", "create_endpoint(", "register_scalable_target(",
                   "put_scaling_policy(", "put_metric_alarm("):  # fmt: skip
        assert method in result.stderr
    state = deployed(raw)
    assert state == {"models": [], "configs": [], "endpoints": [], "targets": [], "policies": {}, "alarms": {}}


# ---- the full cycle -----------------------------------------------------------------------------------------


def test_full_cycle_deploy_verify_invoke_status_destroy(
    aws: Aws, raw: Raw, seeded: dict[str, str], tmp_path: Path, aws_env: str
) -> None:
    spec = make_spec(seeded)
    result = cli(*deploy_args(seeded))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == NAME
    _verify_resources(raw, spec, seeded)
    _invoke_and_collect(raw, aws_env, tmp_path)

    status = cli("status", "--name", NAME)
    assert status.exit_code == 0, status.output
    for text in ("InService", "1/1", spec.config_name, "0..2 instances", "ApproximateBacklogSizePerInstance target 5.0",
                 "[0.0, +inf) +1", "koe-koe-test-has-backlog-without-capacity", "ApproximateBacklogSize"):  # fmt: skip
        assert text in status.stdout, text

    # moto's DeregisterScalableTarget would keep the policies (AWS deletes them): destroy deletes them first, so
    # "nothing left" below holds on both.
    destroyed = cli("destroy", "--name", NAME, "--delete-data", "--yes")
    assert destroyed.exit_code == 0, destroyed.output
    assert f"{NAME} is gone" in destroyed.stderr
    state = deployed(raw)
    assert state == {"models": [], "configs": [], "endpoints": [], "targets": [], "policies": {}, "alarms": {}}
    left = raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/")
    assert left["KeyCount"] == 0
    assert raw("s3").head_object(Bucket=BUCKET, Key="models/tiny/model.tar.gz")  # outside the prefix: kept

    again = cli("destroy", "--name", NAME)
    assert again.exit_code == 0, again.output
    assert "nothing to change" in again.stderr and "absent" in again.stderr
    assert cli("status", "--name", NAME).exit_code == 1


def _verify_resources(raw: Raw, spec: DeploySpec, topics: dict[str, str]) -> None:
    sm = raw("sagemaker")
    endpoint = sm.describe_endpoint(EndpointName=NAME)
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == spec.config_name
    assert endpoint["ProductionVariants"][0]["CurrentInstanceCount"] == 1

    model = sm.describe_model(ModelName=spec.model_name)
    assert model["ExecutionRoleArn"] == ROLE
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert model["PrimaryContainer"]["Environment"] == {
        "KOE_MODEL": "/opt/ml/model", "KOE_DEVICE": "cuda", "KOE_BATCH_SIZE": "8",
        "KOE_MAX_DURATION_S": "14400",  # 3600 s invocation timeout at the assumed 4x real time on a GPU
    }  # fmt: skip

    config = sm.describe_endpoint_config(EndpointConfigName=spec.config_name)
    assert config["ProductionVariants"] == [
        {
            "VariantName": "AllTraffic", "ModelName": spec.model_name, "InitialInstanceCount": 1,
            "InstanceType": "ml.g4dn.xlarge", "InferenceAmiVersion": "al2-ami-sagemaker-inference-gpu-3-1",
            "ContainerStartupHealthCheckTimeoutInSeconds": 900, "ModelDataDownloadTimeoutInSeconds": 1200,
        }
    ]  # fmt: skip
    assert config["AsyncInferenceConfig"] == {
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 8},
        "OutputConfig": {
            "S3OutputPath": f"s3://{BUCKET}/koe/{NAME}/output",
            "S3FailurePath": f"s3://{BUCKET}/koe/{NAME}/failure",
            "NotificationConfig": {"SuccessTopic": topics["success"], "ErrorTopic": topics["error"]},
        },
    }

    state = deployed(raw)
    [target] = state["targets"]
    assert (target["ResourceId"], target["ScalableDimension"]) == (RID, "sagemaker:variant:DesiredInstanceCount")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)

    names = ScalingNames(NAME, "AllTraffic")
    assert set(state["policies"]) == {names.tracking_policy, names.wake_policy}
    tracking = state["policies"][names.tracking_policy]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 5.0,
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": NAME}], "Statistic": "Average",
        },
        "ScaleInCooldown": 600, "ScaleOutCooldown": 300,
    }  # fmt: skip
    wake = state["policies"][names.wake_policy]
    assert wake["PolicyType"] == "StepScaling"
    # Bounds relative to the alarm threshold: breach >= 0 (i.e. metric >= 1) adds one instance, no upper bound.
    assert wake["StepScalingPolicyConfiguration"] == {
        "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average", "Cooldown": 300,
        "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
    }  # fmt: skip

    assert set(state["alarms"]) == {names.wake_alarm, names.failures_alarm, names.expired_alarm, names.oldest_alarm}
    alarm = state["alarms"][names.wake_alarm]
    assert alarm["AlarmActions"] == [wake["PolicyARN"]]
    expected = {
        "Namespace": "AWS/SageMaker", "MetricName": "HasBacklogWithoutCapacity",
        "Dimensions": [{"Name": "EndpointName", "Value": NAME}], "Statistic": "Average", "Period": 60,
        "EvaluationPeriods": 1, "DatapointsToAlarm": 1, "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
    }  # fmt: skip
    assert {k: alarm[k] for k in expected} == expected


def _invoke_and_collect(raw: Raw, url: str, tmp_path: Path) -> None:
    audio = []
    for stem in ("first", "second"):
        path = tmp_path / f"{stem} clip.flac"
        path.write_bytes(b"fLaC" + stem.encode())
        audio.append(str(path))
    # moto never runs a model: InvokeEndpointAsync takes its outcome from this queue and writes it to its own
    # bucket (response.json / failure.json), not to the endpoint's S3OutputPath. koe reads whatever locations the
    # call returned, as on AWS, so the client side is exercised for real.
    failure = json.dumps({"error": {"type": "undecodable_audio", "message": "cannot decode the input"}})
    queue_results(url, [(False, "And so, my fellow Americans\n"), (True, failure)])

    result = cli("invoke", "--name", NAME, *audio, "--wait", "--language", "en", "--option", "beam_size=2")
    assert result.exit_code == 1, result.output  # one of the two failed
    assert result.stdout == "And so, my fellow Americans\n"
    assert "undecodable_audio: cannot decode the input" in result.stderr
    assert "completed" in result.stderr and "failed" in result.stderr

    uploaded = raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/input/")["Contents"]
    keys = sorted(o["Key"] for o in uploaded)
    assert len(keys) == 2 and all(k.endswith(("/first_clip.flac", "/second_clip.flac")) for k in keys)
    head = raw("s3").head_object(Bucket=BUCKET, Key=keys[0])
    assert head["ContentType"] == "audio/flac"

    queue_results(url, [(False, '{"text": "ok"}')])
    saved = cli("invoke", "--name", NAME, audio[0], "--wait", "--format", "json", "--output-dir", str(tmp_path / "out"))
    assert saved.exit_code == 0, saved.output
    assert (tmp_path / "out" / "first clip.json").read_text() == '{"text": "ok"}'

    queued = cli("invoke", "--name", NAME, audio[1])
    assert queued.exit_code == 0, queued.output
    assert "s3://" in queued.stdout and "response.json" in queued.stdout


def test_invoke_sends_options_as_custom_attributes(aws: Aws, seeded: dict[str, str], tmp_path: Path) -> None:
    from koe.deploy.invoke import submit

    run(plan_deploy(aws, make_spec(seeded)), aws)
    sent: list[dict[str, Any]] = []
    aws._client("sagemaker-runtime").meta.events.register(
        "provide-client-params.sagemaker-runtime.InvokeEndpointAsync", lambda params, **_: sent.append(params)
    )
    clip = tmp_path / "a.mp3"
    clip.write_bytes(b"ID3")
    options = {"language": "ja", "word_timestamps": True, "temperature": (0.0, 0.2)}
    [queued] = submit(aws, NAME, [clip], fmt="srt", options=options, request_ttl_s=600, invocation_timeout_s=120,
                      console=Console(file=io.StringIO()))  # fmt: skip
    [params] = sent
    assert params["EndpointName"] == NAME
    assert params["InputLocation"] == queued.input_location
    assert params["InputLocation"].startswith(f"s3://{BUCKET}/koe/{NAME}/input/{queued.inference_id}/")
    assert params["ContentType"] == "audio/mpeg"
    assert params["Accept"] == "application/x-subrip"
    assert params["CustomAttributes"] == "language=ja;word_timestamps=true;temperature=0.0|0.2"
    assert params["InferenceId"] == queued.inference_id
    assert (params["RequestTTLSeconds"], params["InvocationTimeoutSeconds"]) == (600, 120)
    # moto answers with its own bucket; koe only ever reads the locations it was given.
    assert queued.output_location.endswith("/response.json")
    assert queued.failure_location is not None and queued.failure_location.endswith("/failure.json")


# ---- idempotency, updates, failures -------------------------------------------------------------------------


def test_second_deploy_is_a_no_op(aws: Aws, seeded: dict[str, str], calls: list[str]) -> None:
    run(plan_deploy(aws, make_spec(seeded)), aws)
    calls.clear()
    plan = plan_deploy(aws, make_spec(seeded))
    assert plan.changes == ()
    run(plan, aws)
    assert mutating(calls) == []
    result = cli(*deploy_args(seeded))
    assert result.exit_code == 0 and "nothing to change" in result.stderr


def test_new_arguments_update_the_endpoint_and_sweep_the_old_config(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    first = make_spec(seeded)
    run(plan_deploy(aws, first), aws)

    # Only the endpoint config and autoscaling change: same model, new config, endpoint updated, old config gone.
    # Autoscaling is changed in place: the instance type stays, so nothing is deregistered at any moment.
    # (moto lacks UpdateEndpoint; moto_aws adds it to the server with AWS's end state, see its docstring.)
    second = make_spec(seeded, max_concurrent_invocations=2, max_instances=3)
    assert second.model_name == first.model_name and second.config_name != first.config_name
    plan = plan_deploy(aws, second)
    assert [(s.resource, s.action) for s in plan.changes] == [
        ("endpoint config", "create"), ("endpoint", "update"), ("scalable target", "update"),
        ("old endpoint config", "delete"),
    ]  # fmt: skip
    run(plan, aws)
    state = deployed(raw)
    assert state["configs"] == [second.config_name] and state["models"] == [first.model_name]
    sm = raw("sagemaker")
    assert sm.describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == second.config_name
    config = sm.describe_endpoint_config(EndpointConfigName=second.config_name)
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 2}
    assert state["targets"][0]["MaxCapacity"] == 3
    wake = state["policies"][ScalingNames(NAME, "AllTraffic").wake_policy]
    assert state["alarms"][ScalingNames(NAME, "AllTraffic").wake_alarm]["AlarmActions"] == [wake["PolicyARN"]]

    # A new image is a new model too; the old model goes with the old config.
    third = make_spec(seeded, max_concurrent_invocations=2, max_instances=3, image_uri=IMAGE.replace("latest", "v2"))
    run(plan_deploy(aws, third), aws)
    state = deployed(raw)
    assert state["models"] == [third.model_name] and state["configs"] == [third.config_name]
    assert plan_deploy(aws, third).changes == ()


def test_failure_midway_is_completed_by_deploying_again(
    aws: Aws, raw: Raw, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(seeded)
    names = ScalingNames(NAME, "AllTraffic")
    real_put = Aws.put_scaling_policy

    def flaky_put(self: Aws, **kwargs: Any) -> str:
        if kwargs["name"] == names.wake_policy:
            raise AwsError("application-autoscaling put_scaling_policy: ThrottlingException: Rate exceeded")
        return real_put(self, **kwargs)

    monkeypatch.setattr(Aws, "put_scaling_policy", flaky_put)
    with pytest.raises(AwsError, match=r"create scaling policy koe-koe-test-wake-from-zero: .*Rate exceeded"):
        run(plan_deploy(aws, spec), aws)
    state = deployed(raw)
    assert state["endpoints"] == [NAME] and len(state["targets"]) == 1
    assert set(state["policies"]) == {names.tracking_policy} and names.wake_alarm not in state["alarms"]

    monkeypatch.setattr(Aws, "put_scaling_policy", real_put)
    plan = plan_deploy(aws, spec)
    assert [(s.resource, s.name, s.action) for s in plan.changes] == [
        ("scaling policy", names.wake_policy, "create"), ("alarm", names.wake_alarm, "create"),
        ("alarm", names.failures_alarm, "create"), ("alarm", names.expired_alarm, "create"),
        ("alarm", names.oldest_alarm, "create"),
    ]  # fmt: skip
    run(plan, aws)
    assert plan_deploy(aws, spec).changes == ()
    _verify_resources(raw, spec, seeded)

    run(plan_destroy(aws, NAME), aws)
    state = deployed(raw)
    assert state == {"models": [], "configs": [], "endpoints": [], "targets": [], "policies": {}, "alarms": {}}


def test_failed_update_keeps_the_old_config_until_a_rerun_finishes(
    aws: Aws, raw: Raw, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_spec(seeded)
    run(plan_deploy(aws, first), aws)
    second = make_spec(seeded, max_concurrent_invocations=1)

    def broken_update(self: Aws, **kwargs: Any) -> str:
        raise AwsError("sagemaker update_endpoint: ValidationException: cannot update now")

    monkeypatch.setattr(Aws, "update_endpoint", broken_update)
    with pytest.raises(AwsError, match="update endpoint koe-test"):
        run(plan_deploy(aws, second), aws)
    state = deployed(raw)
    # The endpoint still runs the first config, which is still there, and it still scales (changed in place).
    assert sorted(state["configs"]) == sorted([first.config_name, second.config_name])
    assert raw("sagemaker").describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == first.config_name
    assert len(state["targets"]) == 1 and len(state["policies"]) == 2 and len(state["alarms"]) == 4

    monkeypatch.undo()
    run(plan_deploy(aws, second), aws)
    state = deployed(raw)
    assert state["configs"] == [second.config_name] and len(state["targets"]) == 1
    assert plan_deploy(aws, second).changes == ()
    run(plan_destroy(aws, NAME), aws)
    assert deployed(raw)["configs"] == []


def test_rolled_back_update_fails_and_keeps_everything(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    first = make_spec(seeded)
    run(plan_deploy(aws, first), aws)
    before = deployed(raw)
    second = make_spec(seeded, max_concurrent_invocations=1, image_uri=IMAGE.replace("latest", "v2"))
    # On AWS a blue/green update whose new fleet fails ends InService on the OLD config with a FailureReason.
    roll_back_next_update("ClientError: the new fleet failed its health checks")
    with pytest.raises(DeployError, match=r"rolled back; it still runs .*new fleet failed its health checks"):
        run(plan_deploy(aws, second), aws)
    state = deployed(raw)
    # Nothing swept: both configs and both models remain, the endpoint runs the first, autoscaling unchanged.
    assert state["configs"] == sorted([first.config_name, second.config_name])
    assert state["models"] == sorted([first.model_name, second.model_name])
    assert raw("sagemaker").describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == first.config_name
    assert (state["targets"], state["policies"], state["alarms"]) == (
        before["targets"], before["policies"], before["alarms"],
    )  # fmt: skip

    # The next plan shows the failure and tries again; the sweep's guard is checked at execution too.
    plan = plan_deploy(aws, second)
    [endpoint] = [s for s in plan.changes if s.resource == "endpoint"]
    assert endpoint.action == "update" and "last update failed: ClientError" in endpoint.detail
    run(plan, aws)
    state = deployed(raw)
    assert state["configs"] == [second.config_name] and state["models"] == [second.model_name]


def test_sweep_keeps_old_config_when_the_endpoint_does_not_run_the_new_one(
    aws: Aws, raw: Raw, seeded: dict[str, str]
) -> None:
    first = make_spec(seeded)
    run(plan_deploy(aws, first), aws)
    second = make_spec(seeded, max_concurrent_invocations=1)
    plan = plan_deploy(aws, second)
    # Someone (or an AWS rollback) moves the endpoint while the plan runs: skip the update, keep the sweep.
    without_update = replace(plan, steps=tuple(s for s in plan.steps if s.resource != "endpoint"))
    with pytest.raises(DeployError, match=r"runs .*, not .*: kept"):
        run(without_update, aws)
    assert first.config_name in deployed(raw)["configs"]


def test_failed_instance_type_change_restores_autoscaling(
    aws: Aws, raw: Raw, seeded: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_spec(seeded, min_instances=0, max_instances=2, warm_hours="Mon-Fri 09:00-18:00")
    run(plan_deploy(aws, first), aws)
    before = deployed(raw)
    aas = raw("application-autoscaling")
    schedules = aas.describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"]
    assert len(schedules) == 2
    # AWS refuses UpdateEndpoint for a variant registered with Application Auto Scaling when the instance type
    # changes: only then is autoscaling taken down first, and it must come back if the update fails.
    second = make_spec(seeded, instance_type="ml.g4dn.2xlarge", warm_hours="Mon-Fri 09:00-18:00")
    plan = plan_deploy(aws, second)
    assert [(s.resource, s.action) for s in plan.changes][:3] == [
        ("endpoint config", "create"), ("autoscaling", "delete"), ("endpoint", "update"),
    ]  # fmt: skip

    def broken_update(self: Aws, **kwargs: Any) -> str:
        raise AwsError("sagemaker update_endpoint: ResourceLimitExceeded: no ml.g4dn.2xlarge quota")

    monkeypatch.setattr(Aws, "update_endpoint", broken_update)
    with pytest.raises(AwsError, match=r"quota .*autoscaling endpoint/koe-test/variant/AllTraffic restored as it was"):
        run(plan, aws)
    state = deployed(raw)
    [target] = state["targets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)
    assert set(state["policies"]) == set(before["policies"])
    for name, policy in before["policies"].items():
        for key in ("PolicyType", "TargetTrackingScalingPolicyConfiguration", "StepScalingPolicyConfiguration"):
            assert state["policies"][name].get(key) == policy.get(key), (name, key)
    wake = state["policies"][ScalingNames(NAME, "AllTraffic").wake_policy]
    assert state["alarms"][ScalingNames(NAME, "AllTraffic").wake_alarm]["AlarmActions"] == [wake["PolicyARN"]]
    assert raw("sagemaker").describe_endpoint(EndpointName=NAME)["EndpointConfigName"] == first.config_name

    monkeypatch.undo()
    run(plan_deploy(aws, second), aws)  # the rerun completes the change
    assert plan_deploy(aws, second).changes == ()
    assert len(deployed(raw)["targets"]) == 1


def test_failed_endpoint_reports_its_reason_and_is_replaced(aws: Aws, seeded: dict[str, str]) -> None:
    spec = make_spec(seeded)
    run(plan_deploy(aws, spec), aws)
    # moto's endpoints are InService at once and never fail: the state is set on moto's backend object.
    set_endpoint_state(NAME, "Failed", "CannotStartContainerError")
    with pytest.raises(DeployError, match=r"failed: CannotStartContainerError.*--ami-version"):
        wait_for_endpoint(aws, NAME, until="InService", timeout_s=5, backoff=FAST,
                          console=Console(file=io.StringIO()))  # fmt: skip
    plan = plan_deploy(aws, spec)
    [endpoint] = [s for s in plan.changes if s.resource == "endpoint"]
    assert endpoint.action == "replace" and "CannotStartContainerError" in endpoint.detail
    run(plan, aws)
    assert aws.describe_endpoint(NAME)["EndpointStatus"] == "InService"  # type: ignore[index]


def test_wait_times_out_naming_the_state(aws: Aws, seeded: dict[str, str]) -> None:
    run(plan_deploy(aws, make_spec(seeded)), aws)
    set_endpoint_state(NAME, "Creating")
    now = [0.0]
    clock = Clock(now=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(DeployError, match=r"still Creating after 60 s .*koe status --name koe-test"):
        wait_for_endpoint(aws, NAME, until="InService", timeout_s=60, clock=clock,
                          console=Console(file=io.StringIO()))  # fmt: skip
    assert now[0] <= 60
    plan = plan_deploy(aws, make_spec(seeded))
    assert [(s.resource, s.action) for s in plan.changes] == [("endpoint", "wait")]


def test_missing_model_data_and_topics_are_reported_before_any_change(
    aws: Aws, seeded: dict[str, str], calls: list[str]
) -> None:
    with pytest.raises(DeployError, match=r"model data s3://koe-test-bucket/nope\.tar\.gz does not exist"):
        plan_deploy(aws, make_spec(seeded, model=f"s3://{BUCKET}/nope.tar.gz"))
    missing_topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:gone"
    with pytest.raises(DeployError, match=r"SNS topic .*:gone does not exist"):
        plan_deploy(aws, make_spec(seeded, success_topic=missing_topic))
    assert mutating(calls) == []


# ---- packaging ----------------------------------------------------------------------------------------------


def test_packaged_model_is_built_once_and_uploaded(aws: Aws, raw: Raw, seeded: dict[str, str], cache_dir: Path) -> None:
    spec = make_spec(seeded, model="tiny.en")
    plan = plan_deploy(aws, spec)
    [data] = [s for s in plan.steps if s.resource == "model data"]
    url = spec.model_data_url
    assert url is not None and url.startswith(f"s3://{BUCKET}/koe/{NAME}/model/tiny.en-")
    assert data.action == "create" and data.instructions == (PackageModel("tiny.en", url),)
    execute(plan, aws, console=Console(file=io.StringIO()), cache_dir=cache_dir, backoff=FAST)

    key = url.removeprefix(f"s3://{BUCKET}/")
    body = raw("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = set(tar.getnames())
    assert {"model.bin", "config.json", "code/inference.py", "code/requirements.txt"} <= members
    model = raw("sagemaker").describe_model(ModelName=spec.model_name)
    assert model["PrimaryContainer"]["ModelDataUrl"] == spec.model_data_url
    [again] = [s for s in plan_deploy(aws, spec).steps if s.resource == "model data"]
    assert again.action == "no-op"


def test_destroy_dry_run_and_data_without_endpoint(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    run(plan_deploy(aws, make_spec(seeded)), aws)
    raw("s3").put_object(Bucket=BUCKET, Key=f"koe/{NAME}/output/x.out", Body=b"x")
    dry = cli("destroy", "--name", NAME, "--delete-data", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "delete_endpoint(" in dry.stderr and "delete_prefix(" in dry.stderr
    assert deployed(raw)["endpoints"] == [NAME]

    run(plan_destroy(aws, NAME), aws)  # without --delete-data the data stays
    assert raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/")["KeyCount"] == 1
    with pytest.raises(DeployError, match="pass --bucket and --prefix"):
        plan_destroy(aws, NAME, delete_data=True)
    plan = plan_destroy(aws, NAME, delete_data=True, bucket=BUCKET)
    assert [(s.resource, s.action) for s in plan.changes] == [("s3 data", "delete")]
    run(plan, aws)
    assert raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/")["KeyCount"] == 0


def test_plan_calls_name_real_wrapper_methods(aws: Aws, seeded: dict[str, str]) -> None:
    """Every Call in a plan names a method of Aws (the executor looks them up by name)."""
    for plan in (plan_deploy(aws, make_spec(seeded)), plan_destroy(aws, NAME)):
        for step in plan.steps:
            for instruction in step.instructions:
                if isinstance(instruction, Call):
                    assert callable(getattr(aws, instruction.method)), instruction.method


def test_baked_model_has_no_model_data(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    spec = make_spec(seeded, model="image", image_uri=IMAGE.replace("latest", "large-v3-turbo"))
    plan = plan_deploy(aws, spec)
    [data] = [s for s in plan.steps if s.resource == "model data"]
    assert (data.action, data.detail) == ("no-op", "baked into the image")
    run(plan, aws)
    container = raw("sagemaker").describe_model(ModelName=spec.model_name)["PrimaryContainer"]
    assert "ModelDataUrl" not in container
    # the image finds its model
    assert container["Environment"] == {"KOE_DEVICE": "cuda", "KOE_BATCH_SIZE": "8", "KOE_MAX_DURATION_S": "14400"}
