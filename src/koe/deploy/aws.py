"""`Aws`: the one typed wrapper over the boto3 clients koe's deploy commands use.

Every AWS call of `koe image / deploy / invoke / status / destroy / iam-policy` goes through a method here,
named for its intention (`describe_model` returns None when the model does not exist, `delete_alarm` returns
whether there was one to delete). botocore's `ClientError` / `BotoCoreError` are mapped to
`koe.errors.AwsError` (or `AwsNotFoundError`) in `_call`, the only place that touches a client, with a
message that names the service, the operation and AWS's own code and text.

Built from a boto3 `Session` with an optional `endpoint_url`, so tests point every client at a moto server.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from koe.errors import AwsError, AwsNotFoundError

SAGEMAKER_NAMESPACE = "AWS/SageMaker"
VARIANT_DIMENSION = "sagemaker:variant:DesiredInstanceCount"

# Error codes that mean "that resource does not exist", per service. SageMaker answers a describe of a missing
# model / endpoint config / endpoint with ValidationException "Could not find ..."; moto's Application Auto
# Scaling uses ValidationException "No scaling policy found ..." where AWS uses ObjectNotFoundException.
_NOT_FOUND_CODES = frozenset(
    {
        "404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchEntity", "ResourceNotFound",
        "ResourceNotFoundException", "RepositoryNotFoundException", "ObjectNotFoundException",
        "NotFoundException",
    }
)  # fmt: skip
_NOT_FOUND_TEXT = ("could not find", "no scaling policy found", "no scalable target found", "does not exist")


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Url:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise AwsError(f"{url!r} is not an s3://bucket/key URL")
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class AsyncInvocation:
    """What InvokeEndpointAsync answers: the id and where the result or the error will appear."""

    inference_id: str
    output_location: str
    failure_location: str | None


@dataclass(frozen=True)
class RegistryLogin:
    """A Docker login for ECR, from GetAuthorizationToken."""

    registry: str
    username: str
    password: str


class Aws:
    """Typed, intention-named AWS calls. One instance per command; clients are created on first use."""

    def __init__(
        self,
        session: Any | None = None,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        max_attempts: int = 5,
    ) -> None:
        self._session = session if session is not None else boto3.Session(region_name=region)
        self.region: str = region or self._session.region_name or ""
        if not self.region:
            raise AwsError("no AWS region: pass --region or set AWS_REGION / AWS_DEFAULT_REGION")
        self.endpoint_url = endpoint_url
        self._config = Config(retries={"max_attempts": max_attempts, "mode": "standard"})
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()  # bulk invokes share one Aws across threads; Sessions are not safe
        self._account: str | None = None

    @classmethod
    def connect(cls, *, region: str | None = None, profile: str | None = None, endpoint_url: str | None = None) -> Aws:
        """The usual entry point: a Session from the standard credential chain (or `profile`)."""
        try:
            session = boto3.Session(profile_name=profile, region_name=region)
        except BotoCoreError as exc:
            raise AwsError(f"AWS session: {exc}") from None
        return cls(session, region=region, endpoint_url=endpoint_url)

    # ---- the edge ------------------------------------------------------------------------------------------

    def _client(self, service: str) -> Any:
        with self._clients_lock:
            if service not in self._clients:
                self._clients[service] = self._session.client(
                    service, region_name=self.region, endpoint_url=self.endpoint_url, config=self._config
                )
            return self._clients[service]

    def _call(self, service: str, operation: str, **params: Any) -> dict[str, Any]:
        """Call `operation` on `service`'s client; botocore errors become koe errors here and only here."""
        try:
            response: dict[str, Any] = getattr(self._client(service), operation)(**params)
        except ClientError as exc:
            raise _map_client_error(service, operation, exc) from None
        except BotoCoreError as exc:
            raise AwsError(f"{service} {operation}: {exc}") from None
        response.pop("ResponseMetadata", None)
        return response

    def _pages(self, service: str, operation: str, key: str, **params: Any) -> Iterator[Any]:
        while True:
            page = self._call(service, operation, **params)
            yield from page.get(key, [])
            token = page.get("NextToken")
            if not token:
                return
            params["NextToken"] = token

    def _maybe(self, service: str, operation: str, **params: Any) -> dict[str, Any] | None:
        try:
            return self._call(service, operation, **params)
        except AwsNotFoundError:
            return None

    # ---- identity ------------------------------------------------------------------------------------------

    def account_id(self) -> str:
        if self._account is None:
            self._account = str(self._call("sts", "get_caller_identity")["Account"])
        return self._account

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    # ---- SageMaker: models, endpoint configs, endpoints ----------------------------------------------------

    def describe_model(self, name: str) -> dict[str, Any] | None:
        return self._maybe("sagemaker", "describe_model", ModelName=name)

    def create_model(
        self,
        *,
        name: str,
        image_uri: str,
        model_data_url: str | None,
        environment: Mapping[str, str],
        role_arn: str,
        tags: Mapping[str, str],
    ) -> str:
        container: dict[str, Any] = {"Image": image_uri, "Environment": dict(environment)}
        if model_data_url:  # none: the model is baked into the image
            container["ModelDataUrl"] = model_data_url
        response = self._call(
            "sagemaker", "create_model", ModelName=name, PrimaryContainer=container,
            ExecutionRoleArn=role_arn, Tags=_tags(tags),
        )  # fmt: skip
        return str(response["ModelArn"])

    def delete_model(self, name: str) -> bool:
        return self._maybe("sagemaker", "delete_model", ModelName=name) is not None

    def list_model_names(self, name_contains: str) -> list[str]:
        items = self._pages("sagemaker", "list_models", "Models", NameContains=name_contains, MaxResults=100)
        return [item["ModelName"] for item in items]

    def describe_endpoint_config(self, name: str) -> dict[str, Any] | None:
        return self._maybe("sagemaker", "describe_endpoint_config", EndpointConfigName=name)

    def create_endpoint_config(
        self,
        *,
        name: str,
        variants: Sequence[Mapping[str, Any]],
        async_config: Mapping[str, Any],
        tags: Mapping[str, str],
        volume_kms_key: str | None = None,
    ) -> str:
        extra = {"KmsKeyId": volume_kms_key} if volume_kms_key else {}
        response = self._call(
            "sagemaker", "create_endpoint_config", EndpointConfigName=name,
            ProductionVariants=[dict(v) for v in variants], AsyncInferenceConfig=dict(async_config),
            Tags=_tags(tags), **extra,
        )  # fmt: skip
        return str(response["EndpointConfigArn"])

    def delete_endpoint_config(self, name: str) -> bool:
        return self._maybe("sagemaker", "delete_endpoint_config", EndpointConfigName=name) is not None

    def list_endpoint_config_names(self, name_contains: str) -> list[str]:
        items = self._pages(
            "sagemaker",
            "list_endpoint_configs",
            "EndpointConfigs",
            NameContains=name_contains,
            MaxResults=100,
        )
        return [item["EndpointConfigName"] for item in items]

    def describe_endpoint(self, name: str) -> dict[str, Any] | None:
        return self._maybe("sagemaker", "describe_endpoint", EndpointName=name)

    def create_endpoint(self, *, name: str, config_name: str, tags: Mapping[str, str]) -> str:
        response = self._call(
            "sagemaker",
            "create_endpoint",
            EndpointName=name,
            EndpointConfigName=config_name,
            Tags=_tags(tags),
        )
        return str(response["EndpointArn"])

    def update_endpoint(self, *, name: str, config_name: str) -> str:
        response = self._call("sagemaker", "update_endpoint", EndpointName=name, EndpointConfigName=config_name)
        return str(response["EndpointArn"])

    def delete_endpoint(self, name: str) -> bool:
        return self._maybe("sagemaker", "delete_endpoint", EndpointName=name) is not None

    # ---- SageMaker runtime ---------------------------------------------------------------------------------

    def invoke_endpoint_async(
        self,
        *,
        endpoint: str,
        input_location: str,
        content_type: str,
        accept: str,
        custom_attributes: str | None,
        inference_id: str,
        request_ttl_s: int | None = None,
        invocation_timeout_s: int | None = None,
    ) -> AsyncInvocation:
        """`invocation_timeout_s` None leaves AWS's default (900 s); koe's callers always send one."""
        params: dict[str, Any] = {
            "EndpointName": endpoint, "InputLocation": input_location, "ContentType": content_type,
            "Accept": accept, "InferenceId": inference_id,
        }  # fmt: skip
        if custom_attributes:
            params["CustomAttributes"] = custom_attributes
        if request_ttl_s is not None:
            params["RequestTTLSeconds"] = request_ttl_s
        if invocation_timeout_s is not None:
            params["InvocationTimeoutSeconds"] = invocation_timeout_s
        response = self._call("sagemaker-runtime", "invoke_endpoint_async", **params)
        return AsyncInvocation(
            inference_id=str(response.get("InferenceId") or inference_id),
            output_location=str(response["OutputLocation"]),
            # Only present when the endpoint config has an S3FailurePath (AWS's own tests read it
            # defensively).
            failure_location=response.get("FailureLocation") or None,
        )

    # ---- Application Auto Scaling --------------------------------------------------------------------------

    def describe_scalable_target(self, resource_id: str) -> dict[str, Any] | None:
        targets = self._call(
            "application-autoscaling", "describe_scalable_targets", ServiceNamespace="sagemaker",
            ResourceIds=[resource_id], ScalableDimension=VARIANT_DIMENSION,
        )["ScalableTargets"]  # fmt: skip
        return dict(targets[0]) if targets else None

    def register_scalable_target(self, *, resource_id: str, min_capacity: int, max_capacity: int) -> None:
        self._call(
            "application-autoscaling", "register_scalable_target", ServiceNamespace="sagemaker",
            ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION, MinCapacity=min_capacity,
            MaxCapacity=max_capacity,
        )  # fmt: skip

    def deregister_scalable_target(self, resource_id: str) -> bool:
        found = self._maybe(
            "application-autoscaling", "deregister_scalable_target", ServiceNamespace="sagemaker",
            ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION,
        )  # fmt: skip
        return found is not None

    def describe_scaling_policies(self, resource_id: str) -> list[dict[str, Any]]:
        return list(
            self._pages(
                "application-autoscaling", "describe_scaling_policies", "ScalingPolicies",
                ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION,
            )
        )  # fmt: skip

    def put_scaling_policy(
        self, *, name: str, resource_id: str, policy_type: str, configuration: Mapping[str, Any]
    ) -> str:
        """Create or replace a policy; returns its ARN (the alarm of a step policy needs it)."""
        key = {
            "TargetTrackingScaling": "TargetTrackingScalingPolicyConfiguration",
            "StepScaling": "StepScalingPolicyConfiguration",
        }[policy_type]
        response = self._call(
            "application-autoscaling", "put_scaling_policy", PolicyName=name, ServiceNamespace="sagemaker",
            ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION, PolicyType=policy_type,
            **{key: dict(configuration)},
        )  # fmt: skip
        return str(response["PolicyARN"])

    def delete_scaling_policy(self, *, name: str, resource_id: str) -> bool:
        found = self._maybe(
            "application-autoscaling", "delete_scaling_policy", PolicyName=name, ServiceNamespace="sagemaker",
            ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION,
        )  # fmt: skip
        return found is not None

    def describe_scheduled_actions(self, resource_id: str) -> list[dict[str, Any]]:
        return list(
            self._pages(
                "application-autoscaling", "describe_scheduled_actions", "ScheduledActions",
                ServiceNamespace="sagemaker", ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION,
            )
        )  # fmt: skip

    def put_scheduled_action(
        self, *, name: str, resource_id: str, schedule: str, timezone: str, min_capacity: int, max_capacity: int
    ) -> None:
        """Create or replace a scheduled action that sets the target's capacity bounds."""
        self._call(
            "application-autoscaling", "put_scheduled_action", ServiceNamespace="sagemaker",
            ScheduledActionName=name, ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION,
            Schedule=schedule, Timezone=timezone,
            ScalableTargetAction={"MinCapacity": min_capacity, "MaxCapacity": max_capacity},
        )  # fmt: skip

    def delete_scheduled_action(self, *, name: str, resource_id: str) -> bool:
        found = self._maybe(
            "application-autoscaling", "delete_scheduled_action", ServiceNamespace="sagemaker",
            ScheduledActionName=name, ResourceId=resource_id, ScalableDimension=VARIANT_DIMENSION,
        )  # fmt: skip
        return found is not None

    def set_desired_instances(self, *, endpoint: str, variant: str, count: int) -> None:
        """UpdateEndpointWeightsAndCapacities: start (or stop) instances now."""
        self._call(
            "sagemaker", "update_endpoint_weights_and_capacities", EndpointName=endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": variant, "DesiredInstanceCount": count}],
        )  # fmt: skip

    # ---- CloudWatch Logs -----------------------------------------------------------------------------------

    def log_events(
        self, group: str, *, start_ms: int, end_ms: int | None = None, limit: int = 10000
    ) -> list[dict[str, Any]]:
        """Events of a log group from `start_ms` (epoch milliseconds), oldest first; [] for a missing group."""
        params: dict[str, Any] = {"logGroupName": group, "startTime": start_ms, "interleaved": True}
        if end_ms is not None:
            params["endTime"] = end_ms
        events: list[dict[str, Any]] = []
        try:
            for event in self._pages("logs", "filter_log_events", "events", **params):
                events.append(dict(event))
                if len(events) >= limit:
                    break
        except AwsNotFoundError:
            return []
        return sorted(events, key=lambda e: (e.get("timestamp", 0), e.get("eventId", "")))

    # ---- CloudWatch ----------------------------------------------------------------------------------------

    def describe_alarm(self, name: str) -> dict[str, Any] | None:
        alarms = self._call("cloudwatch", "describe_alarms", AlarmNames=[name])["MetricAlarms"]
        return dict(alarms[0]) if alarms else None

    def put_metric_alarm(self, alarm: Mapping[str, Any]) -> None:
        """Create or replace a metric alarm (`alarm` holds PutMetricAlarm's parameters)."""
        self._call("cloudwatch", "put_metric_alarm", **dict(alarm))

    def delete_alarm(self, name: str) -> bool:
        # DeleteAlarms fails on AWS for a name that does not exist, so look first.
        if self.describe_alarm(name) is None:
            return False
        self._call("cloudwatch", "delete_alarms", AlarmNames=[name])
        return True

    def metric_statistics(
        self,
        *,
        metric: str,
        endpoint: str,
        minutes: int = 30,
        period_s: int = 300,
        statistic: str = "Maximum",
    ) -> list[tuple[datetime, float]]:
        """Recent datapoints of an AWS/SageMaker endpoint metric, oldest first."""
        end = datetime.now(timezone.utc)
        response = self._call(
            "cloudwatch", "get_metric_statistics", Namespace=SAGEMAKER_NAMESPACE, MetricName=metric,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}],
            StartTime=end - timedelta(minutes=minutes),
            EndTime=end, Period=period_s, Statistics=[statistic],
        )  # fmt: skip
        points = [(p["Timestamp"], float(p[statistic])) for p in response.get("Datapoints", [])]
        return sorted(points)

    # ---- S3 ------------------------------------------------------------------------------------------------

    def bucket_exists(self, bucket: str) -> bool:
        return self._maybe("s3", "head_bucket", Bucket=bucket) is not None

    def create_bucket(self, bucket: str) -> None:
        params: dict[str, Any] = {"Bucket": bucket}
        if self.region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        self._call("s3", "create_bucket", **params)

    def object_exists(self, url: str) -> bool:
        loc = S3Url.parse(url)
        return self._maybe("s3", "head_object", Bucket=loc.bucket, Key=loc.key) is not None

    def upload_file(self, path: Path, url: str, *, content_type: str | None = None) -> None:
        loc = S3Url.parse(url)
        extra = {"ContentType": content_type} if content_type else None
        try:
            self._client("s3").upload_file(str(path), loc.bucket, loc.key, ExtraArgs=extra)
        except ClientError as exc:
            raise _map_client_error("s3", "upload_file", exc) from None
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise AwsError(f"s3 upload of {path} to {url}: {exc}") from None

    def read_object(self, url: str) -> tuple[bytes, str]:
        """The object's bytes and content type."""
        loc = S3Url.parse(url)
        response = self._call("s3", "get_object", Bucket=loc.bucket, Key=loc.key)
        body = response["Body"]
        try:
            return body.read(), str(response.get("ContentType") or "application/octet-stream")
        finally:
            body.close()

    def lifecycle_rules(self, bucket: str) -> list[dict[str, Any]]:
        try:
            return [dict(r) for r in self._call("s3", "get_bucket_lifecycle_configuration", Bucket=bucket)["Rules"]]
        except AwsNotFoundError:
            return []
        except AwsError as exc:  # NoSuchLifecycleConfiguration: the bucket has no rules
            if "NoSuchLifecycleConfiguration" in exc.message:
                return []
            raise

    def put_lifecycle_rules(self, bucket: str, rules: Sequence[Mapping[str, Any]]) -> None:
        """Replace the bucket's lifecycle rules (all of them: pass the ones to keep); none deletes the config."""
        if rules:
            config = {"Rules": [dict(r) for r in rules]}
            self._call("s3", "put_bucket_lifecycle_configuration", Bucket=bucket, LifecycleConfiguration=config)
        else:
            self._call("s3", "delete_bucket_lifecycle", Bucket=bucket)

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        items = self._pages_s3(bucket, prefix)
        return [item["Key"] for item in items]

    def list_objects(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        """(key, size) of every object under `prefix`."""
        return [(item["Key"], int(item.get("Size", 0))) for item in self._pages_s3(bucket, prefix)]

    def _pages_s3(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        while True:
            page = self._call("s3", "list_objects_v2", **params)
            yield from page.get("Contents", [])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Delete every object under `prefix` (which must be non-empty); returns how many."""
        if not prefix.strip("/"):
            raise AwsError("refusing to delete a whole bucket: the prefix is empty")
        if not self.bucket_exists(bucket):
            return 0
        keys = self.list_keys(bucket, prefix.rstrip("/") + "/")
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            response = self._call("s3", "delete_objects", Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise AwsError(f"s3 delete_objects: {first.get('Key')}: {first.get('Code')} {first.get('Message')}")
        return len(keys)

    # ---- ECR -----------------------------------------------------------------------------------------------

    def describe_repository(self, name: str) -> dict[str, Any] | None:
        found = self._maybe("ecr", "describe_repositories", repositoryNames=[name])
        return dict(found["repositories"][0]) if found and found.get("repositories") else None

    def create_repository(self, name: str) -> dict[str, Any]:
        response = self._call(
            "ecr", "create_repository", repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
        )
        return dict(response["repository"])

    def registry_login(self) -> RegistryLogin:
        data = self._call("ecr", "get_authorization_token")["authorizationData"][0]
        username, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
        return RegistryLogin(registry=str(data["proxyEndpoint"]), username=username, password=password)

    # ---- IAM -----------------------------------------------------------------------------------------------

    def get_role(self, name: str) -> dict[str, Any] | None:
        found = self._maybe("iam", "get_role", RoleName=name)
        return dict(found["Role"]) if found else None

    def create_role(self, *, name: str, trust_policy: str, description: str) -> str:
        response = self._call(
            "iam",
            "create_role",
            RoleName=name,
            AssumeRolePolicyDocument=trust_policy,
            Description=description,
        )
        return str(response["Role"]["Arn"])

    def update_trust_policy(self, *, name: str, trust_policy: str) -> None:
        self._call("iam", "update_assume_role_policy", RoleName=name, PolicyDocument=trust_policy)

    def put_role_policy(self, *, role: str, policy_name: str, document: str) -> None:
        self._call("iam", "put_role_policy", RoleName=role, PolicyName=policy_name, PolicyDocument=document)

    def get_role_policy(self, *, role: str, policy_name: str) -> dict[str, Any] | None:
        return self._maybe("iam", "get_role_policy", RoleName=role, PolicyName=policy_name)

    # ---- SNS -----------------------------------------------------------------------------------------------

    def topic_exists(self, arn: str) -> bool:
        return self._maybe("sns", "get_topic_attributes", TopicArn=arn) is not None

    def subscribe_queue(self, *, topic_arn: str, queue_arn: str) -> str:
        """Subscribe an SQS queue to a topic; the subscription ARN."""
        response = self._call("sns", "subscribe", TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
        return str(response["SubscriptionArn"])

    def unsubscribe(self, subscription_arn: str) -> bool:
        return self._maybe("sns", "unsubscribe", SubscriptionArn=subscription_arn) is not None

    # ---- SQS -----------------------------------------------------------------------------------------------

    def create_queue(self, name: str, *, policy: str | None = None) -> tuple[str, str]:
        """Create a queue (with an access policy); its (URL, ARN)."""
        attributes = {"Policy": policy} if policy else {}
        url = str(self._call("sqs", "create_queue", QueueName=name, Attributes=attributes)["QueueUrl"])
        arn = self._call("sqs", "get_queue_attributes", QueueUrl=url, AttributeNames=["QueueArn"])
        return url, str(arn["Attributes"]["QueueArn"])

    def set_queue_policy(self, url: str, policy: str) -> None:
        self._call("sqs", "set_queue_attributes", QueueUrl=url, Attributes={"Policy": policy})

    def receive_messages(self, url: str, *, wait_s: int = 20, max_messages: int = 10) -> list[dict[str, Any]]:
        """Long-poll the queue for up to `wait_s` seconds (0..20)."""
        response = self._call(
            "sqs", "receive_message", QueueUrl=url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_s
        )
        return [dict(m) for m in response.get("Messages", [])]

    def delete_messages(self, url: str, receipts: Sequence[str]) -> None:
        for start in range(0, len(receipts), 10):
            entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts[start : start + 10])]
            self._call("sqs", "delete_message_batch", QueueUrl=url, Entries=entries)

    def delete_queue(self, url: str) -> bool:
        return self._maybe("sqs", "delete_queue", QueueUrl=url) is not None


def _tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _map_client_error(service: str, operation: str, exc: ClientError) -> AwsError:
    error = exc.response.get("Error", {})
    code = str(error.get("Code") or "Unknown")
    text = str(error.get("Message") or error.get("message") or "").strip()
    if "<html" in text.lower():  # a proxy or emulator answering with an HTML error page
        text = f"HTTP {exc.response.get('ResponseMetadata', {}).get('HTTPStatusCode', '?')}"
    message = f"{service} {operation}: {code}: {text}" if text else f"{service} {operation}: {code}"
    if code in _NOT_FOUND_CODES or (code == "ValidationException" and text.lower().startswith(_NOT_FOUND_TEXT)):
        return AwsNotFoundError(message)
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        message += " (the credentials in use lack this permission; see `koe iam-policy` and docs/deploy.md)"
    elif code in (
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    ):
        message += " (refresh your AWS credentials)"
    return AwsError(message)
