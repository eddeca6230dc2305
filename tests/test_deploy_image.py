"""`koe image` and `koe iam-policy`: docker commands (no Docker engine runs here) and the AWS side on moto."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from koe.cli import app
from koe.deploy.aws import Aws
from koe.deploy.iam import RoleScope, ensure_role, execution_policy, repository_arn, trust_policy
from koe.deploy.image import ImageSpec, build_image, run_command
from koe.errors import DeployError, OptionsError
from support import moto_aws
from support.moto_aws import ACCOUNT, Raw

aws, aws_env, moto_url, raw = moto_aws.aws, moto_aws.aws_env, moto_aws.moto_url, moto_aws.raw  # fixtures
URI = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/koe"


class Recorder:
    """Stands in for the Docker CLI: records each command and what went to its stdin."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.stdin: list[bytes | None] = []

    def __call__(self, command: Sequence[str], stdin: bytes | None) -> None:
        self.commands.append(list(command))
        self.stdin.append(stdin)


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture
def dockerfile(tmp_path: Path) -> ImageSpec:
    path = tmp_path / "docker" / "Dockerfile"
    path.parent.mkdir()
    path.write_text("FROM scratch\n")
    return ImageSpec(dockerfile=path, context=tmp_path)


def test_dry_run_without_push_prints_the_build_only(dockerfile: ImageSpec) -> None:
    recorder = Recorder()
    result = build_image(dockerfile, dry_run=True, runner=recorder, console=quiet())
    assert recorder.commands == []
    assert result.uri == "koe:latest" and result.aws_calls == ()
    assert result.commands == (
        f"docker build --platform linux/amd64 -f {dockerfile.dockerfile} -t koe:latest {dockerfile.context}",
    )


def test_dry_run_push_reads_aws_but_creates_nothing(aws: Aws, raw: Raw, dockerfile: ImageSpec) -> None:
    recorder = Recorder()
    result = build_image(dockerfile, aws=aws, push=True, dry_run=True, runner=recorder, console=quiet())
    assert recorder.commands == []
    assert result.uri == f"{URI}:latest"
    assert result.aws_calls == (
        "sts GetCallerIdentity", "ecr DescribeRepositories(koe)", "ecr CreateRepository(koe, scanOnPush)",
        "ecr GetAuthorizationToken",
    )  # fmt: skip
    assert result.commands[1:] == (
        f"docker login --username AWS --password-stdin {ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com",
        f"docker tag koe:latest {URI}:latest",
        f"docker push {URI}:latest",
    )
    assert raw("ecr").describe_repositories()["repositories"] == []


def test_push_creates_the_repository_once_and_logs_in_on_stdin(aws: Aws, raw: Raw, dockerfile: ImageSpec) -> None:
    recorder = Recorder()
    result = build_image(dockerfile, aws=aws, push=True, runner=recorder, console=quiet())
    assert result.repository_created and result.uri == f"{URI}:latest"
    [repo] = raw("ecr").describe_repositories()["repositories"]
    assert repo["repositoryName"] == "koe" and repo["repositoryUri"] == URI
    assert [c[:2] for c in recorder.commands] == [["docker", "build"], ["docker", "login"], ["docker", "tag"],
                                                  ["docker", "push"]]  # fmt: skip
    login, login_stdin = recorder.commands[1], recorder.stdin[1]
    # moto's token decodes to AWS:<password>; the password goes on stdin, never on the command line.
    assert login_stdin is not None and login_stdin.decode() not in " ".join(login)
    assert login[2:] == ["--username", "AWS", "--password-stdin", f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"]
    assert login_stdin == b"123456789012-auth-token"

    again = build_image(dockerfile, aws=aws, push=True, runner=Recorder(), console=quiet())
    assert not again.repository_created and again.uri == result.uri


def test_docker_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DeployError, match="needs the Docker CLI"):
        run_command(["docker", "version"])


def test_missing_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="not found"):
        build_image(ImageSpec(dockerfile=tmp_path / "nope"), runner=Recorder(), console=quiet())


def test_cli_image_dry_run_push(aws_env: str) -> None:
    result = CliRunner().invoke(app, ["image", "--push", "--dry-run", "--repository", "speech", "--tag", "v1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/speech:v1"
    assert "docker build --platform linux/amd64 -f docker/Dockerfile -t speech:v1 ." in result.stderr
    assert "ecr CreateRepository(speech" in result.stderr


# ---- iam ----------------------------------------------------------------------------------------------------


def scope(**changes: Any) -> RoleScope:
    values: dict[str, Any] = {
        "endpoint": "speech", "bucket": "my-bucket", "prefix": "koe/speech", "image_uri": f"{URI}:latest",
        "account": ACCOUNT, "region": "us-east-1",
        "topics": (f"arn:aws:sns:us-east-1:{ACCOUNT}:done", f"arn:aws:sns:us-east-1:{ACCOUNT}:failed"),
    }  # fmt: skip
    values.update(changes)
    return RoleScope(**values)


def test_policy_is_limited_to_the_prefix_repository_logs_and_topics() -> None:
    policy = execution_policy(scope())
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["DataUnderPrefix"]["Resource"] == ["arn:aws:s3:::my-bucket/koe/speech/*"]
    assert set(by_sid["DataUnderPrefix"]["Action"]) == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
    assert by_sid["ListPrefix"]["Condition"] == {"StringLike": {"s3:prefix": ["koe/speech", "koe/speech/*"]}}
    assert by_sid["EcrPull"]["Resource"] == [f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/koe"]
    assert by_sid["EcrLogin"]["Action"] == ["ecr:GetAuthorizationToken"]
    assert all("/aws/sagemaker/Endpoints/speech" in r for r in by_sid["Logs"]["Resource"])
    assert by_sid["Notify"] == {
        "Sid": "Notify", "Effect": "Allow", "Action": ["sns:Publish"],
        "Resource": [f"arn:aws:sns:us-east-1:{ACCOUNT}:done", f"arn:aws:sns:us-east-1:{ACCOUNT}:failed"],
    }  # fmt: skip
    wildcard = [s["Sid"] for s in policy["Statement"] if s["Resource"] == "*"]
    assert wildcard == ["EcrLogin", "Metrics"]  # the two actions AWS offers no resource-level control for
    assert "Notify" not in {s["Sid"] for s in execution_policy(scope(topics=()))["Statement"]}
    outside = execution_policy(scope(model_data_url="s3://models/large-v3/model.tar.gz"))["Statement"]
    assert {"Sid": "ModelData", "Effect": "Allow", "Action": ["s3:GetObject"],
            "Resource": ["arn:aws:s3:::models/large-v3/model.tar.gz"]} in outside  # fmt: skip


def test_inputs_read_in_place_are_granted_read_only() -> None:
    by_sid = {s["Sid"]: s for s in execution_policy(scope(inputs=("s3://recordings/2026/",)))["Statement"]}
    assert by_sid["InputsElsewhere"] == {
        "Sid": "InputsElsewhere", "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": ["arn:aws:s3:::recordings/2026/*"],
    }  # fmt: skip
    assert "InputsElsewhere" not in {s["Sid"] for s in execution_policy(scope())["Statement"]}


def test_trust_policy_is_limited_to_sagemaker_for_this_account() -> None:
    [statement] = trust_policy(ACCOUNT)["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}


def test_kms_key_is_granted_only_when_given() -> None:
    assert "Kms" not in {s["Sid"] for s in execution_policy(scope())["Statement"]}
    key_id = "1234abcd-12ab-34cd-56ef-1234567890ab"
    arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}"
    for given in (key_id, arn):
        by_sid = {s["Sid"]: s for s in execution_policy(scope(kms_key=given))["Statement"]}
        assert by_sid["Kms"]["Resource"] == [arn]
        assert {"kms:Decrypt", "kms:GenerateDataKey"} <= set(by_sid["Kms"]["Action"])
    with pytest.raises(OptionsError, match="not an alias"):
        execution_policy(scope(kms_key="alias/koe"))


def test_repository_arn_needs_an_ecr_image() -> None:
    assert repository_arn(f"{URI}@sha256:abc") == f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/koe"
    with pytest.raises(OptionsError, match="not an ECR image"):
        repository_arn("docker.io/library/koe:latest")


def test_create_role_is_idempotent(aws: Aws, raw: Raw) -> None:
    policy = execution_policy(scope())
    arn, created = ensure_role(aws, role_name="koe-speech-sagemaker", policy=policy, endpoint="speech")
    assert created and arn == f"arn:aws:iam::{ACCOUNT}:role/koe-speech-sagemaker"
    iam = raw("iam")
    role = iam.get_role(RoleName="koe-speech-sagemaker")["Role"]
    assert role["AssumeRolePolicyDocument"] == trust_policy(ACCOUNT)
    stored = iam.get_role_policy(RoleName="koe-speech-sagemaker", PolicyName="koe-speech")["PolicyDocument"]
    assert stored == policy
    assert ensure_role(aws, role_name="koe-speech-sagemaker", policy=policy, endpoint="speech") == (arn, False)


def test_cli_iam_policy_prints_and_creates(aws_env: str, raw: Raw) -> None:
    args = ["iam-policy", "--name", "speech", "--bucket", "my-bucket", "--image", f"{URI}:latest"]
    printed = CliRunner().invoke(app, args)
    assert printed.exit_code == 0, printed.output
    document = json.loads(printed.stdout)
    assert document["TrustPolicy"] == trust_policy(ACCOUNT)
    assert document["PermissionsPolicy"] == execution_policy(scope(topics=()))
    created = CliRunner().invoke(app, [*args, "--create-role"])
    assert created.exit_code == 0, created.output
    assert created.stdout.strip() == f"arn:aws:iam::{ACCOUNT}:role/koe-speech-sagemaker"
    assert raw("iam").get_role(RoleName="koe-speech-sagemaker")
    bad = CliRunner().invoke(app, ["iam-policy", "--name", "speech", "--bucket", "b", "--image", "koe:latest"])
    assert bad.exit_code == 2 and "not an ECR image" in bad.stderr
