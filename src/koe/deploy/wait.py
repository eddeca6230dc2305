"""Waiting on AWS with capped exponential backoff and a deadline, and a live display while it lasts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from koe.deploy.aws import Aws
from koe.errors import DeployError

Until = Literal["InService", "steady", "deleted"]

# States an endpoint stays in until someone acts; every other state moves on by itself.
STEADY = frozenset({"InService", "Failed", "OutOfService"})


@dataclass(frozen=True)
class Backoff:
    """Delays first, first*factor, ... capped at `cap` seconds."""

    first: float = 5.0
    cap: float = 30.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap)


@dataclass
class Clock:
    """Injectable time (tests replace `sleep`)."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


def wait_for_endpoint(
    aws: Aws,
    name: str,
    *,
    until: Until,
    timeout_s: float,
    backoff: Backoff = Backoff(),
    console: Console | None = None,
    clock: Clock | None = None,
    config: str | None = None,
) -> dict[str, Any] | None:
    """Poll DescribeEndpoint until the endpoint is InService (or steady, or gone); the last description.

    Raises DeployError with SageMaker's FailureReason when the endpoint goes to Failed while waiting for
    InService, and when `timeout_s` passes first (naming the state it was stuck in). With `config`, InService
    counts only on that endpoint config: a blue/green update whose new fleet fails returns the endpoint to
    InService on the OLD config with a FailureReason, which is a failed update, not a finished one.
    """
    clock = clock or Clock()
    deadline = clock.now() + timeout_s
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"endpoint {name}: waiting", total=None)
        for delay in backoff.delays():
            described = aws.describe_endpoint(name)
            status = described.get("EndpointStatus", "?") if described else "absent"
            progress.update(task, description=f"endpoint {name}: {status} (waiting for {until})")
            if _reached(name, until, described, config):
                return described
            if clock.now() + delay > deadline:
                reason = (described or {}).get("FailureReason")
                detail = f"; failure reason: {reason}" if reason else ""
                raise DeployError(
                    f"endpoint {name} is still {status} after {timeout_s:.0f} s "
                    f"(waiting for {until}){detail}; "
                    f"see `koe status --name {name}` and the log group /aws/sagemaker/Endpoints/{name}"
                )
            clock.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _reached(name: str, until: Until, described: dict[str, Any] | None, config: str | None = None) -> bool:
    if until == "deleted":
        return described is None
    if described is None:
        raise DeployError(f"endpoint {name} disappeared while waiting for it")
    status = described.get("EndpointStatus")
    if until == "steady":
        return status in STEADY
    if status == "Failed":
        reason = described.get("FailureReason") or "no reason given"
        raise DeployError(
            f"endpoint {name} failed: {reason} (logs: /aws/sagemaker/Endpoints/{name}; "
            "a CannotStartContainerError "
            "with no logs usually means the host GPU driver is too old for the image: check --ami-version)"
        )
    if status != "InService":
        return False
    running = described.get("EndpointConfigName")
    if config is not None and running != config:
        reason = described.get("FailureReason") or "no reason given"
        raise DeployError(
            f"endpoint {name}: the update to {config} was rolled back; it still runs {running} ({reason}). "
            f"Nothing was deleted; logs: /aws/sagemaker/Endpoints/{name}"
        )
    return True
