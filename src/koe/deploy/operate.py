"""Running an endpoint day to day: `koe wake` (start instances before a batch) and `koe logs` (read its
CloudWatch Logs, so a failed cold start can be read without the console)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from koe.deploy.autoscaling import ScalingNames
from koe.deploy.aws import Aws
from koe.deploy.wait import Backoff, Clock
from koe.errors import DeployError

LOG_GROUP = "/aws/sagemaker/Endpoints/{}"


@dataclass(frozen=True)
class Wake:
    instances: int
    until: datetime
    floor_was: int
    started: bool  # whether instances were started now (none ran, or fewer than asked)


def wake(aws: Aws, endpoint: str, *, instances: int = 1, hold_s: float = 3600, now: datetime | None = None) -> Wake:
    """Start `instances` now and keep them for `hold_s`: raise the scalable target's floor (so target tracking
    does not scale them in), set the desired count (UpdateEndpointWeightsAndCapacities) if fewer run, and
    schedule the floor back (a one-time scheduled action `at(...)`). Waking again moves that time."""
    described = aws.describe_endpoint(endpoint)
    if described is None:
        raise DeployError(f"endpoint {endpoint} does not exist")
    if described.get("EndpointStatus") != "InService":
        raise DeployError(f"endpoint {endpoint} is {described.get('EndpointStatus')}; it can be woken when InService")
    variant = described["ProductionVariants"][0]
    names = ScalingNames(endpoint, str(variant["VariantName"]))
    target = aws.describe_scalable_target(names.resource_id)
    if target is None:
        raise DeployError(f"endpoint {endpoint} has no autoscaling (koe deploy registers it)")
    floor, ceiling = int(target["MinCapacity"]), int(target["MaxCapacity"])
    earlier = {a["ScheduledActionName"]: a for a in aws.describe_scheduled_actions(names.resource_id)}
    if names.wake_until in earlier:  # woken before: the floor to go back to is the one that wake saved
        floor = int(earlier[names.wake_until]["ScalableTargetAction"]["MinCapacity"])
    if not 1 <= instances <= ceiling:
        raise DeployError(f"instances: must be 1..{ceiling} (the endpoint's --max-instances)")
    until = (now or datetime.now(timezone.utc)) + timedelta(seconds=hold_s)
    aws.register_scalable_target(
        resource_id=names.resource_id, min_capacity=max(floor, instances), max_capacity=ceiling
    )
    aws.put_scheduled_action(
        name=names.wake_until, resource_id=names.resource_id, schedule=f"at({until:%Y-%m-%dT%H:%M:%S})",
        timezone="UTC", min_capacity=floor, max_capacity=ceiling,
    )  # fmt: skip
    current = int(variant.get("DesiredInstanceCount", variant.get("CurrentInstanceCount", 0)))
    started = current < instances
    if started:
        aws.set_desired_instances(endpoint=endpoint, variant=names.variant, count=instances)
    return Wake(instances, until, floor, started)


def wait_for_instances(
    aws: Aws, endpoint: str, instances: int, *, timeout_s: float = 1800, clock: Clock | None = None,
    backoff: Backoff = Backoff(first=10.0, cap=30.0),
) -> None:  # fmt: skip
    clock = clock or Clock()
    deadline = clock.now() + timeout_s
    for delay in backoff.delays():
        described = aws.describe_endpoint(endpoint) or {}
        running = sum(int(v.get("CurrentInstanceCount", 0)) for v in described.get("ProductionVariants", []))
        if running >= instances and described.get("EndpointStatus") == "InService":
            return
        if clock.now() + delay > deadline:
            raise DeployError(f"endpoint {endpoint}: {running} instance(s) after {timeout_s:.0f} s (see koe logs)")
        clock.sleep(delay)


def log_lines(
    aws: Aws,
    endpoint: str,
    *,
    since_s: float = 3600,
    follow: bool = False,
    poll_s: float = 5.0,
    clock: Clock | None = None,
    now_ms: Callable[[], int] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """`<time> <stream> <message>` for each event of the endpoint's log group since `since_s` ago; with
    `follow`, then every `poll_s` seconds the new ones (until `stop()`, or Ctrl-C)."""
    clock = clock or Clock()
    now_ms = now_ms or (lambda: int(time.time() * 1000))
    group = LOG_GROUP.format(endpoint)
    start = now_ms() - int(since_s * 1000)
    seen: set[str] = set()
    while True:
        events = aws.log_events(group, start_ms=start)
        for event in events:
            key = str(
                event.get("eventId") or (event.get("timestamp"), event.get("logStreamName"), event.get("message"))
            )
            if key in seen:
                continue
            seen.add(key)
            yield _format(event)
        if events:
            start = max(int(e.get("timestamp", start)) for e in events)  # same-millisecond events: `seen` dedups
        if not follow or (stop is not None and stop()):
            return
        clock.sleep(poll_s)


def _format(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(int(event.get("timestamp", 0)) / 1000, timezone.utc)
    stream = str(event.get("logStreamName", "")).split("/")[-1]  # <variant>/<instance-id>/data-log -> data-log
    parts = str(event.get("logStreamName", "")).split("/")
    instance = parts[1] if len(parts) >= 2 else stream
    return f"{when:%Y-%m-%d %H:%M:%S} {instance} {str(event.get('message', '')).rstrip()}"
