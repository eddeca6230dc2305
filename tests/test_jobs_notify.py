"""Notifications: SageMaker's SNS message shape, webhook retries against a real local receiver, and a real SNS
topic on a moto server (delivered to an SQS queue)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from koe.jobs.job import Job, JobErrorInfo, JobRequest, JobStatus
from koe.jobs.notify import Notifier, iso_time, notification, topic_region
from koe.jobs.webhook import WebhookPolicy
from support.jobs_support import boto_client, moto_server, webhook_receiver


def job(status: JobStatus = JobStatus.COMPLETED, **changes: Any) -> Job:
    request = JobRequest(
        input_location="s3://in/jfk.flac",
        content_type="audio/flac",
        format="srt",
        output_location="s3://out/job-1.out",
        failure_location="s3://errors/job-1-error.out",
        webhook_url=changes.pop("webhook_url", None),
    )
    values: dict[str, Any] = {
        "id": "job-1", "status": status, "request": request, "created_at": 1643150760.455,
        "expires_at": 1643172360.455, "finished_at": 1643150760.608, "output_content_type": "application/x-subrip",
        **changes,
    }  # fmt: skip
    return Job(**values)


def test_completed_message_has_sagemakers_shape() -> None:
    message = notification(job(), endpoint_name="local", region="us-east-1")
    assert message == {
        "awsRegion": "us-east-1",
        "eventTime": "2022-01-25T22:46:00.608Z",
        "receivedTime": "2022-01-25T22:46:00.455Z",
        "invocationStatus": "Completed",
        "requestParameters": {
            "contentType": "audio/flac",
            "endpointName": "local",
            "inputLocation": "s3://in/jfk.flac",
        },
        "responseParameters": {"contentType": "application/x-subrip", "outputLocation": "s3://out/job-1.out"},
        "inferenceId": "job-1",
        "eventVersion": "1.0",
        "eventSource": "aws:sagemaker",
        "eventName": "InferenceResult",
    }


def test_failed_message_carries_the_reason_and_failure_location() -> None:
    failed = job(JobStatus.FAILED, error=JobErrorInfo(type="input_not_found", message="no object at s3://in/x"))
    message = notification(failed, endpoint_name="ep")
    assert message["invocationStatus"] == "Failed"
    assert message["failureReason"] == "input_not_found: no object at s3://in/x"
    assert message["responseParameters"]["failureLocation"] == "s3://errors/job-1-error.out"
    expired = notification(
        job(JobStatus.EXPIRED, error=JobErrorInfo(type="request_expired", message="ttl")), endpoint_name="ep"
    )
    assert expired["invocationStatus"] == "Failed" and expired["failureReason"].startswith("request_expired")


def test_helpers() -> None:
    assert iso_time(None) is None
    assert topic_region("arn:aws:sns:eu-west-1:123456789012:koe") == "eu-west-1"
    assert topic_region("not-an-arn") is None


def test_webhooks_are_retried_with_backoff() -> None:
    delays: list[float] = []
    with webhook_receiver(fail_first=2) as receiver:
        loopback = WebhookPolicy(["127.0.0.1"])  # jobs' own webhooks: the receiver is on loopback
        notifier = Notifier(webhook_url=receiver.url, attempts=5, backoff_s=0.01, sleep=delays.append, policy=loopback)
        assert notifier.notify(job()) == 0
        assert receiver.refused == 2 and len(receiver.messages) == 1 and delays == [0.01, 0.02]
        assert receiver.messages[0]["inferenceId"] == "job-1"
        # The endpoint's webhook and the job's own both get it (once each, even if they are the same URL).
        assert notifier.notify(job(webhook_url=receiver.url)) == 0
        assert len(receiver.messages) == 2
        with webhook_receiver() as other:
            assert notifier.notify(job(webhook_url=other.url)) == 0
            assert len(other.messages) == 1 and len(receiver.messages) == 3
        notifier.close()


def test_webhook_gives_up() -> None:
    delays: list[float] = []
    with webhook_receiver(fail_first=10) as receiver:
        notifier = Notifier(webhook_url=receiver.url, attempts=3, backoff_s=0.01, sleep=delays.append)
        assert notifier.notify(job()) == 1
        assert receiver.refused == 3 and delays == [0.01, 0.02]

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    notifier = Notifier(webhook_url="http://hook.invalid/x", attempts=5, http=http, sleep=delays.append)
    assert notifier.notify(job()) == 1  # a 4xx is not retried
    assert len(delays) == 2
    # Nothing to notify: no deliveries, no failures.
    assert Notifier().notify(job()) == 0


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


def test_sns_topics_get_the_message(moto: str) -> None:
    sns, sqs = boto_client("sns", moto), boto_client("sqs", moto)
    topics = {name: sns.create_topic(Name=name)["TopicArn"] for name in ("done", "errors")}
    queue_url = sqs.create_queue(QueueName="koe-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for arn in topics.values():
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    notifier = Notifier(
        success_topic=topics["done"],
        error_topic=topics["errors"],
        sns_client_factory=lambda region: boto_client("sns", moto),
    )
    assert notifier.notify(job()) == 0
    failed = job(JobStatus.FAILED, id="job-2", error=JobErrorInfo(type="engine_error", message="boom"))
    assert notifier.notify(failed) == 0
    received = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    envelopes = [json.loads(m["Body"]) for m in received]
    by_topic = {e["TopicArn"]: json.loads(e["Message"]) for e in envelopes}
    assert by_topic[topics["done"]]["invocationStatus"] == "Completed"
    assert by_topic[topics["errors"]]["inferenceId"] == "job-2"
    assert by_topic[topics["errors"]]["failureReason"] == "engine_error: boom"
    broken = Notifier(success_topic="arn:aws:sns:us-east-1:123456789012:missing",
                      sns_client_factory=lambda region: boto_client("sns", moto))  # fmt: skip
    assert broken.notify(job()) == 1
