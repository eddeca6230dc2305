"""Plan, then execute: how `koe deploy` and `koe destroy` change AWS.

    DeploySpec ──plan_deploy(aws, spec)──▶ Plan ──koe.cli.plans──▶ table (--dry-run stops here)
                 (describe/list/head only)   │
                                             └──execute(plan, aws)──▶ the mutating calls, step by step

A `Plan` is data: `Step`s (one resource each: create | update | replace | delete | wait | no-op) holding
frozen instructions: `Call` (a method of `Aws` with its arguments; `store` keeps the result for a later
`Var`), `PackageModel` and `WaitForEndpoint`. Planning reads the current state, so re-running with the same
spec is a plan of no-ops, and a run that failed midway is completed by running it again: whatever was done
is found and skipped. The same holds for `plan_destroy`, which reports what it found absent.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from koe.deploy.autoscaling import (
    STEP,
    TRACKING,
    ScalingNames,
    health_alarms,
    tracking_configuration,
    wake_alarm,
    wake_configuration,
    warm_actions,
)
from koe.deploy.aws import Aws
from koe.deploy.spec import (
    ASSUMED_SPEED,
    DeploySpec,
    instance_family,
    mapping_matches,
    owned_names,
    split_s3_root,
)
from koe.deploy.wait import Backoff, Clock, Until, wait_for_endpoint
from koe.errors import AwsError, DeployError, KoeError

if TYPE_CHECKING:
    from rich.console import Console

Action = Literal["create", "update", "replace", "delete", "wait", "no-op"]

TRANSITIONAL = frozenset({"Creating", "Updating", "SystemUpdating", "RollingBack"})


# ---- instructions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Var:
    """The result of an earlier `Call` with `store=name`, filled in at execution."""

    name: str


@dataclass(frozen=True)
class Call:
    """Call `Aws.<method>(**params)`."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    store: str | None = None


@dataclass(frozen=True)
class PackageModel:
    """Build model.tar.gz from `model` with koe.deploy.package and upload it to `url`."""

    model: str
    url: str


@dataclass(frozen=True)
class WaitForEndpoint:
    """Wait for the endpoint's state; with `config`, InService counts only on that endpoint config."""

    name: str
    until: Until
    timeout_s: float
    config: str | None = None


@dataclass(frozen=True)
class RequireConfig:
    """Stop unless endpoint `name` runs endpoint config `config` (guards the sweep of old configs/models)."""

    name: str
    config: str


Instruction = Call | PackageModel | WaitForEndpoint | RequireConfig


@dataclass(frozen=True)
class Step:
    """One resource's change. `undo` runs when this step or a later one fails, to put back what this step
    took away (autoscaling taken down for an instance-type change is registered again)."""

    resource: str
    name: str
    action: Action
    detail: str = ""
    instructions: tuple[Instruction, ...] = ()
    undo: tuple[Instruction, ...] = ()


@dataclass(frozen=True)
class Plan:
    """`notes`: lines shown under the table (limits, expected cost); they change nothing."""

    title: str
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()

    @property
    def changes(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action != "no-op")

    @property
    def calls(self) -> tuple[Instruction, ...]:
        return tuple(i for s in self.changes for i in s.instructions)


# ---- deploy ------------------------------------------------------------------------------------------------


def plan_deploy(aws: Aws, spec: DeploySpec, *, wait_timeout_s: float = 1800) -> Plan:
    """Compare `spec` with what exists (read-only calls) and list the steps that make them equal."""
    steps: list[Step] = []
    steps.append(_bucket_step(aws, spec))
    steps.append(_lifecycle_step(aws, spec))
    _check_topics(aws, spec)
    steps.append(_model_data_step(aws, spec))
    steps.append(_model_step(aws, spec))
    steps.append(_config_step(aws, spec))
    current = aws.describe_endpoint(spec.name)
    endpoint = _endpoint_step(spec, current, wait_timeout_s)
    teardown, scaling = _scaling_steps(aws, spec, retype=_changes_instance_type(aws, spec, current, endpoint))
    if teardown is not None:
        steps.append(teardown)
    steps.append(endpoint)
    steps.extend(scaling)
    steps.extend(_sweep_steps(aws, spec))
    return Plan(f"deploy {spec.name}", tuple(steps), limits_notes(spec))


def limits_notes(spec: DeploySpec) -> tuple[str, ...]:
    speed = f"{spec.throughput:g}x real time (--throughput)" if spec.throughput else (
        f"{ASSUMED_SPEED[instance_family(spec.instance_type)]:g}x real time (assumed; pass --throughput)"
    )  # fmt: skip
    return (
        f"limits: InvocationTimeoutSeconds {spec.invocation_timeout_s} s (koe invoke sends it; AWS's default is "
        f"900 s); the container accepts audio up to {spec.max_audio_s} s ({spec.max_audio_s / 3600:.1f} h: "
        f"what one instance finishes in that time at {speed})",
    )


def _bucket_step(aws: Aws, spec: DeploySpec) -> Step:
    if aws.bucket_exists(spec.bucket):
        return Step("s3 bucket", spec.bucket, "no-op", "exists")
    return Step("s3 bucket", spec.bucket, "create", aws.region, (Call("create_bucket", {"bucket": spec.bucket}),))


def _check_topics(aws: Aws, spec: DeploySpec) -> None:
    for topic in (spec.success_topic, spec.error_topic, spec.alarm_topic):
        if topic and not aws.topic_exists(topic):
            raise DeployError(f"SNS topic {topic} does not exist (create it, or leave the option out)")


def _model_data_step(aws: Aws, spec: DeploySpec) -> Step:
    url = spec.model_data_url
    if url is None:
        return Step("model data", "-", "no-op", "baked into the image")
    if not spec.packaged:
        if not aws.object_exists(url):
            raise DeployError(f"model data {url} does not exist")
        return Step("model data", url, "no-op", "given")
    if aws.bucket_exists(spec.bucket) and aws.object_exists(url):
        return Step("model data", url, "no-op", f"{spec.model} uploaded before")
    return Step("model data", url, "create", f"package {spec.model} and upload", (PackageModel(spec.model, url),))


def _model_step(aws: Aws, spec: DeploySpec) -> Step:
    name = spec.model_name
    if aws.describe_model(name) is not None:
        return Step("model", name, "no-op", "exists")
    params = {
        "name": name, "image_uri": spec.image_uri, "model_data_url": spec.model_data_url,
        "environment": spec.model_environment(), "role_arn": spec.role_arn, "tags": spec.tags,
    }  # fmt: skip
    return Step("model", name, "create", spec.image_uri, (Call("create_model", params),))


def _config_step(aws: Aws, spec: DeploySpec) -> Step:
    name = spec.config_name
    if aws.describe_endpoint_config(name) is not None:
        return Step("endpoint config", name, "no-op", "exists")
    params = {"name": name, "variants": [spec.variant_config()], "async_config": spec.async_config(),
              "tags": spec.tags, "volume_kms_key": spec.volume_kms_key}  # fmt: skip
    host = f"{spec.instance_type}, {spec.ami_version}" if spec.gpu else f"{spec.instance_type} (CPU)"
    detail = f"{host}, {spec.max_concurrent_invocations} per instance"
    return Step("endpoint config", name, "create", detail, (Call("create_endpoint_config", params),))


def _endpoint_step(spec: DeploySpec, current: Mapping[str, Any] | None, timeout_s: float) -> Step:
    name, config = spec.name, spec.config_name
    in_service = WaitForEndpoint(name, "InService", timeout_s, config)
    create = Call("create_endpoint", {"name": name, "config_name": config, "tags": spec.tags})
    if current is None:
        return Step("endpoint", name, "create", f"config {config}", (create, in_service))
    status = str(current.get("EndpointStatus"))
    if status == "Deleting":
        raise DeployError(f"endpoint {name} is being deleted; run deploy again once it is gone")
    if status == "Failed":
        reason = current.get("FailureReason") or "no reason given"
        steps = (
            Call("delete_endpoint", {"name": name}),
            WaitForEndpoint(name, "deleted", timeout_s),
            create,
            in_service,
        )
        return Step("endpoint", name, "replace", f"it is Failed ({reason})", steps)
    if current.get("EndpointConfigName") != config:
        steady = WaitForEndpoint(name, "steady", timeout_s)
        update = Call("update_endpoint", {"name": name, "config_name": config})
        detail = f"{current.get('EndpointConfigName')} -> {config}"
        if current.get("FailureReason"):  # an earlier update of it was rolled back
            detail += f" (last update failed: {current['FailureReason']})"
        return Step("endpoint", name, "update", detail, (steady, update, in_service))
    if status in TRANSITIONAL:
        return Step("endpoint", name, "wait", f"it is {status}", (in_service,))
    if status != "InService":
        raise DeployError(f"endpoint {name} is {status}; see `koe status --name {name}` (or destroy and deploy again)")
    return Step("endpoint", name, "no-op", "InService")


def _changes_instance_type(aws: Aws, spec: DeploySpec, current: Mapping[str, Any] | None, endpoint: Step) -> bool:
    """Whether the endpoint update moves the variant to another instance type (or another variant name)."""
    if current is None or endpoint.action != "update":
        return False
    config = aws.describe_endpoint_config(str(current.get("EndpointConfigName")))
    variants = (config or {}).get("ProductionVariants") or []
    same = (spec.variant, spec.instance_type)
    return not any((v.get("VariantName"), v.get("InstanceType")) == same for v in variants)


def _scaling_steps(aws: Aws, spec: DeploySpec, *, retype: bool) -> tuple[Step | None, list[Step]]:
    """Autoscaling is changed in place (RegisterScalableTarget and PutScalingPolicy update what exists), so an
    endpoint update never leaves the variant unscaled. The one exception is AWS's: UpdateEndpoint fails for a
    variant registered with Application Auto Scaling when the update changes its instance type, so only then
    is it taken down before the update, and the step's `undo` registers it again as it was if anything after
    fails (at zero instances nothing else would ever wake the endpoint, and running instances would bill)."""
    names = ScalingNames(spec.name, spec.variant)
    rid = names.resource_id
    target = aws.describe_scalable_target(rid)
    policies = {p["PolicyName"]: p for p in aws.describe_scaling_policies(rid)}
    ours = [n for n in (names.tracking_policy, names.wake_policy) if n in policies]
    teardown = None
    if retype and (target is not None or ours):
        # Deregistering deletes the policies and scheduled actions on AWS; koe's are deleted explicitly first so
        # that no emulator keeps them, and put back by `_restore` if the update fails.
        scheduled = [a for a in aws.describe_scheduled_actions(rid) if a["ScheduledActionName"] in names.schedules]
        calls: list[Instruction] = [Call("delete_scaling_policy", {"name": n, "resource_id": rid}) for n in ours]
        calls += [Call("delete_scheduled_action", {"name": a["ScheduledActionName"], "resource_id": rid})
                  for a in scheduled]  # fmt: skip
        if target is not None:
            calls.append(Call("deregister_scalable_target", {"resource_id": rid}))
        teardown = Step("autoscaling", rid, "delete", "the instance type changes: registered again after",
                        tuple(calls), _restore(names, target, policies, scheduled))  # fmt: skip
        target, policies = None, {}

    steps = [_target_step(spec, rid, target)]
    tracking = tracking_configuration(spec.name, spec.target_backlog_per_instance)
    detail = f"target tracking: {spec.target_backlog_per_instance:g} queued per instance"
    steps.append(_policy_step(names.tracking_policy, rid, TRACKING, tracking, policies, detail, None))
    wake = _policy_step(names.wake_policy, rid, STEP, wake_configuration(), policies, "step, wake from 0", "wake")
    steps.append(wake)
    policy_arn: Any = Var("wake") if wake.action != "no-op" else policies[names.wake_policy]["PolicyARN"]
    steps.append(_alarm_step(aws, names, policy_arn))
    steps.extend(_schedule_steps(aws, spec, names, registered=target is not None))
    steps.extend(_health_alarm_steps(aws, spec, names))
    return teardown, steps


def _schedule_steps(aws: Aws, spec: DeploySpec, names: ScalingNames, *, registered: bool) -> list[Step]:
    """The warm-hours scheduled actions: created, updated in place, or deleted when --warm-hours is dropped."""
    rid = names.resource_id
    current = {a["ScheduledActionName"]: a for a in aws.describe_scheduled_actions(rid)} if registered else {}
    warm = spec.warm
    desired = (
        warm_actions(names, warm, warm_floor=max(spec.warm_instances, spec.min_instances), floor=spec.min_instances,
                     ceiling=spec.max_instances) if warm else []
    )  # fmt: skip
    steps = []
    for action in desired:
        found = current.pop(action["name"], None)
        detail = f"{action['schedule']} {action['timezone']}: at least {action['min_capacity']} instance(s)"
        put = (Call("put_scheduled_action", action),)
        if found is None:
            steps.append(Step("scheduled action", action["name"], "create", detail, put))
        elif (found.get("Schedule"), found.get("Timezone") or "UTC", found.get("ScalableTargetAction")) != (
            action["schedule"], action["timezone"],
            {"MinCapacity": action["min_capacity"], "MaxCapacity": action["max_capacity"]},
        ):  # fmt: skip
            steps.append(Step("scheduled action", action["name"], "update", detail, put))
        else:
            steps.append(Step("scheduled action", action["name"], "no-op", detail))
    for name in (names.warm_start, names.warm_end):
        if name in current:
            call = Call("delete_scheduled_action", {"name": name, "resource_id": rid})
            steps.append(Step("scheduled action", name, "delete", "no --warm-hours", (call,)))
    return steps


def _health_alarm_steps(aws: Aws, spec: DeploySpec, names: ScalingNames) -> list[Step]:
    steps = []
    for alarm in health_alarms(names, topic=spec.alarm_topic, oldest_s=spec.oldest_request_alarm_s):
        detail = f"{alarm['MetricName']} > {alarm['Threshold']:g}" + (
            f" -> {spec.alarm_topic.rsplit(':', 1)[-1]}" if spec.alarm_topic else " (no --alarm-topic)"
        )
        put = (Call("put_metric_alarm", {"alarm": alarm}),)
        current = aws.describe_alarm(alarm["AlarmName"])
        if current is None:
            steps.append(Step("alarm", alarm["AlarmName"], "create", detail, put))
        elif not mapping_matches(alarm, current):
            steps.append(Step("alarm", alarm["AlarmName"], "update", detail, put))
        else:
            steps.append(Step("alarm", alarm["AlarmName"], "no-op", detail))
    return steps


def lifecycle_rule_id(name: str) -> str:
    return f"koe-{name}-expire-inputs"


def _lifecycle_step(aws: Aws, spec: DeploySpec) -> Step:
    """An S3 lifecycle rule expiring `<prefix>/input/` after N days; the bucket's other rules are kept."""
    rule_id = lifecycle_rule_id(spec.name)
    rules = aws.lifecycle_rules(spec.bucket) if aws.bucket_exists(spec.bucket) else []
    others = [r for r in rules if r.get("ID") != rule_id]
    ours = next((r for r in rules if r.get("ID") == rule_id), None)
    if spec.expire_inputs_days is None:
        if ours is None:
            return Step("lifecycle rule", rule_id, "no-op", "inputs kept (no --expire-inputs-after)")
        call = Call("put_lifecycle_rules", {"bucket": spec.bucket, "rules": others})
        return Step("lifecycle rule", rule_id, "delete", "no --expire-inputs-after", (call,))
    desired = {"ID": rule_id, "Filter": {"Prefix": f"{spec.prefix}/input/"}, "Status": "Enabled",
               "Expiration": {"Days": spec.expire_inputs_days}}  # fmt: skip
    detail = f"delete s3://{spec.bucket}/{spec.prefix}/input/* after {spec.expire_inputs_days} days"
    call = Call("put_lifecycle_rules", {"bucket": spec.bucket, "rules": [*others, desired]})
    if ours is None:
        return Step("lifecycle rule", rule_id, "create", detail, (call,))
    if not mapping_matches(desired, ours):
        return Step("lifecycle rule", rule_id, "update", detail, (call,))
    return Step("lifecycle rule", rule_id, "no-op", detail)


def _restore(
    names: ScalingNames,
    target: Mapping[str, Any] | None,
    policies: Mapping[str, Mapping[str, Any]],
    scheduled: list[dict[str, Any]],
) -> tuple[Instruction, ...]:
    """The calls that put back the scalable target and koe's policies as they are now (and point the wake
    alarm at the wake policy again, whose ARN may change when it is created anew)."""
    rid = names.resource_id
    calls: list[Instruction] = []
    if target is not None:
        bounds = {"min_capacity": int(target["MinCapacity"]), "max_capacity": int(target["MaxCapacity"])}
        calls.append(Call("register_scalable_target", {"resource_id": rid, **bounds}))
    for name in (names.tracking_policy, names.wake_policy):
        policy = policies.get(name)
        if policy is None:
            continue
        kind = str(policy["PolicyType"])
        key = "TargetTrackingScalingPolicyConfiguration" if kind == TRACKING else "StepScalingPolicyConfiguration"
        store = "restored-wake" if name == names.wake_policy else None
        params = {"name": name, "resource_id": rid, "policy_type": kind, "configuration": dict(policy[key])}
        calls.append(Call("put_scaling_policy", params, store=store))
    if names.wake_policy in policies:
        calls.append(Call("put_metric_alarm", {"alarm": wake_alarm(names, Var("restored-wake"))}))
    for action in scheduled:
        capacity = action.get("ScalableTargetAction") or {}
        calls.append(Call("put_scheduled_action", {
            "name": action["ScheduledActionName"], "resource_id": rid, "schedule": action["Schedule"],
            "timezone": action.get("Timezone") or "UTC", "min_capacity": int(capacity["MinCapacity"]),
            "max_capacity": int(capacity["MaxCapacity"]),
        }))  # fmt: skip
    return tuple(calls)


def _target_step(spec: DeploySpec, rid: str, target: Mapping[str, Any] | None) -> Step:
    params = {"resource_id": rid, "min_capacity": spec.min_instances, "max_capacity": spec.max_instances}
    detail = f"{spec.min_instances}..{spec.max_instances} instances"
    register = (Call("register_scalable_target", params),)
    if target is None:
        return Step("scalable target", rid, "create", detail, register)
    if target.get("MinCapacity") != spec.min_instances or target.get("MaxCapacity") != spec.max_instances:
        now = f"{target.get('MinCapacity')}..{target.get('MaxCapacity')}"
        return Step("scalable target", rid, "update", f"{now} -> {detail}", register)
    return Step("scalable target", rid, "no-op", detail)


def _policy_step(
    name: str,
    rid: str,
    policy_type: str,
    configuration: dict[str, Any],
    policies: Mapping[str, Mapping[str, Any]],
    detail: str,
    store: str | None,
) -> Step:
    key = "TargetTrackingScalingPolicyConfiguration" if policy_type == TRACKING else "StepScalingPolicyConfiguration"
    put = (Call("put_scaling_policy", {"name": name, "resource_id": rid, "policy_type": policy_type,
                                       "configuration": configuration}, store=store),)  # fmt: skip
    current = policies.get(name)
    if current is None:
        return Step("scaling policy", name, "create", detail, put)
    if current.get("PolicyType") != policy_type or not mapping_matches(configuration, current.get(key)):
        return Step("scaling policy", name, "update", detail, put)
    return Step("scaling policy", name, "no-op", detail)


def _alarm_step(aws: Aws, names: ScalingNames, policy_arn: Any) -> Step:
    desired = wake_alarm(names, policy_arn)
    put = (Call("put_metric_alarm", {"alarm": desired}),)
    detail = "HasBacklogWithoutCapacity >= 1 for 1 min -> wake policy"
    current = aws.describe_alarm(names.wake_alarm)
    if current is None:
        return Step("alarm", names.wake_alarm, "create", detail, put)
    if isinstance(policy_arn, Var) or not mapping_matches(desired, current):
        return Step("alarm", names.wake_alarm, "update", detail, put)
    return Step("alarm", names.wake_alarm, "no-op", detail)


def _sweep_steps(aws: Aws, spec: DeploySpec) -> list[Step]:
    """Endpoint configs and models of earlier deploys, deleted once the endpoint runs on the new ones."""
    configs = [c for c in owned_names(spec.name, aws.list_endpoint_config_names(spec.name)) if c != spec.config_name]
    models = [m for m in owned_names(spec.name, aws.list_model_names(spec.name)) if m != spec.model_name]
    # Checked again at execution: if the endpoint does not run the new config (a rolled-back update), nothing goes.
    guard = RequireConfig(spec.name, spec.config_name)
    steps = [
        Step("old endpoint config", c, "delete", "replaced", (guard, Call("delete_endpoint_config", {"name": c})))
        for c in configs
    ]
    steps += [Step("old model", m, "delete", "replaced", (guard, Call("delete_model", {"name": m}))) for m in models]
    return steps


# ---- destroy -----------------------------------------------------------------------------------------------


def plan_destroy(
    aws: Aws,
    name: str,
    *,
    delete_data: bool = False,
    bucket: str | None = None,
    prefix: str | None = None,
    wait_timeout_s: float = 1800,
) -> Plan:
    """Everything `koe deploy` made for `name`, in reverse order; what is already gone is a no-op step."""
    endpoint = aws.describe_endpoint(name)
    variants = [v["VariantName"] for v in (endpoint or {}).get("ProductionVariants", [])] or ["AllTraffic"]
    steps: list[Step] = []
    data_root = _data_root(aws, name, endpoint, bucket, prefix) if delete_data else None
    for variant in variants:
        steps.extend(_scaling_teardown(aws, ScalingNames(name, variant)))
    if endpoint is None:
        steps.append(Step("endpoint", name, "no-op", "absent"))
    else:
        calls: tuple[Instruction, ...] = (WaitForEndpoint(name, "deleted", wait_timeout_s),)
        if endpoint.get("EndpointStatus") != "Deleting":
            calls = (Call("delete_endpoint", {"name": name}), *calls)
        steps.append(Step("endpoint", name, "delete", str(endpoint.get("EndpointStatus")), calls))
    configs = owned_names(name, aws.list_endpoint_config_names(name))
    models = owned_names(name, aws.list_model_names(name))
    steps += [Step("endpoint config", c, "delete", "", (Call("delete_endpoint_config", {"name": c}),))
              for c in configs] or [Step("endpoint config", f"{name}-*", "no-op", "absent")]  # fmt: skip
    steps += [Step("model", m, "delete", "", (Call("delete_model", {"name": m}),)) for m in models] or [
        Step("model", f"{name}-*", "no-op", "absent")
    ]
    steps.extend(_lifecycle_teardown(aws, name, bucket or _bucket_of(aws, endpoint)))
    if data_root is not None:
        data_bucket, data_prefix = data_root
        keys = aws.list_keys(data_bucket, data_prefix + "/") if aws.bucket_exists(data_bucket) else []
        url = f"s3://{data_bucket}/{data_prefix}/"
        if keys:
            call = Call("delete_prefix", {"bucket": data_bucket, "prefix": data_prefix})
            steps.append(Step("s3 data", url, "delete", f"{len(keys)} objects", (call,)))
        else:
            steps.append(Step("s3 data", url, "no-op", "empty"))
    return Plan(f"destroy {name}", tuple(steps))


def _scaling_teardown(aws: Aws, names: ScalingNames) -> list[Step]:
    rid = names.resource_id
    steps = []
    for alarm in (names.wake_alarm, names.failures_alarm, names.expired_alarm, names.oldest_alarm):
        if aws.describe_alarm(alarm) is not None:
            steps.append(Step("alarm", alarm, "delete", "", (Call("delete_alarm", {"name": alarm}),)))
        elif alarm == names.wake_alarm:
            steps.append(Step("alarm", alarm, "no-op", "absent"))
    scheduled = {a["ScheduledActionName"] for a in aws.describe_scheduled_actions(rid)}
    for action in (names.warm_start, names.warm_end, names.wake_until):
        if action in scheduled:  # deregistering deletes them on AWS; explicitly, so that no emulator keeps them
            call = Call("delete_scheduled_action", {"name": action, "resource_id": rid})
            steps.append(Step("scheduled action", action, "delete", "", (call,)))
    present = {p["PolicyName"] for p in aws.describe_scaling_policies(rid)}
    for policy in (names.wake_policy, names.tracking_policy):
        if policy in present:
            call = Call("delete_scaling_policy", {"name": policy, "resource_id": rid})
            steps.append(Step("scaling policy", policy, "delete", "", (call,)))
        else:
            steps.append(Step("scaling policy", policy, "no-op", "absent"))
    if aws.describe_scalable_target(rid) is not None:
        call = Call("deregister_scalable_target", {"resource_id": rid})
        steps.append(Step("scalable target", rid, "delete", "", (call,)))
    else:
        steps.append(Step("scalable target", rid, "no-op", "absent"))
    return steps


def _bucket_of(aws: Aws, endpoint: Mapping[str, Any] | None) -> str | None:
    config_name = (endpoint or {}).get("EndpointConfigName")
    config = aws.describe_endpoint_config(config_name) if config_name else None
    output = ((config or {}).get("AsyncInferenceConfig") or {}).get("OutputConfig", {}).get("S3OutputPath")
    return split_s3_root(output)[0] if output else None


def _lifecycle_teardown(aws: Aws, name: str, bucket: str | None) -> list[Step]:
    if bucket is None or not aws.bucket_exists(bucket):
        return []
    rules = aws.lifecycle_rules(bucket)
    others = [r for r in rules if r.get("ID") != lifecycle_rule_id(name)]
    if len(others) == len(rules):
        return []
    call = Call("put_lifecycle_rules", {"bucket": bucket, "rules": others})
    return [Step("lifecycle rule", lifecycle_rule_id(name), "delete", f"in {bucket}", (call,))]


def _data_root(
    aws: Aws, name: str, endpoint: Mapping[str, Any] | None, bucket: str | None, prefix: str | None
) -> tuple[str, str]:
    if bucket:
        return bucket, (prefix or f"koe/{name}").strip("/")
    config_name = (endpoint or {}).get("EndpointConfigName")
    config = aws.describe_endpoint_config(config_name) if config_name else None
    output = ((config or {}).get("AsyncInferenceConfig") or {}).get("OutputConfig", {}).get("S3OutputPath")
    if not output:
        raise DeployError(f"cannot tell where {name}'s data is (the endpoint is gone): pass --bucket and --prefix")
    found_bucket, found_prefix = split_s3_root(output)
    if not found_prefix:
        raise DeployError(f"{name}'s output path {output} has no prefix; refusing to delete a whole bucket")
    return found_bucket, (prefix or found_prefix).strip("/")


# ---- execution ---------------------------------------------------------------------------------------------

Outcome = Literal["done", "restored"]
Reporter = Callable[[Step, Outcome], None]
"""Told of each step done (and each one restored after a failure); the CLI prints them (koe.cli.plans)."""


Packager = Callable[[str, Path, Path], Path]


def execute(
    plan: Plan,
    aws: Aws,
    *,
    report: Reporter | None = None,
    console: Console | None = None,
    cache_dir: Path | None = None,
    packager: Packager | None = None,
    backoff: Backoff = Backoff(),
    clock: Clock | None = None,
) -> None:
    """Run the plan's changes in order, calling `report` after each step. Stops at the first error, naming the
    step; running `plan_deploy` + `execute` again picks up from there. `console` is only where the wait for
    the endpoint shows its spinner."""
    report = report or _silent
    results: dict[str, Any] = {}
    undo: list[tuple[Step, tuple[Instruction, ...]]] = []
    for step in plan.changes:
        if step.undo:
            undo.append((step, step.undo))
        try:
            for instruction in step.instructions:
                _run(instruction, aws, results, console, cache_dir, packager, backoff, clock)
        except KoeError as exc:
            restored = _undo(undo, aws, results, report, console)
            raise type(exc)(f"{step.action} {step.resource} {step.name}: {exc.message}{restored}") from exc
        report(step, "done")


def _silent(step: Step, outcome: Outcome) -> None:
    pass


def _undo(
    undo: list[tuple[Step, tuple[Instruction, ...]]],
    aws: Aws,
    results: dict[str, Any],
    report: Reporter,
    console: Console | None,
) -> str:
    """Run the undo instructions of the steps done so far, last first; a note for the error message."""
    notes = []
    for step, instructions in reversed(undo):
        try:
            for instruction in instructions:
                _run(instruction, aws, results, console, None, None, Backoff(), None)
        except KoeError as exc:
            notes.append(f"could NOT restore {step.resource} {step.name}: {exc.message}")
        else:
            notes.append(f"{step.resource} {step.name} restored as it was")
            report(step, "restored")
    return f" ({'; '.join(notes)})" if notes else ""


def _run(
    instruction: Instruction,
    aws: Aws,
    results: dict[str, Any],
    console: Console | None,
    cache_dir: Path | None,
    packager: Packager | None,
    backoff: Backoff,
    clock: Clock | None,
) -> None:
    if isinstance(instruction, Call):
        method = getattr(aws, instruction.method)
        result = method(**_resolve(instruction.params, results))
        if instruction.store:
            results[instruction.store] = result
    elif isinstance(instruction, PackageModel):
        package_and_upload(aws, instruction.model, instruction.url, cache_dir=cache_dir, packager=packager)
    elif isinstance(instruction, RequireConfig):
        running = (aws.describe_endpoint(instruction.name) or {}).get("EndpointConfigName")
        if running != instruction.config:
            raise DeployError(f"endpoint {instruction.name} runs {running}, not {instruction.config}: kept")
    else:
        wait_for_endpoint(aws, instruction.name, until=instruction.until, timeout_s=instruction.timeout_s,
                          backoff=backoff, console=console, clock=clock, config=instruction.config)  # fmt: skip


def _resolve(value: Any, results: Mapping[str, Any]) -> Any:
    if isinstance(value, Var):
        if value.name not in results:
            raise AwsError(f"internal: {value.name} was not produced by an earlier step")
        return results[value.name]
    if isinstance(value, Mapping):
        return {k: _resolve(v, results) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_resolve(v, results) for v in value]
    return value


def package_and_upload(
    aws: Aws, model: str, url: str, *, cache_dir: Path | None = None, packager: Packager | None = None
) -> None:
    """Build model.tar.gz with `koe.deploy.package.build_model_archive` (imported lazily) and upload it."""
    if packager is None:
        try:
            from koe.deploy.package import build_model_archive
        except ImportError as exc:
            raise DeployError(
                f"packaging models needs koe.deploy.package ({exc}); pass an s3:// model.tar.gz URL instead"
            ) from None
        packager = build_model_archive
    cache = cache_dir or Path.home() / ".cache" / "koe"
    with tempfile.TemporaryDirectory(prefix="koe-package-") as tmp:
        archive = packager(model, Path(tmp) / "model.tar.gz", cache)
        aws.upload_file(archive, url, content_type="application/gzip")
