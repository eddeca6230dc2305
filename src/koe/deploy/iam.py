"""`koe iam-policy`: a least-privilege execution role for one koe endpoint.

What SageMaker does with the role, and so all the role may do:
    S3       read model data and inputs, write outputs and failures: only under s3://<bucket>/<prefix>/
             (plus a model.tar.gz given elsewhere, read-only)
    ECR      pull the image: GetAuthorizationToken (account-wide by design) + layer reads on one repository
    Logs     the endpoint's own log group, /aws/sagemaker/Endpoints/<name>
    Metrics  PutMetricData (no resource-level control exists), limited by namespace condition
    SNS      Publish to the success/error topics, when given
    KMS      use of one customer key, when given (encrypted bucket, outputs, topics, volume)

The trust policy lets only SageMaker assume the role, and only on behalf of this account (`aws:SourceAccount`:
the confused-deputy guard AWS recommends for service roles).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from koe.deploy.aws import Aws, S3Url
from koe.errors import OptionsError

ECR_IMAGE_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/(?P<repo>[a-z0-9._/-]+)(?:[:@].+)?$"
)

KMS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[a-zA-Z0-9-]+$")
KMS_ID_RE = re.compile(r"^[a-zA-Z0-9-]{1,64}$")


def trust_policy(account: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "sagemaker.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": account}},
            }
        ],
    }


@dataclass(frozen=True)
class RoleScope:
    """What one endpoint's role must reach."""

    endpoint: str
    bucket: str
    prefix: str
    image_uri: str
    account: str
    region: str
    partition: str = "aws"
    topics: tuple[str, ...] = ()
    model_data_url: str | None = None
    kms_key: str | None = None
    inputs: tuple[str, ...] = ()  # s3://bucket/prefix/ that `koe invoke s3://...` reads in place


def kms_key_arn(key: str, *, partition: str, region: str, account: str) -> str:
    """A key ARN from an ARN or a key id (IAM needs the key's ARN; an alias names no key in a policy)."""
    if KMS_ARN_RE.match(key):
        return key
    if KMS_ID_RE.match(key) and not key.startswith("alias"):
        return f"arn:{partition}:kms:{region}:{account}:key/{key}"
    raise OptionsError(f"kms key: {key!r}: give the key's id or ARN (not an alias)")


def repository_arn(image_uri: str, partition: str = "aws") -> str:
    match = ECR_IMAGE_RE.match(image_uri)
    if not match:
        raise OptionsError(f"image: {image_uri!r} is not an ECR image URI (ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO)")
    return f"arn:{partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}"


def execution_policy(scope: RoleScope) -> dict[str, Any]:
    p, prefix = scope.partition, scope.prefix.strip("/")
    bucket_arn = f"arn:{p}:s3:::{scope.bucket}"
    objects = [f"{bucket_arn}/{prefix}/*"]
    statements: list[dict[str, Any]] = [
        {"Sid": "DataUnderPrefix", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject",
         "s3:AbortMultipartUpload"], "Resource": objects},
        {"Sid": "ListPrefix", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [bucket_arn],
         "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}},
        {"Sid": "BucketLocation", "Effect": "Allow", "Action": ["s3:GetBucketLocation"],
         "Resource": [bucket_arn]},
    ]  # fmt: skip
    if scope.model_data_url and not scope.model_data_url.startswith(f"s3://{scope.bucket}/{prefix}/"):
        loc = S3Url.parse(scope.model_data_url)
        statements.append({"Sid": "ModelData", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": [f"arn:{p}:s3:::{loc.bucket}/{loc.key}"]})  # fmt: skip
    if scope.inputs:
        # `koe invoke s3://bucket/prefix/` invokes objects where they are: SageMaker reads them with this role.
        resources = sorted({f"arn:{p}:s3:::{S3Url.parse(u).bucket}/{S3Url.parse(u).key}*" for u in scope.inputs})
        statements.append({"Sid": "InputsElsewhere", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": resources})  # fmt: skip
    statements += [
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {"Sid": "EcrPull", "Effect": "Allow", "Action": ["ecr:BatchCheckLayerAvailability",
         "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
         "Resource": [repository_arn(scope.image_uri, p)]},
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream",
         "logs:PutLogEvents", "logs:DescribeLogStreams"], "Resource": [
            f"arn:{p}:logs:{scope.region}:{scope.account}:log-group:/aws/sagemaker/Endpoints/{scope.endpoint}",
            f"arn:{p}:logs:{scope.region}:{scope.account}:log-group:/aws/sagemaker/Endpoints/{scope.endpoint}:*",
        ]},
        {"Sid": "Metrics", "Effect": "Allow", "Action": ["cloudwatch:PutMetricData"], "Resource": "*",
         "Condition": {"StringLike": {"cloudwatch:namespace": ["AWS/SageMaker", "/aws/sagemaker/*"]}}},
    ]  # fmt: skip
    if scope.topics:
        statements.append({"Sid": "Notify", "Effect": "Allow", "Action": ["sns:Publish"],
                           "Resource": sorted(set(scope.topics))})  # fmt: skip
    if scope.kms_key:
        # Reading inputs and writing outputs in a bucket encrypted with the key, encrypting async outputs
        # (KmsKeyId), publishing to encrypted topics, and the instance's storage volume.
        arn = kms_key_arn(scope.kms_key, partition=p, region=scope.region, account=scope.account)
        statements.append({"Sid": "Kms", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:Encrypt",
                           "kms:GenerateDataKey", "kms:ReEncrypt*", "kms:DescribeKey", "kms:CreateGrant"],
                           "Resource": [arn]})  # fmt: skip
    return {"Version": "2012-10-17", "Statement": statements}


def role_name_for(endpoint: str) -> str:
    return f"koe-{endpoint}-sagemaker"[:64]


def ensure_role(aws: Aws, *, role_name: str, policy: dict[str, Any], endpoint: str) -> tuple[str, bool]:
    """Create the role (or bring an existing one up to date): the trust policy plus one inline policy.

    Returns (role ARN, created). Running it again changes nothing but the policy text.
    """
    trust = json.dumps(trust_policy(aws.account_id()))
    existing = aws.get_role(role_name)
    if existing is None:
        arn = aws.create_role(name=role_name, trust_policy=trust, description=f"koe: SageMaker endpoint {endpoint}")
        created = True
    else:
        arn = str(existing["Arn"])
        aws.update_trust_policy(name=role_name, trust_policy=trust)
        created = False
    aws.put_role_policy(role=role_name, policy_name=f"koe-{endpoint}", document=json.dumps(policy))
    return arn, created


def scope_for(
    aws: Aws,
    *,
    endpoint: str,
    bucket: str,
    prefix: str | None,
    image_uri: str,
    topics: Sequence[str | None] = (),
    model_data_url: str | None = None,
    kms_key: str | None = None,
    inputs: Sequence[str] = (),
) -> RoleScope:
    return RoleScope(
        endpoint=endpoint, bucket=bucket, prefix=(prefix or f"koe/{endpoint}").strip("/"),
        image_uri=image_uri,
        account=aws.account_id(), region=aws.region, partition=aws.partition,
        topics=tuple(t for t in topics if t), model_data_url=model_data_url, kms_key=kms_key,
        inputs=tuple(inputs),
    )  # fmt: skip
