"""Notifications when a job finishes, in the shape of SageMaker Async Inference's SNS message.

A webhook (per endpoint, from Settings, and per job) receives the message JSON itself as a POST body; an
SNS topic (success and error topics, as SageMaker's NotificationConfig) receives it as the `Message`.
Deliveries are retried with exponential backoff on connection errors, 429 and 5xx answers.

The endpoint-wide webhook is the operator's and is posted as configured. A job's own webhook is the client's:
it is checked against `WebhookPolicy` (koe.jobs.webhook) again at delivery and the connection goes to the address
that passed. All deliveries of one job share a time budget well inside the effects lease, so an unanswering
webhook never keeps the effects running until another process takes them over (a duplicate notification).
URLs are logged redacted.

Consumers should key on `invocationStatus` and `inferenceId` (the stable keys); on failure the message also
carries `failureReason` and, like SageMaker with an S3FailurePath, `responseParameters.failureLocation`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx

from koe.config import Settings
from koe.errors import KoeError
from koe.formats import CONTENT_TYPES
from koe.jobs.job import Job, JobStatus
from koe.jobs.webhook import Target, WebhookPolicy, redact_url

logger = logging.getLogger("koe.jobs.notify")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
DELIVERY_BUDGET_S = 30.0
"""The most time one job's webhook deliveries may take in all: half the queue's effects lease (60 s)."""


def iso_time(epoch: float | None) -> str | None:
    """`2022-01-25T22:46:00.608Z`, as SageMaker writes times."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(job: Job, *, endpoint_name: str, region: str = "local") -> dict[str, Any]:
    """SageMaker's async-inference notification for a finished job."""
    completed = job.status is JobStatus.COMPLETED
    message: dict[str, Any] = {
        "awsRegion": region,
        "eventTime": iso_time(job.finished_at),
        "receivedTime": iso_time(job.created_at),
        "invocationStatus": "Completed" if completed else "Failed",
        "requestParameters": {
            "contentType": job.request.content_type,
            "endpointName": endpoint_name,
            "inputLocation": job.input_location,
        },
        "inferenceId": job.id,
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }
    if completed:
        message["responseParameters"] = {
            "contentType": job.output_content_type or CONTENT_TYPES.get(job.format),
            "outputLocation": job.output_location,
        }
    else:
        error = job.error
        message["failureReason"] = f"{error.type}: {error.message}" if error else job.status.value
        message["responseParameters"] = {
            "contentType": "application/json",
            "failureLocation": job.failure_location,
        }
    return message


def topic_region(arn: str) -> str | None:
    """The region of an SNS topic ARN (`arn:aws:sns:<region>:<account>:<name>`)."""
    parts = arn.split(":")
    return parts[3] if len(parts) >= 6 and parts[3] else None


class Notifier:
    """Delivers job notifications to webhooks and SNS topics. Thread-safe."""

    def __init__(
        self,
        *,
        endpoint_name: str = "local",
        webhook_url: str | None = None,
        success_topic: str | None = None,
        error_topic: str | None = None,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
        budget_s: float = DELIVERY_BUDGET_S,
        policy: WebhookPolicy | None = None,
        region: str | None = None,
        sns_client_factory: Callable[[str | None], Any] | None = None,
        http: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint_name = endpoint_name
        self.webhook_url = webhook_url
        self.success_topic = success_topic
        self.error_topic = error_topic
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self.policy = policy or WebhookPolicy()
        self.region = region
        self._sns_factory = sns_client_factory or _sns_client
        self._sns_clients: dict[str | None, Any] = {}
        self._lock = threading.Lock()
        self._http = http or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        return cls(
            endpoint_name=settings.endpoint_name,
            webhook_url=settings.webhook_url,
            success_topic=settings.sns_success_topic,
            error_topic=settings.sns_error_topic,
            attempts=settings.webhook_attempts,
            policy=WebhookPolicy(settings.webhook_hosts),
            region=settings.s3_region,
        )

    def targets(self, job: Job) -> tuple[list[str], str | None]:
        """The webhook URLs and the SNS topic a finished job notifies."""
        urls = [u for u in (self.webhook_url, job.request.webhook_url) if u]
        topic = self.success_topic if job.status is JobStatus.COMPLETED else self.error_topic
        return list(dict.fromkeys(urls)), topic

    def notify(self, job: Job) -> int:
        """Deliver `job`'s notification everywhere it goes; returns how many deliveries failed."""
        urls, topic = self.targets(job)
        if not urls and not topic:
            return 0
        region = (topic_region(topic) if topic else None) or self.region or "local"
        message = notification(job, endpoint_name=self.endpoint_name, region=region)
        deadline = time.monotonic() + self.budget_s
        failures = 0
        for url in urls:
            trusted = url == self.webhook_url  # the operator's; a job's own is checked again now
            failures += 0 if self.post(url, message, deadline=deadline, checked=not trusted) else 1
        if topic and not self.publish(topic, message):
            failures += 1
        return failures

    def post(self, url: str, message: dict[str, Any], *, deadline: float | None = None, checked: bool = False) -> bool:
        """POST `message` to `url`, retrying transient failures with backoff until `deadline` (monotonic). With
        `checked`, the URL must pass the webhook policy and the connection goes to the address it checked.
        True when delivered."""
        shown = redact_url(url)
        deadline = deadline if deadline is not None else time.monotonic() + self.budget_s
        body = json.dumps(message).encode()
        headers = {"Content-Type": "application/json", "X-Koe-Event": str(message.get("eventName"))}
        problem = "no time left"
        for attempt in range(1, self.attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                target = self.policy.target(url) if checked else Target(url)
            except KoeError as exc:
                logger.warning("webhook %s refused for notification %s: %s", shown, message["inferenceId"], exc.message)
                return False
            try:
                response = self._http.post(
                    target.url,
                    content=body,
                    headers={**headers, **target.headers},
                    extensions=target.extensions,
                    timeout=min(self.timeout_s, left),
                )
            except httpx.HTTPError as exc:
                problem = type(exc).__name__  # its text may carry the URL
            else:
                if response.is_success:
                    return True
                problem = f"HTTP {response.status_code}"
                if response.status_code not in RETRY_STATUS:
                    logger.warning("webhook %s refused notification %s: %s", shown, message["inferenceId"], problem)
                    return False
            delay = self.backoff_s * 2 ** (attempt - 1)
            if attempt < self.attempts and time.monotonic() + delay < deadline:
                logger.info("webhook %s: %s; retry %d in %.1fs", shown, problem, attempt, delay)
                self._sleep(delay)
            else:
                break
        logger.warning("webhook %s: giving up on notification %s after %d tries: %s",
                       shown, message["inferenceId"], attempt, problem)  # fmt: skip
        return False

    def publish(self, topic: str, message: dict[str, Any]) -> bool:
        """Publish `message` to an SNS topic (boto3's own retries apply). True when accepted."""
        try:
            region = topic_region(topic)
            with self._lock:
                if region not in self._sns_clients:
                    self._sns_clients[region] = self._sns_factory(region)
                client = self._sns_clients[region]
            client.publish(TopicArn=topic, Message=json.dumps(message))
        except Exception as exc:  # botocore's errors, mapped to a log line and a metric by the caller
            logger.warning("SNS publish to %s failed: %s", topic, exc)
            return False
        return True

    def close(self) -> None:
        self._http.close()


def _sns_client(region: str | None) -> Any:
    import boto3

    return boto3.client("sns", region_name=region)
