"""`koe status`: the endpoint, its instances, its autoscaling and the recent backlog, read-only."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.table import Table

from koe.deploy.autoscaling import WAKE_METRIC, ScalingNames
from koe.deploy.aws import Aws


@dataclass(frozen=True)
class EndpointStatus:
    name: str
    endpoint: dict[str, Any] | None
    config: dict[str, Any] | None
    target: dict[str, Any] | None
    policies: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    scheduled: list[dict[str, Any]] = field(default_factory=list)
    backlog: list[tuple[datetime, float]] = field(default_factory=list)
    without_capacity: list[tuple[datetime, float]] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.endpoint is not None

    @property
    def instances(self) -> int | None:
        variants = (self.endpoint or {}).get("ProductionVariants") or []
        return sum(int(v.get("CurrentInstanceCount", 0)) for v in variants) if variants else None


def collect_status(aws: Aws, name: str, *, minutes: int = 60) -> EndpointStatus:
    endpoint = aws.describe_endpoint(name)
    if endpoint is None:
        return EndpointStatus(name, None, None, None)
    config_name = endpoint.get("EndpointConfigName")
    config = aws.describe_endpoint_config(str(config_name)) if config_name else None
    variants = [v["VariantName"] for v in endpoint.get("ProductionVariants", [])] or ["AllTraffic"]
    names = ScalingNames(name, variants[0])
    target = aws.describe_scalable_target(names.resource_id)
    policies = aws.describe_scaling_policies(names.resource_id)
    # Ours plus the ones Application Auto Scaling made for target tracking (listed on the policy).
    alarm_names = [names.wake_alarm, names.failures_alarm, names.expired_alarm, names.oldest_alarm]
    alarm_names += [a["AlarmName"] for p in policies for a in p.get("Alarms", [])]
    alarms = [a for a in (aws.describe_alarm(n) for n in dict.fromkeys(alarm_names)) if a is not None]
    backlog = aws.metric_statistics(metric="ApproximateBacklogSize", endpoint=name, minutes=minutes)
    without = aws.metric_statistics(metric=WAKE_METRIC, endpoint=name, minutes=minutes)
    scheduled = aws.describe_scheduled_actions(names.resource_id) if target else []
    return EndpointStatus(name, endpoint, config, target, policies, alarms, scheduled, backlog, without)


def render_status(status: EndpointStatus) -> Group:
    if status.endpoint is None:
        return Group(f"endpoint {status.name}: [dim]absent[/dim]")
    ep = status.endpoint
    main = Table("endpoint", "status", "instances (current/desired)", "config", title_justify="left")
    for variant in ep.get("ProductionVariants", []) or [{}]:
        counts = f"{variant.get('CurrentInstanceCount', '-')}/{variant.get('DesiredInstanceCount', '-')}"
        main.add_row(status.name, _status_text(ep), counts, str(ep.get("EndpointConfigName", "")))
    scaling = Table("autoscaling", "name", "settings", title_justify="left")
    if status.target:
        bounds = f"{status.target.get('MinCapacity')}..{status.target.get('MaxCapacity')} instances"
        scaling.add_row("scalable target", str(status.target.get("ResourceId")), bounds)
    else:
        scaling.add_row("scalable target", "-", "[red]not registered[/red]")
    for policy in status.policies:
        scaling.add_row(str(policy.get("PolicyType")), str(policy.get("PolicyName")), _policy_text(policy))
    for action in status.scheduled:
        capacity = action.get("ScalableTargetAction") or {}
        when = f"{action.get('Schedule')} {action.get('Timezone') or 'UTC'}"
        scaling.add_row("scheduled", str(action.get("ScheduledActionName")),
                        f"{when}: {capacity.get('MinCapacity')}..{capacity.get('MaxCapacity')} instances")  # fmt: skip
    for alarm in status.alarms:
        state = str(alarm.get("StateValue"))
        colour = "red" if state == "ALARM" else "green" if state == "OK" else "yellow"
        scaling.add_row("alarm", str(alarm.get("AlarmName")), f"[{colour}]{state}[/{colour}]")
    metrics = Table("metric (AWS/SageMaker, max per 5 min)", "recent values", title_justify="left")
    metrics.add_row("ApproximateBacklogSize", _series(status.backlog))
    metrics.add_row(WAKE_METRIC, _series(status.without_capacity))
    return Group(main, scaling, metrics)


def _status_text(endpoint: dict[str, Any]) -> str:
    status = str(endpoint.get("EndpointStatus"))
    reason = endpoint.get("FailureReason")
    return f"{status} ({reason})" if reason else status


def _policy_text(policy: dict[str, Any]) -> str:
    tracking = policy.get("TargetTrackingScalingPolicyConfiguration")
    if tracking:
        metric = (tracking.get("CustomizedMetricSpecification") or {}).get("MetricName", "?")
        return f"{metric} target {tracking.get('TargetValue')}"
    step = policy.get("StepScalingPolicyConfiguration") or {}
    steps = ", ".join(
        f"[{s.get('MetricIntervalLowerBound', '-inf')}, {s.get('MetricIntervalUpperBound', '+inf')}) "
        f"{int(s.get('ScalingAdjustment', 0)):+d}"
        for s in step.get("StepAdjustments", [])
    )
    return f"{step.get('AdjustmentType')} {steps}"


def _series(points: list[tuple[datetime, float]]) -> str:
    if not points:
        return "[dim]no datapoints[/dim]"
    return "  ".join(f"{t:%H:%M} {v:g}" for t, v in points[-8:])
