"""Day-to-day settings and commands: sizing from numbers and the plan's cost lines, --min-instances, scheduled
warm hours, `koe wake`, `koe logs`, the health alarms and the inputs' lifecycle rule; against the moto server
(moto_aws.py) through the real boto3, plus the pure parts without AWS."""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from koe.cli import app
from koe.deploy.autoscaling import ScalingNames, WarmHours
from koe.deploy.aws import Aws
from koe.deploy.operate import log_lines, wake
from koe.deploy.plan import execute, lifecycle_rule_id, plan_deploy, plan_destroy
from koe.deploy.sizing import cost_notes, derive, parse_duration
from koe.deploy.wait import Backoff, Clock
from koe.errors import DeployError, OptionsError
from support import deploy_world, moto_aws
from support.deploy_world import seed
from support.moto_aws import Raw
from test_deploy import BUCKET, NAME, RID, deploy_args, deployed, make_spec

aws, aws_env, moto_url, raw = moto_aws.aws, moto_aws.aws_env, moto_aws.moto_url, moto_aws.raw  # fixtures
wide_console = deploy_world.wide_console  # autouse: rich tables on one line each, searchable
FAST = Backoff(first=0.01, cap=0.02)
NAMES = ScalingNames(NAME, "AllTraffic")


@pytest.fixture
def seeded(raw: Raw) -> dict[str, str]:
    return seed(raw, BUCKET, {name: f"koe-{name}" for name in ("success", "error", "alarms")})


def run(plan: Any, aws: Aws) -> None:
    execute(plan, aws, console=Console(file=io.StringIO()), backoff=FAST)


# ---- numbers ------------------------------------------------------------------------------------------------


def test_durations() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "10m", "1h30m", "2h", "1.5h")] == [90, 90, 600, 5400, 7200, 5400]
    for bad in ("", "ten minutes", "5d", "m"):
        with pytest.raises(OptionsError):
            parse_duration(bad)


def test_sizing_from_throughput_and_wait_goal() -> None:
    # 40x real time, 10 min files (15 s each on one instance), wait goal 10 min: 40 files queued per instance.
    sized = derive(speed=40, max_wait_s=600, typical_audio_s=600, batch_size=16)
    assert (sized.max_concurrent, sized.target_backlog) == (2, 40.0)  # 20 chunks per file already fill a batch
    # Short clips: 30 s files give one chunk each, so 16 in flight fill a batch of 16.
    assert derive(speed=40, max_wait_s=600, typical_audio_s=30, batch_size=16).max_concurrent == 16
    # A slow CPU instance (2x) and long files: the backlog target never drops below one request.
    assert derive(speed=2, max_wait_s=300, typical_audio_s=3600, batch_size=8).target_backlog == 1.0
    with pytest.raises(OptionsError):
        derive(speed=0, max_wait_s=600, typical_audio_s=600, batch_size=16)


def test_cost_lines() -> None:
    lines = cost_notes(instance_type="ml.g4dn.xlarge", speed=40, cold_start_s=600)
    assert "$0.7364/h" in lines[0] and "cold start 10 min (given) = $0.12" in lines[0]
    assert "idle tail before scale-in ~15 min = $0.18" in lines[0]
    # 1 audio hour at 40x = 1.5 min of work; 10 + 1.5 + 15 min at $0.7364/h = $0.33; $0.018 per audio hour.
    assert "$0.018 per audio hour" in lines[1] and "= $0.33" in lines[1]
    assert cost_notes(instance_type="ml.g4dn.xlarge", speed=None, price_override=1.0)[1].startswith(
        "cost: pass --throughput"
    )
    assert "no price" in cost_notes(instance_type="ml.g6e.12xlarge", speed=40)[0]
    assert "45 h/week = $33.14/week" in cost_notes(instance_type="ml.g4dn.xlarge", speed=40, warm_hours_per_week=45)[2]
    floor = cost_notes(instance_type="ml.c5.xlarge", speed=2, min_instances=1, warm_hours_per_week=45)
    assert "$4.90/day" in floor[2] and "45 h/week = $9.18/week" in floor[3]


def test_warm_hours() -> None:
    warm = WarmHours.parse("Mon-Fri 09:00-18:00", "Asia/Tokyo")
    assert warm.cron(warm.start) == "cron(0 9 ? * MON-FRI *)" and warm.cron(warm.end) == "cron(0 18 ? * MON-FRI *)"
    assert warm.hours_per_week == 45
    assert WarmHours.parse("08:30-12:00").days == "*" and WarmHours.parse("Sat,Sun 10:00-11:00").hours_per_week == 2
    for bad, message in (("9-5", "not like"), ("Mon-Fri 18:00-09:00", "start first"), ("Moon 09:00-10:00", "days")):
        with pytest.raises(OptionsError, match=message):
            WarmHours.parse(bad)
    with pytest.raises(OptionsError, match="time zone"):
        WarmHours.parse("09:00-10:00", "Mars/Olympus")


def test_dry_run_shows_the_derived_settings_and_costs(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    result = CliRunner().invoke(app, [*deploy_args(seeded), "--throughput", "40", "--max-wait", "10m", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert (
        "MaxConcurrentInvocationsPerInstance 2" in result.stderr and "target backlog 40 per instance" in result.stderr
    )
    assert "InvocationTimeoutSeconds 3600 s" in result.stderr and "audio up to 14400 s (4.0 h" in result.stderr
    assert "$0.7364/h" in result.stderr and "per audio hour" in result.stderr

    applied = CliRunner().invoke(app, [*deploy_args(seeded), "--throughput", "40", "--max-wait", "10m"])
    assert applied.exit_code == 0, applied.output
    sized = make_spec(seeded, max_concurrent_invocations=2)
    config = raw("sagemaker").describe_endpoint_config(EndpointConfigName=sized.config_name)
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 2}
    tracking = deployed(raw)["policies"][NAMES.tracking_policy]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 40.0


# ---- warm floor, warm hours, alarms, lifecycle: deploy, change, destroy --------------------------------------


def test_warm_hours_alarms_and_lifecycle_round_trip(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    s3 = raw("s3")
    other_rule = {"ID": "someone-elses", "Filter": {"Prefix": "logs/"}, "Status": "Enabled", "Expiration": {"Days": 90}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [other_rule]})
    spec = make_spec(seeded, min_instances=1, max_instances=3, warm_hours="Mon-Fri 09:00-18:00", timezone="Asia/Tokyo",
                     warm_instances=2, alarm_topic=seeded["alarms"], expire_inputs_days=7)  # fmt: skip
    run(plan_deploy(aws, spec), aws)
    assert plan_deploy(aws, spec).changes == ()

    state = deployed(raw)
    [target] = state["targets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)  # the warm floor
    actions = {a["ScheduledActionName"]: a for a in raw("application-autoscaling").describe_scheduled_actions(
        ServiceNamespace="sagemaker", ResourceId=RID)["ScheduledActions"]}  # fmt: skip
    start, end = actions[NAMES.warm_start], actions[NAMES.warm_end]
    assert (start["Schedule"], start["Timezone"]) == ("cron(0 9 ? * MON-FRI *)", "Asia/Tokyo")
    assert start["ScalableTargetAction"] == {"MinCapacity": 2, "MaxCapacity": 3}
    assert (end["Schedule"], end["ScalableTargetAction"]) == (
        "cron(0 18 ? * MON-FRI *)",
        {"MinCapacity": 1, "MaxCapacity": 3},
    )

    failures, expired, oldest = (
        state["alarms"][n] for n in (NAMES.failures_alarm, NAMES.expired_alarm, NAMES.oldest_alarm)
    )
    for alarm in (failures, expired, oldest):
        assert alarm["AlarmActions"] == [seeded["alarms"]] and alarm["OKActions"] == [seeded["alarms"]]
    assert (failures["MetricName"], failures["Statistic"], failures["Threshold"]) == ("InvocationFailures", "Sum", 0.0)
    assert {d["Name"] for d in expired["Dimensions"]} == {"EndpointName", "VariantName"}
    assert (oldest["MetricName"], oldest["Threshold"]) == ("ApproximateAgeOfOldestRequest", 600.0)

    status = CliRunner().invoke(app, ["status", "--name", NAME])
    assert status.exit_code == 0, status.output
    for text in ("cron(0 9 ? * MON-FRI *) Asia/Tokyo: 2..3 instances", NAMES.failures_alarm, NAMES.oldest_alarm):
        assert text in status.stdout, text

    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert rules["someone-elses"]["Expiration"] == {"Days": 90}  # kept
    ours = rules[lifecycle_rule_id(NAME)]
    assert (ours["Filter"], ours["Expiration"]) == ({"Prefix": f"koe/{NAME}/input/"}, {"Days": 7})

    # Dropping the options removes what they made; the floor goes back to 0.
    plain = make_spec(seeded)
    plan = plan_deploy(aws, plain)
    assert {(s.resource, s.action) for s in plan.changes} >= {
        ("scheduled action", "delete"), ("lifecycle rule", "delete"), ("scalable target", "update"),
        ("alarm", "update"),
    }  # fmt: skip
    run(plan, aws)
    assert (
        raw("application-autoscaling").describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"]
        == []
    )
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]] == ["someone-elses"]
    assert deployed(raw)["alarms"][NAMES.failures_alarm]["AlarmActions"] == []

    run(plan_deploy(aws, spec), aws)
    run(plan_destroy(aws, NAME), aws)
    state = deployed(raw)
    assert state == {"models": [], "configs": [], "endpoints": [], "targets": [], "policies": {}, "alarms": {}}
    assert (
        raw("application-autoscaling").describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"]
        == []
    )
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]] == ["someone-elses"]


# ---- koe wake -----------------------------------------------------------------------------------------------


def test_wake_starts_an_instance_and_holds_it(aws: Aws, raw: Raw, seeded: dict[str, str]) -> None:
    run(plan_deploy(aws, make_spec(seeded, max_instances=3)), aws)
    sm = raw("sagemaker")
    sm.update_endpoint_weights_and_capacities(  # scaled to zero, as autoscaling leaves it when idle
        EndpointName=NAME, DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}]
    )
    now = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)
    woken = wake(aws, NAME, instances=2, hold_s=5400, now=now)
    assert woken.started and woken.floor_was == 0 and woken.until == datetime(2026, 11, 30, 9, 30, tzinfo=timezone.utc)
    assert sm.describe_endpoint(EndpointName=NAME)["ProductionVariants"][0]["DesiredInstanceCount"] == 2
    [target] = deployed(raw)["targets"]
    assert target["MinCapacity"] == 2  # target tracking cannot scale them in while held
    [held] = raw("application-autoscaling").describe_scheduled_actions(ServiceNamespace="sagemaker")["ScheduledActions"]
    assert held["ScheduledActionName"] == NAMES.wake_until and held["Schedule"] == "at(2026-11-30T09:30:00)"
    assert held["ScalableTargetAction"] == {"MinCapacity": 0, "MaxCapacity": 3}  # back to scale-to-zero after

    again = wake(aws, NAME, instances=1, hold_s=600, now=now)  # waking again keeps the original floor
    assert not again.started and again.floor_was == 0
    result = CliRunner().invoke(app, ["wake", "--name", NAME, "--for", "30m"])
    assert result.exit_code == 0, result.output
    assert "already running: 1 instance(s), kept until" in result.stderr
    with pytest.raises(DeployError, match=r"1\.\.3"):
        wake(aws, NAME, instances=4)
    with pytest.raises(DeployError, match="does not exist"):
        wake(aws, "nope", instances=1)


# ---- koe logs -----------------------------------------------------------------------------------------------


def test_logs_prints_the_endpoint_log_group_and_follows(aws: Aws, raw: Raw) -> None:
    logs = raw("logs")
    group, stream = f"/aws/sagemaker/Endpoints/{NAME}", "AllTraffic/i-0123456789abcdef0/data-log"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
        {"timestamp": now - 2 * 3600_000, "message": "too old"},
        {"timestamp": now - 600_000, "message": "koe: host NVIDIA driver 550.163.01 is older than 570.124.06"},
        {"timestamp": now - 300_000, "message": "loaded large-v3-turbo in 41.2s"},
    ])  # fmt: skip
    result = CliRunner().invoke(app, ["logs", "--name", NAME, "--since", "1h"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and "i-0123456789abcdef0" in lines[0]
    assert lines[0].endswith("older than 570.124.06") and lines[1].endswith("loaded large-v3-turbo in 41.2s")

    # --follow: new events appear on the next poll, and none twice.
    rounds = iter([False, True])

    def sleep(_: float) -> None:
        event = {"timestamp": int(time.time() * 1000), "message": "POST /invocations 200"}
        logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[event])

    followed = list(
        log_lines(aws, NAME, since_s=3600, follow=True, clock=Clock(sleep=sleep), stop=lambda: next(rounds))
    )
    assert len(followed) == 3 and followed[:2] == lines and followed[2].endswith("POST /invocations 200")

    empty = CliRunner().invoke(app, ["logs", "--name", "other"])
    assert empty.exit_code == 0 and "no events in /aws/sagemaker/Endpoints/other" in empty.stderr
