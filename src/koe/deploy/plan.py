"""Plan, then execute: how `koe deploy` and `koe destroy` change AWS.

    DeploySpec ──plan_deploy(aws, spec)──▶ Plan ──render_plan──▶ table (--dry-run stops here)
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
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

from koe.deploy.autoscaling import (
    STEP,
    TRACKING,
    ScalingNames,
    tracking_configuration,
    wake_alarm,
    wake_configuration,
)
from koe.deploy.aws import Aws
from koe.deploy.spec import DeploySpec, mapping_matches, owned_names, split_s3_root
from koe.deploy.wait import Backoff, Clock, Until, wait_for_endpoint
from koe.errors import AwsError, DeployError, KoeError

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
    """Build model.tar.gz from `model` with koe.package and upload it to `url`."""

    model: str
    url: str


@dataclass(frozen=True)
class WaitForEndpoint:
    name: str
    until: Until
    timeout_s: float


Instruction = Call | PackageModel | WaitForEndpoint


@dataclass(frozen=True)
class Step:
    resource: str
    name: str
    action: Action
    detail: str = ""
    instructions: tuple[Instruction, ...] = ()


@dataclass(frozen=True)
class Plan:
    title: str
    steps: tuple[Step, ...]

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
    _check_topics(aws, spec)
    steps.append(_model_data_step(aws, spec))
    steps.append(_model_step(aws, spec))
    steps.append(_config_step(aws, spec))
    endpoint = _endpoint_step(aws, spec, wait_timeout_s)
    endpoint_changes = endpoint.action in ("update", "replace")
    teardown, scaling = _scaling_steps(aws, spec, endpoint_changes=endpoint_changes)
    if teardown is not None:
        steps.append(teardown)
    steps.append(endpoint)
    steps.extend(scaling)
    steps.extend(_sweep_steps(aws, spec))
    return Plan(f"deploy {spec.name}", tuple(steps))


def _bucket_step(aws: Aws, spec: DeploySpec) -> Step:
    if aws.bucket_exists(spec.bucket):
        return Step("s3 bucket", spec.bucket, "no-op", "exists")
    return Step("s3 bucket", spec.bucket, "create", aws.region, (Call("create_bucket", {"bucket": spec.bucket}),))


def _check_topics(aws: Aws, spec: DeploySpec) -> None:
    for topic in (spec.success_topic, spec.error_topic):
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
              "tags": spec.tags}  # fmt: skip
    detail = f"{spec.instance_type}, {spec.ami_version}, {spec.max_concurrent_invocations} per instance"
    return Step("endpoint config", name, "create", detail, (Call("create_endpoint_config", params),))


def _endpoint_step(aws: Aws, spec: DeploySpec, timeout_s: float) -> Step:
    name, config = spec.name, spec.config_name
    in_service = WaitForEndpoint(name, "InService", timeout_s)
    current = aws.describe_endpoint(name)
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
        return Step("endpoint", name, "update", f"{current.get('EndpointConfigName')} -> {config}",
                    (steady, update, in_service))  # fmt: skip
    if status in TRANSITIONAL:
        return Step("endpoint", name, "wait", f"it is {status}", (in_service,))
    if status != "InService":
        raise DeployError(f"endpoint {name} is {status}; see `koe status --name {name}` (or destroy and deploy again)")
    return Step("endpoint", name, "no-op", "InService")


def _scaling_steps(aws: Aws, spec: DeploySpec, *, endpoint_changes: bool) -> tuple[Step | None, list[Step]]:
    names = ScalingNames(spec.name, spec.variant)
    rid = names.resource_id
    target = aws.describe_scalable_target(rid)
    policies = {p["PolicyName"]: p for p in aws.describe_scaling_policies(rid)}
    ours = [n for n in (names.tracking_policy, names.wake_policy) if n in policies]
    teardown = None
    if endpoint_changes and (target is not None or ours):
        # UpdateEndpoint fails for a variant registered with Application Auto Scaling when the update changes
        # its instance type; AWS's advice is to delete the policies and deregister the variant first, then
        # register again. Doing it for every update keeps one path. (Deregistering deletes the policies on
        # AWS; they are deleted explicitly first so that no emulator keeps them.)
        calls: list[Instruction] = [Call("delete_scaling_policy", {"name": n, "resource_id": rid}) for n in ours]
        if target is not None:
            calls.append(Call("deregister_scalable_target", {"resource_id": rid}))
        teardown = Step("autoscaling", rid, "delete", "before the endpoint update; registered again after",
                        tuple(calls))  # fmt: skip
        target, policies = None, {}

    steps = [_target_step(spec, rid, target)]
    tracking = tracking_configuration(spec.name, spec.target_backlog_per_instance)
    steps.append(_policy_step(names.tracking_policy, rid, TRACKING, tracking, policies, "target tracking", None))
    wake = _policy_step(names.wake_policy, rid, STEP, wake_configuration(), policies, "step, wake from 0", "wake")
    steps.append(wake)
    policy_arn: Any = Var("wake") if wake.action != "no-op" else policies[names.wake_policy]["PolicyARN"]
    steps.append(_alarm_step(aws, names, policy_arn))
    return teardown, steps


def _target_step(spec: DeploySpec, rid: str, target: Mapping[str, Any] | None) -> Step:
    params = {"resource_id": rid, "min_capacity": 0, "max_capacity": spec.max_instances}
    detail = f"0..{spec.max_instances} instances"
    register = (Call("register_scalable_target", params),)
    if target is None:
        return Step("scalable target", rid, "create", detail, register)
    if target.get("MinCapacity") != 0 or target.get("MaxCapacity") != spec.max_instances:
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
    steps = [
        Step("old endpoint config", c, "delete", "replaced", (Call("delete_endpoint_config", {"name": c}),))
        for c in configs
    ]
    steps += [Step("old model", m, "delete", "replaced", (Call("delete_model", {"name": m}),)) for m in models]
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
    if aws.describe_alarm(names.wake_alarm) is not None:
        steps.append(Step("alarm", names.wake_alarm, "delete", "", (Call("delete_alarm", {"name": names.wake_alarm}),)))
    else:
        steps.append(Step("alarm", names.wake_alarm, "no-op", "absent"))
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


# ---- rendering and execution -------------------------------------------------------------------------------

_STYLE = {
    "create": "green",
    "update": "yellow",
    "replace": "red",
    "delete": "red",
    "wait": "cyan",
    "no-op": "dim",
}


def render_plan(plan: Plan) -> Table:
    table = Table("resource", "name", "action", "detail", title=plan.title, title_justify="left")
    for step in plan.steps:
        style = _STYLE[step.action]
        table.add_row(step.resource, step.name, f"[{style}]{step.action}[/{style}]", step.detail)
    return table


def describe_instruction(instruction: Instruction) -> str:
    """One line per instruction, for --dry-run's list of the calls it would make."""
    if isinstance(instruction, Call):
        args = ", ".join(f"{k}={_short(v)}" for k, v in instruction.params.items())
        return f"{instruction.method}({args})"
    if isinstance(instruction, PackageModel):
        return f"koe.package.build_model_archive({instruction.model!r}) -> upload {instruction.url}"
    limit = f"{instruction.timeout_s:.0f} s"
    return f"wait until endpoint {instruction.name} is {instruction.until} (at most {limit})"


def _short(value: Any) -> str:
    if isinstance(value, Var):
        return f"<{value.name}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Packager = Callable[[str, Path, Path], Path]


def execute(
    plan: Plan,
    aws: Aws,
    *,
    console: Console | None = None,
    cache_dir: Path | None = None,
    packager: Packager | None = None,
    backoff: Backoff = Backoff(),
    clock: Clock | None = None,
) -> None:
    """Run the plan's changes in order, printing one line per step. Stops at the first error, naming the step;
    running `plan_deploy` + `execute` again picks up from there."""
    console = console or Console(stderr=True)
    results: dict[str, Any] = {}
    for step in plan.changes:
        try:
            for instruction in step.instructions:
                _run(instruction, aws, results, console, cache_dir, packager, backoff, clock)
        except KoeError as exc:
            raise type(exc)(f"{step.action} {step.resource} {step.name}: {exc.message}") from exc
        style = _STYLE[step.action]
        console.print(f"[{style}]{_past(step.action)}[/{style}] {step.resource} {step.name}")


def _run(
    instruction: Instruction,
    aws: Aws,
    results: dict[str, Any],
    console: Console,
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
    else:
        wait_for_endpoint(aws, instruction.name, until=instruction.until, timeout_s=instruction.timeout_s,
                          backoff=backoff, console=console, clock=clock)  # fmt: skip


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


def _past(action: Action) -> str:
    return {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted",
            "wait": "ready", "no-op": "unchanged"}[action]  # fmt: skip


def package_and_upload(
    aws: Aws, model: str, url: str, *, cache_dir: Path | None = None, packager: Packager | None = None
) -> None:
    """Build model.tar.gz with `koe.package.build_model_archive` (imported lazily) and upload it."""
    if packager is None:
        try:
            from koe.package import build_model_archive
        except ImportError as exc:
            raise DeployError(
                f"packaging models needs koe.package ({exc}); pass an s3:// model.tar.gz URL instead"
            ) from None
        packager = build_model_archive
    cache = cache_dir or Path.home() / ".cache" / "koe"
    with tempfile.TemporaryDirectory(prefix="koe-package-") as tmp:
        archive = packager(model, Path(tmp) / "model.tar.gz", cache)
        aws.upload_file(archive, url, content_type="application/gzip")
