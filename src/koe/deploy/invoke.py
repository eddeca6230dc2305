"""`koe invoke`: send files to a SageMaker async endpoint and, with --wait, collect their transcripts.

Each file is uploaded under a key of its own (`<prefix>/input/<uuid>/<file name>`), then InvokeEndpointAsync
is called with the options as custom attributes. SageMaker answers at once with an OutputLocation and a
FailureLocation; the result appears at exactly one of them. `wait_for_results` watches both for every pending
file in one loop, with capped exponential backoff and one overall deadline, and reads whichever appears.
Keys are never built by hand: the locations are the ones SageMaker returned.
"""

from __future__ import annotations

import json
import mimetypes
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from koe.deploy.aws import Aws
from koe.deploy.spec import MAX_INVOCATION_TIMEOUT_S, split_s3_root
from koe.deploy.wait import Backoff, Clock
from koe.errors import DeployError, KoeError, OptionsError
from koe.formats import CONTENT_TYPES, EXTENSIONS, check_format
from koe.options import MAX_CUSTOM_ATTRIBUTES, format_custom_attributes

State = Literal["queued", "completed", "failed", "timed out"]

# Content types koe's container accepts besides audio/* and video/*; everything unknown goes as octet-stream.
_EXTRA_TYPES = {".opus": "audio/ogg", ".m4a": "audio/mp4", ".flac": "audio/flac", ".webm": "audio/webm"}


@dataclass(frozen=True)
class Invocation:
    """One file's trip through the endpoint."""

    path: Path
    inference_id: str
    input_location: str
    output_location: str
    failure_location: str | None
    state: State = "queued"
    body: bytes | None = None
    content_type: str | None = None
    error: str | None = None


def accept_for(fmt: str) -> str:
    """The Accept header for a koe format (json means verbose JSON at /invocations)."""
    return CONTENT_TYPES[check_format(fmt)].split(";")[0]


def input_root(aws: Aws, endpoint: str) -> str:
    """`s3://bucket/prefix/input`, next to the endpoint's S3OutputPath (`s3://bucket/prefix/output`)."""
    output = (endpoint_async_config(aws, endpoint).get("OutputConfig") or {}).get("S3OutputPath")
    if not output:
        raise DeployError(f"endpoint {endpoint} is not an asynchronous endpoint (no S3OutputPath)")
    bucket, prefix = split_s3_root(str(output))
    return f"s3://{bucket}/{prefix}/input" if prefix else f"s3://{bucket}/input"


def endpoint_async_config(aws: Aws, endpoint: str) -> dict[str, Any]:
    """The endpoint's AsyncInferenceConfig. DescribeEndpoint returns it on AWS (moto omits it); the endpoint
    config has it everywhere."""
    described = aws.describe_endpoint(endpoint)
    if described is None:
        raise DeployError(f"endpoint {endpoint} does not exist (koe deploy --name {endpoint} ...)")
    async_config = described.get("AsyncInferenceConfig")
    if async_config is None:
        config = aws.describe_endpoint_config(str(described.get("EndpointConfigName")))
        async_config = (config or {}).get("AsyncInferenceConfig")
    return dict(async_config or {})


def endpoint_topics(aws: Aws, endpoint: str) -> list[str]:
    """The SNS topics the endpoint notifies (success, error), if any."""
    notify = (endpoint_async_config(aws, endpoint).get("OutputConfig") or {}).get("NotificationConfig") or {}
    return [str(notify[k]) for k in ("SuccessTopic", "ErrorTopic") if notify.get(k)]


def content_type_for(path: Path) -> str:
    guessed = _EXTRA_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    if guessed and guessed.split("/")[0] in ("audio", "video"):
        return guessed
    return "application/octet-stream"


def custom_attributes(options: Mapping[str, Any]) -> str:
    text = format_custom_attributes(options)
    if len(text) > MAX_CUSTOM_ATTRIBUTES:
        raise OptionsError(f"the options make {len(text)} characters of custom attributes; at most 1024 fit")
    return text


def submit(
    aws: Aws,
    endpoint: str,
    files: Sequence[Path],
    *,
    fmt: str = "text",
    options: Mapping[str, Any] | None = None,
    root: str | None = None,
    request_ttl_s: int | None = None,
    invocation_timeout_s: int = MAX_INVOCATION_TIMEOUT_S,
    console: Console | None = None,
) -> list[Invocation]:
    """Upload each file under a unique key and queue it on the endpoint; returns the queued invocations.

    InvocationTimeoutSeconds is always sent, by default at its maximum (3600 s): AWS's default of 900 s would
    expire long audio that the container accepts (`koe deploy` sizes KOE_MAX_DURATION_S to this timeout).
    """
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise OptionsError(f"no such file: {', '.join(missing)}")
    accept = accept_for(fmt)
    attributes = custom_attributes(options or {})
    root = (root or input_root(aws, endpoint)).rstrip("/")
    queued = []
    with _progress(console) as progress:
        task = progress.add_task("uploading and queueing", total=len(files))
        for path in files:
            inference_id = str(uuid.uuid4())
            location = f"{root}/{inference_id}/{_safe_name(path.name)}"
            aws.upload_file(path, location, content_type=content_type_for(path))
            answer = aws.invoke_endpoint_async(
                endpoint=endpoint, input_location=location, content_type=content_type_for(path),
                accept=accept,
                custom_attributes=attributes, inference_id=inference_id, request_ttl_s=request_ttl_s,
                invocation_timeout_s=invocation_timeout_s,
            )  # fmt: skip
            queued.append(Invocation(path, answer.inference_id, location, answer.output_location,
                                     answer.failure_location))  # fmt: skip
            progress.advance(task)
    return queued


def wait_for_results(
    aws: Aws,
    invocations: Sequence[Invocation],
    *,
    timeout_s: float = 1800,
    backoff: Backoff = Backoff(first=2.0, cap=30.0),
    console: Console | None = None,
    clock: Clock | None = None,
) -> list[Invocation]:
    """Watch every pending invocation's output AND failure location until each has one, or the deadline.

    A cold start from zero instances takes minutes (see docs/deploy.md), hence the backoff: checks every 2 s
    at first, then every 4, 8, ... up to 30 s apart. Invocations still pending at the deadline come back
    "timed out" (they may still finish: their locations are in the result).
    """
    clock = clock or Clock()
    deadline = clock.now() + timeout_s
    results = {i.inference_id: i for i in invocations}
    pending = [i for i in invocations if i.state == "queued"]
    with _progress(console) as progress:
        task = progress.add_task(
            "waiting for results", total=len(invocations), completed=len(invocations) - len(pending)
        )
        for delay in backoff.delays():
            still = []
            for invocation in pending:
                done = check_invocation(aws, invocation)
                if done.state == "queued":
                    still.append(invocation)
                else:
                    results[invocation.inference_id] = done
                    progress.advance(task)
            pending = still
            if not pending:
                break
            if clock.now() + delay > deadline:
                message = f"no result after {timeout_s:.0f} s; it may still arrive at {{}}"
                for invocation in pending:
                    results[invocation.inference_id] = replace(
                        invocation, state="timed out", error=message.format(invocation.output_location)
                    )
                break
            clock.sleep(delay)
    return [results[i.inference_id] for i in invocations]


def check_invocation(aws: Aws, invocation: Invocation) -> Invocation:
    """The invocation completed or failed if its output or failure object exists, else unchanged."""
    if aws.object_exists(invocation.output_location):
        body, content_type = aws.read_object(invocation.output_location)
        return replace(invocation, state="completed", body=body, content_type=content_type)
    if invocation.failure_location and aws.object_exists(invocation.failure_location):
        body, _ = aws.read_object(invocation.failure_location)
        return replace(invocation, state="failed", error=failure_message(body))
    return invocation


def failure_message(body: bytes) -> str:
    """koe's error JSON ({"error": {"type", "message"}}) as "type: message"; anything else as (short) text."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        error = json.loads(text)["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return text if len(text) <= 2000 else text[:2000] + " ..."


def save_result(invocation: Invocation, fmt: str, output_dir: Path) -> Path:
    """Write a completed invocation's body to `<output_dir>/<file stem>.<ext>`."""
    if invocation.body is None:
        raise KoeError(f"{invocation.path}: no result to save")
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{invocation.path.stem}.{EXTENSIONS[check_format(fmt)]}"
    target.write_bytes(invocation.body)
    return target


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "input"


def _progress(console: Console | None) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console or Console(stderr=True), transient=True)
