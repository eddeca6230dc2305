"""Autoscaling to zero for a SageMaker async endpoint: the scalable target, two policies and one alarm.

    scalable target   endpoint/<ep>/variant/<v>, sagemaker:variant:DesiredInstanceCount, MinCapacity 0, Max N
    policy 1          target tracking on ApproximateBacklogSizePerInstance (AWS/SageMaker, EndpointName):
                      scales out under load and back in to 0 when the queue stays empty. Application Auto
                      Scaling creates and owns this policy's alarms.
    policy 2 + alarm  step scaling, +1 instance when the alarm on HasBacklogWithoutCapacity fires (>= 1):
                      the per-instance backlog is undefined at 0 instances, so without this the endpoint
                      would only wake once the backlog exceeded the tracking target.

This is the setup AWS documents for async endpoints (docs.aws.amazon.com/sagemaker/latest/dg/
async-inference-autoscale.html); this module only builds the shapes, `plan.py` compares and applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from koe.deploy.aws import SAGEMAKER_NAMESPACE

BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
WAKE_METRIC = "HasBacklogWithoutCapacity"
TRACKING = "TargetTrackingScaling"
STEP = "StepScaling"

# The wake-up alarm: one one-minute datapoint of HasBacklogWithoutCapacity >= 1. AWS's example waits for 2 of
# 2; the metric is only ever 1 while requests wait on zero instances, so a single minute is not a false alarm,
# and a cold start is long enough without adding a minute to it.
WAKE_THRESHOLD = 1.0
WAKE_PERIOD_S = 60
WAKE_EVALUATION_PERIODS = 1

# Step bounds are relative to the alarm's threshold, not absolute metric values: Application Auto Scaling
# matches (metric - threshold) against [MetricIntervalLowerBound, MetricIntervalUpperBound). The seed recipe
# shared one step policy between a "backlog > 1" alarm and a "backlog < 1" alarm with the steps [UpperBound 1
# -> -1, LowerBound 1 -> +1], as if the bounds were backlog values. With threshold 1, a backlog of 1.5 per
# instance fires the scale-out alarm with a breach of 0.5, which falls in (-inf, 1) and removes an instance:
# it scaled IN under load, and only scaled out at 2+ per instance. Here the backlog is handled by target
# tracking (no hand-made bounds), and the one step that remains covers the whole breach range above the
# threshold: [0, +inf) -> +1, i.e. HasBacklogWithoutCapacity >= 1 adds one instance.
WAKE_STEPS = ({"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1},)
WAKE_COOLDOWN_S = 300  # no second +1 while the first instance is still starting (a cold start takes minutes)

SCALE_IN_COOLDOWN_S = 600
SCALE_OUT_COOLDOWN_S = 300


@dataclass(frozen=True)
class ScalingNames:
    endpoint: str
    variant: str

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{self.variant}"

    @property
    def tracking_policy(self) -> str:
        return f"koe-{self.endpoint}-backlog-tracking"

    @property
    def wake_policy(self) -> str:
        return f"koe-{self.endpoint}-wake-from-zero"

    @property
    def wake_alarm(self) -> str:
        return f"koe-{self.endpoint}-has-backlog-without-capacity"

    @property
    def warm_start(self) -> str:
        return f"koe-{self.endpoint}-warm-start"

    @property
    def warm_end(self) -> str:
        return f"koe-{self.endpoint}-warm-end"

    @property
    def wake_until(self) -> str:
        return f"koe-{self.endpoint}-wake-until"

    @property
    def schedules(self) -> tuple[str, ...]:
        return (self.warm_start, self.warm_end, self.wake_until)

    @property
    def failures_alarm(self) -> str:
        return f"koe-{self.endpoint}-invocation-failures"

    @property
    def expired_alarm(self) -> str:
        return f"koe-{self.endpoint}-expired-requests"

    @property
    def oldest_alarm(self) -> str:
        return f"koe-{self.endpoint}-oldest-request-age"


def tracking_configuration(endpoint: str, target_backlog_per_instance: float) -> dict[str, Any]:
    return {
        "TargetValue": float(target_backlog_per_instance),
        "CustomizedMetricSpecification": {
            "MetricName": BACKLOG_METRIC,
            "Namespace": SAGEMAKER_NAMESPACE,
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
            "Statistic": "Average",
        },
        "ScaleInCooldown": SCALE_IN_COOLDOWN_S,
        "ScaleOutCooldown": SCALE_OUT_COOLDOWN_S,
    }


def wake_configuration() -> dict[str, Any]:
    return {
        "AdjustmentType": "ChangeInCapacity",
        "MetricAggregationType": "Average",
        "Cooldown": WAKE_COOLDOWN_S,
        "StepAdjustments": [dict(step) for step in WAKE_STEPS],
    }


def wake_alarm(names: ScalingNames, policy_arn: Any) -> dict[str, Any]:
    """PutMetricAlarm's parameters for the wake-up alarm; `policy_arn` may be a plan `Var` until execution."""
    return {
        "AlarmName": names.wake_alarm,
        "AlarmDescription": f"koe: requests wait for {names.endpoint} and it has no instance; add one",
        "Namespace": SAGEMAKER_NAMESPACE,
        "MetricName": WAKE_METRIC,
        "Dimensions": [{"Name": "EndpointName", "Value": names.endpoint}],
        "Statistic": "Average",
        "Period": WAKE_PERIOD_S,
        "EvaluationPeriods": WAKE_EVALUATION_PERIODS,
        "DatapointsToAlarm": WAKE_EVALUATION_PERIODS,
        "Threshold": WAKE_THRESHOLD,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing",
        "AlarmActions": [policy_arn],
    }


# ---- scheduled warm hours ------------------------------------------------------------------------------------

_DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


@dataclass(frozen=True)
class WarmHours:
    """Hours in which the endpoint keeps a warm floor, e.g. "Mon-Fri 09:00-18:00" in a time zone.

    Two Application Auto Scaling scheduled actions (cron, in `timezone`) set MinCapacity to the warm floor at
    the start and back to the normal floor at the end; target tracking still scales above the floor."""

    days: str  # cron day-of-week field: MON-FRI, MON,WED, *
    start: tuple[int, int]
    end: tuple[int, int]
    timezone: str = "UTC"

    @classmethod
    def parse(cls, text: str, timezone: str = "UTC") -> WarmHours:
        from koe.errors import OptionsError

        match = re.fullmatch(r"\s*(?:([A-Za-z,\-]+|daily)\s+)?(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
        if not match:
            raise OptionsError(f"warm hours: {text!r} is not like 'Mon-Fri 09:00-18:00'")
        days_text, h1, m1, h2, m2 = match.groups()
        start, end = (int(h1), int(m1)), (int(h2), int(m2))
        if not (start < end <= (23, 59) and start[1] < 60 and end[1] < 60):
            raise OptionsError(f"warm hours: {text!r}: the hours must be HH:MM-HH:MM within one day, start first")
        days = "*" if not days_text or days_text.lower() == "daily" else _cron_days(days_text)
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(timezone)
        except (KeyError, ValueError, OSError):
            raise OptionsError(f"timezone: {timezone!r} is not an IANA time zone such as Asia/Tokyo") from None
        return cls(days, start, end, timezone)

    def cron(self, at: tuple[int, int]) -> str:
        return f"cron({at[1]} {at[0]} ? * {self.days} *)"

    @property
    def hours_per_week(self) -> float:
        per_day = (self.end[0] * 60 + self.end[1] - self.start[0] * 60 - self.start[1]) / 60
        return per_day * _count_days(self.days)

    def __str__(self) -> str:
        return (
            f"{self.days} {self.start[0]:02d}:{self.start[1]:02d}-{self.end[0]:02d}:{self.end[1]:02d} {self.timezone}"
        )


def _cron_days(text: str) -> str:
    from koe.errors import OptionsError

    parts = []
    for part in text.upper().split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(d[:3] not in _DAYS or len(d) < 3 for d in ends):
            raise OptionsError(f"warm hours: {text!r}: days are Mon..Sun, as Mon-Fri or Mon,Wed,Fri")
        parts.append("-".join(d[:3] for d in ends))
    return ",".join(parts)


def _count_days(days: str) -> int:
    if days == "*":
        return 7
    count = 0
    for part in days.split(","):
        ends = part.split("-")
        first, last = _DAYS.index(ends[0]), _DAYS.index(ends[-1])
        count += (last - first) % 7 + 1
    return count


def warm_actions(
    names: ScalingNames, warm: WarmHours, *, warm_floor: int, floor: int, ceiling: int
) -> list[dict[str, Any]]:
    """put_scheduled_action's parameters (koe's `Aws` names) for the start and the end of the warm hours."""
    common = {"resource_id": names.resource_id, "timezone": warm.timezone, "max_capacity": ceiling}
    return [
        {"name": names.warm_start, "schedule": warm.cron(warm.start), "min_capacity": warm_floor, **common},
        {"name": names.warm_end, "schedule": warm.cron(warm.end), "min_capacity": floor, **common},
    ]


# ---- alarms for people ---------------------------------------------------------------------------------------


def health_alarms(names: ScalingNames, *, topic: str | None, oldest_s: int) -> list[dict[str, Any]]:
    """PutMetricAlarm's parameters for failed invocations, expired requests and the age of the oldest request;
    they notify `topic` (when given) on ALARM and on OK."""
    actions = {"AlarmActions": [topic], "OKActions": [topic]} if topic else {"AlarmActions": [], "OKActions": []}
    variant = [{"Name": "EndpointName", "Value": names.endpoint}, {"Name": "VariantName", "Value": names.variant}]
    endpoint = [{"Name": "EndpointName", "Value": names.endpoint}]
    base = {"Namespace": SAGEMAKER_NAMESPACE, "Period": 300, "EvaluationPeriods": 1, "DatapointsToAlarm": 1,
            "TreatMissingData": "notBreaching", **actions}  # fmt: skip
    return [
        {**base, "AlarmName": names.failures_alarm, "MetricName": "InvocationFailures", "Dimensions": variant,
         "Statistic": "Sum", "Threshold": 0.0, "ComparisonOperator": "GreaterThanThreshold",
         "AlarmDescription": f"koe: requests to {names.endpoint} failed (see koe logs)"},
        {**base, "AlarmName": names.expired_alarm, "MetricName": "ExpiredRequests", "Dimensions": variant,
         "Statistic": "Sum", "Threshold": 0.0, "ComparisonOperator": "GreaterThanThreshold",
         "AlarmDescription": f"koe: requests to {names.endpoint} expired in the queue (RequestTTLSeconds)"},
        {**base, "AlarmName": names.oldest_alarm, "MetricName": "ApproximateAgeOfOldestRequest",
         "Dimensions": endpoint, "Statistic": "Maximum", "Threshold": float(oldest_s),
         "ComparisonOperator": "GreaterThanThreshold",
         "AlarmDescription": f"koe: a request to {names.endpoint} has waited over {oldest_s} s"},
    ]  # fmt: skip
