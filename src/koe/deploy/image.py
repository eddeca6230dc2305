"""`koe image`: build the container image with the local Docker CLI and push it to ECR.

    docker build --platform linux/amd64 -f docker/Dockerfile -t koe:latest .
    (--push)  ECR: DescribeRepositories, CreateRepository when missing, GetAuthorizationToken
              docker login --username AWS --password-stdin <registry>   (the token goes on stdin only)
              docker tag koe:latest <uri>:latest && docker push <uri>:latest

Only the docker commands need Docker; the AWS calls go through `Aws`. `--dry-run` prints both and runs
neither (it still reads the account id and looks the repository up, both read-only, to print the real URI).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from koe.deploy.aws import Aws, RegistryLogin
from koe.errors import DeployError, OptionsError

Runner = Callable[[Sequence[str], bytes | None], None]


@dataclass(frozen=True)
class ImageSpec:
    repository: str = "koe"
    tag: str = "latest"
    dockerfile: Path = Path("docker/Dockerfile")
    context: Path = Path(".")
    platform: str = "linux/amd64"  # SageMaker's GPU instances are x86_64
    build_args: tuple[str, ...] = field(default=())

    @property
    def local(self) -> str:
        return f"{self.repository}:{self.tag}"

    def build_command(self) -> list[str]:
        command = [
            "docker",
            "build",
            "--platform",
            self.platform,
            "-f",
            str(self.dockerfile),
            "-t",
            self.local,
        ]
        for arg in self.build_args:
            command += ["--build-arg", arg]
        return [*command, str(self.context)]


@dataclass(frozen=True)
class ImageResult:
    uri: str
    commands: tuple[str, ...]
    aws_calls: tuple[str, ...]
    repository_created: bool = False


def run_command(command: Sequence[str], stdin: bytes | None = None) -> None:
    """Run a docker command, streaming its output; DeployError when Docker is missing or the command fails."""
    try:
        subprocess.run(list(command), input=stdin, check=True)
    except FileNotFoundError:
        raise DeployError(
            f"{command[0]} is not installed or not on PATH; "
            "`koe image` needs the Docker CLI and a running Docker engine"
        ) from None
    except OSError as exc:
        raise DeployError(f"cannot run {command[0]}: {exc.strerror or exc}") from None
    except subprocess.CalledProcessError as exc:
        raise DeployError(f"`{shlex.join(command)}` failed with exit status {exc.returncode}") from None


def build_image(
    spec: ImageSpec,
    *,
    aws: Aws | None = None,
    push: bool = False,
    dry_run: bool = False,
    runner: Runner = run_command,
    console: Console | None = None,
) -> ImageResult:
    """Build (and push) the image; returns the URI for `koe deploy --image` and what was (or would be) run."""
    console = console or Console(stderr=True)
    if not dry_run and not spec.dockerfile.is_file():
        raise OptionsError(f"dockerfile: {spec.dockerfile} not found (run from koe's source checkout)")
    commands: list[str] = []
    calls: list[str] = []

    def note(call: str) -> None:
        calls.append(call)
        console.print(f"[cyan]aws[/cyan] {call}", highlight=False)

    def run(command: list[str], stdin: bytes | None = None) -> None:
        commands.append(shlex.join(command))
        console.print(f"[cyan]$[/cyan] {shlex.join(command)}", highlight=False)
        if not dry_run:
            runner(command, stdin)

    run(spec.build_command())
    if not push:
        return ImageResult(spec.local, tuple(commands), ())
    if aws is None:
        raise OptionsError("--push needs AWS access")
    note("sts GetCallerIdentity")
    account = aws.account_id()
    note(f"ecr DescribeRepositories({spec.repository})")
    repository = aws.describe_repository(spec.repository)
    created = False
    if repository is None:
        note(f"ecr CreateRepository({spec.repository}, scanOnPush)")
        if dry_run:
            suffix = ".amazonaws.com.cn" if aws.partition == "aws-cn" else ".amazonaws.com"
            uri = f"{account}.dkr.ecr.{aws.region}{suffix}/{spec.repository}"
        else:
            uri = str(aws.create_repository(spec.repository)["repositoryUri"])
            created = True
    else:
        uri = str(repository["repositoryUri"])
    note("ecr GetAuthorizationToken")
    if dry_run:
        login = RegistryLogin(registry=f"https://{uri.split('/')[0]}", username="AWS", password="")
    else:
        login = aws.registry_login()
    registry = login.registry.removeprefix("https://")
    run(
        ["docker", "login", "--username", login.username, "--password-stdin", registry],
        login.password.encode(),
    )
    target = f"{uri}:{spec.tag}"
    run(["docker", "tag", spec.local, target])
    run(["docker", "push", target])
    return ImageResult(target, tuple(commands), tuple(calls), created)
