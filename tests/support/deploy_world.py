"""What every deploy test starts from: a console wide enough to search its tables, and the account a user has
before deploying (a bucket holding model data, SNS topics)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from support.moto_aws import Raw

MODEL_KEY = "models/tiny/model.tar.gz"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich tables on one line each, so outputs can be searched


def seed(raw: Raw, bucket: str, topics: Mapping[str, str]) -> dict[str, str]:
    """Create `bucket` with model data at MODEL_KEY and one SNS topic per {role: topic name}; {role: topic ARN}."""
    raw("s3").create_bucket(Bucket=bucket)
    raw("s3").put_object(Bucket=bucket, Key=MODEL_KEY, Body=b"not really a model")
    sns = raw("sns")
    return {role: sns.create_topic(Name=name)["TopicArn"] for role, name in topics.items()}
