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
