"""Following SageMaker's async notifications through a temporary SQS queue (`koe invoke --wait` with topics).

    SuccessTopic ─┐                                   ┌─ Completed: read responseParameters.outputLocation
                  ├─▶ SQS queue koe-<endpoint>-<id> ──┤
    ErrorTopic  ──┘   (created for one run, removed)  └─ Failed: read the failure location, else failureReason

The queue exists only while `koe invoke --wait` runs: it is created, subscribed to the endpoint's topics
BEFORE anything is invoked (so no notice is missed), long-polled, then unsubscribed and deleted, also when the
run fails or is interrupted. The SNS message is SageMaker's JSON (`invocationStatus`, `inferenceId`,
`responseParameters.outputLocation`, `failureReason`); the TestNotification SageMaker sends when an endpoint is
created or updated is ignored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from koe.deploy.aws import Aws
from koe.errors import KoeError


@dataclass(frozen=True)
class Notice:
    """One SageMaker async result notification."""

    inference_id: str
    completed: bool
    output_location: str | None = None
    failure_location: str | None = None
    reason: str | None = None


def parse_notice(body: str) -> Notice | None:
    """A notice from an SQS message body (the SNS envelope, or the raw message); None for anything else."""
    try:
        event: Any = json.loads(body)
        if isinstance(event, dict) and isinstance(event.get("Message"), str):  # the SNS envelope
            event = json.loads(event["Message"])
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("eventName") != "InferenceResult" or not event.get("inferenceId"):
        return None
    response = event.get("responseParameters") or {}
    return Notice(
        inference_id=str(event["inferenceId"]),
        completed=event.get("invocationStatus") == "Completed",
        output_location=response.get("outputLocation"),
        # Where the failure location sits in an error notice is not documented: read it defensively.
        failure_location=response.get("failureLocation") or event.get("failureLocation"),
        reason=event.get("failureReason"),
    )


def queue_policy(queue_arn: str, topics: Sequence[str]) -> str:
    """Only the endpoint's own topics may send to the queue."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": list(topics)}},
                }
            ],
        }
    )


class NotificationQueue:
    """A queue subscribed to `topics` for the duration of a `with` block."""

    def __init__(self, aws: Aws, endpoint: str, topics: Sequence[str]) -> None:
        self.aws = aws
        self.topics = tuple(dict.fromkeys(topics))
        self.name = f"koe-{endpoint}-{uuid.uuid4().hex[:8]}"[:80]
        self.url: str | None = None
        self.problems: list[str] = []  # what close() could not remove (reported by the caller)
        self._subscriptions: list[str] = []

    def __enter__(self) -> NotificationQueue:
        try:
            self.url, arn = self.aws.create_queue(self.name)
            self.aws.set_queue_policy(self.url, queue_policy(arn, self.topics))
            for topic in self.topics:
                self._subscriptions.append(self.aws.subscribe_queue(topic_arn=topic, queue_arn=arn))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def notices(self, wait_s: int = 20) -> list[Notice]:
        """The notices that arrive within `wait_s` seconds (long polling); received messages are deleted."""
        if self.url is None:
            return []
        messages = self.aws.receive_messages(self.url, wait_s=max(0, min(20, wait_s)))
        if messages:
            self.aws.delete_messages(self.url, [m["ReceiptHandle"] for m in messages])
        return [n for n in (parse_notice(str(m.get("Body", ""))) for m in messages) if n is not None]

    def close(self) -> None:
        """Unsubscribe and delete the queue; best effort (a failure here must not hide the run's own error)."""
        for arn in self._subscriptions:
            try:
                self.aws.unsubscribe(arn)
            except KoeError as exc:
                self.problems.append(f"subscription {arn} is left: {exc.message}")
        self._subscriptions = []
        if self.url is not None:
            try:
                self.aws.delete_queue(self.url)
            except KoeError as exc:
                self.problems.append(f"queue {self.url} is left: {exc.message}")
            self.url = None
