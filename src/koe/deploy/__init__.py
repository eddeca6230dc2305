"""koe on SageMaker Asynchronous Inference: `koe image / deploy / invoke / status / destroy / iam-policy`.

image.py        docker build / ECR push (the image `deploy` takes)
spec.py         DeploySpec: the desired endpoint, and the exact SageMaker shapes derived from it
plan.py         plan_deploy / plan_destroy (read-only) -> Plan -> execute (the mutating calls)
autoscaling.py  scale to zero: scalable target, target tracking, wake-from-zero step policy + alarm
aws.py          Aws: the one typed wrapper over boto3; botocore errors become koe errors there
wait.py         waiting for endpoint states with backoff and a deadline
invoke.py       upload, InvokeEndpointAsync, watch output + failure locations
status.py       what is deployed and how it scales
iam.py          the execution role's least-privilege policy
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from koe.deploy.aws import Aws
    from koe.deploy.plan import Plan, execute, plan_deploy, plan_destroy
    from koe.deploy.spec import DeploySpec

__all__ = ["Aws", "DeploySpec", "Plan", "execute", "plan_deploy", "plan_destroy"]

_HOMES = {"Aws": "aws", "DeploySpec": "spec", "Plan": "plan", "execute": "plan", "plan_deploy": "plan",
          "plan_destroy": "plan"}  # fmt: skip


def __getattr__(name: str) -> Any:
    """Import on first use: `koe.deploy.spec` (used by the CLI at start-up) must not pull in boto3."""
    if name not in _HOMES:
        raise AttributeError(f"module 'koe.deploy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"koe.deploy.{_HOMES[name]}"), name)
