"""`koe image / deploy / invoke / status / destroy / iam-policy`: thin wrappers over koe.deploy.

boto3 and the deploy library are imported inside the commands, so that other `koe` commands start without them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from koe.config import Settings
from koe.deploy.spec import (
    DEFAULT_AMI_VERSION,
    DEFAULT_INSTANCE_TYPE,
    DeploySpec,
    check_name,
    parse_environment,
)
from koe.errors import KoeError, OptionsError
from koe.options import parse_options

if TYPE_CHECKING:
    from koe.deploy.aws import Aws
    from koe.deploy.invoke import Invocation
    from koe.deploy.plan import Plan

err = Console(stderr=True)

Region = Annotated[str | None, typer.Option(help="AWS region (default: AWS_REGION / your profile's).")]
Profile = Annotated[str | None, typer.Option(help="AWS profile.")]
EndpointUrl = Annotated[
    str | None,
    typer.Option(envvar="KOE_AWS_ENDPOINT_URL", help="Send every AWS call here (an emulator such as moto)."),
]
Name = Annotated[str, typer.Option("--name", "-n", help="Endpoint name.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")]


def register(app: typer.Typer) -> None:
    app.command("image")(image_command)
    app.command("deploy")(deploy_command)
    app.command("invoke")(invoke_command)
    app.command("status")(status_command)
    app.command("destroy")(destroy_command)
    app.command("wake")(wake_command)
    app.command("logs")(logs_command)
    app.command("iam-policy")(iam_policy_command)


@contextmanager
def _reported() -> Iterator[None]:
    """koe errors end the command with their message: exit 2 for bad options, 1 for everything else."""
    try:
        yield
    except KoeError as exc:
        err.print(f"[red]error:[/red] {exc.message}", highlight=False)
        raise typer.Exit(2 if isinstance(exc, OptionsError) else 1) from None


def _aws(region: str | None, profile: str | None, endpoint_url: str | None) -> Aws:
    from koe.deploy.aws import Aws

    return Aws.connect(region=region, profile=profile, endpoint_url=endpoint_url)


def image_command(
    push: Annotated[bool, typer.Option(help="Push to ECR (creating the repository when missing).")] = False,
    repository: Annotated[str, typer.Option(help="ECR repository / local image name.")] = "koe",
    tag: Annotated[str, typer.Option(help="Image tag.")] = "latest",
    dockerfile: Annotated[Path, typer.Option(help="Dockerfile to build.")] = Path("docker/Dockerfile"),
    context: Annotated[Path, typer.Option(help="Build context (koe's source checkout).")] = Path("."),
    platform: Annotated[str, typer.Option(help="Target platform.")] = "linux/amd64",
    build_arg: Annotated[list[str] | None, typer.Option(help="KEY=VALUE for docker build (repeatable).")] = None,
    dry_run: DryRun = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Build the serving image with Docker and (--push) push it to ECR; prints the URI `koe deploy` takes."""
    from koe.deploy import image as image_lib

    with _reported():
        spec = image_lib.ImageSpec(repository, tag, dockerfile, context, platform, tuple(build_arg or ()))
        aws = _aws(region, profile, endpoint_url) if push else None
        result = image_lib.build_image(spec, aws=aws, push=push, dry_run=dry_run, console=err)
        if result.repository_created:
            err.print(f"created ECR repository {repository}")
    typer.echo(result.uri)


def deploy_command(
    name: Name,
    image: Annotated[str, typer.Option(help="Image URI (from `koe image --push`).")],
    model: Annotated[
        str,
        typer.Option(
            help="A model to package (large-v3-turbo, distil-large-v3, kotoba-tech/kotoba-whisper-v2.0-faster for "
            "Japanese, tiny.en, base, a folder); s3://.../model.tar.gz; or 'image' (baked in)."
        ),
    ],
    role: Annotated[str, typer.Option(help="SageMaker execution role ARN (`koe iam-policy --create-role`).")],
    bucket: Annotated[str, typer.Option(help="S3 bucket for model data, inputs, outputs and failures.")],
    prefix: Annotated[str | None, typer.Option(help="Key prefix in the bucket (default: koe/NAME).")] = None,
    instance_type: Annotated[
        str, typer.Option(help="GPU (ml.g*/ml.p*) or CPU (ml.c*/ml.m*, small models) instance type.")
    ] = DEFAULT_INSTANCE_TYPE,
    max_instances: Annotated[int, typer.Option(help="Autoscaling ceiling.")] = 1,
    min_instances: Annotated[int, typer.Option(help="Autoscaling floor: 0 scales to zero; 1+ stays warm.")] = 0,
    max_concurrent: Annotated[
        int | None,
        typer.Option(
            help="Async requests per instance at once (default: from --throughput, else the batch size: 16 "
            "unless --batch-size)."
        ),
    ] = None,
    success_topic: Annotated[str | None, typer.Option(help="SNS topic ARN told of each result.")] = None,
    error_topic: Annotated[str | None, typer.Option(help="SNS topic ARN told of each failure.")] = None,
    target_backlog: Annotated[
        float | None, typer.Option(help="Target queued requests per instance (default: from --throughput, else 5).")
    ] = None,
    max_wait: Annotated[str, typer.Option(help="Latency goal: how long a request may wait (90s, 10m, 1h).")] = "10m",
    typical_audio: Annotated[str, typer.Option(help="Length of a typical input file (for sizing).")] = "10m",
    price: Annotated[
        float | None, typer.Option(help="Instance price, USD per hour (default: koe's dated table).")
    ] = None,
    cold_start: Annotated[str | None, typer.Option(help="Your measured cold start (default: assumed 10m).")] = None,
    warm_hours: Annotated[
        str | None, typer.Option(help="Keep instances warm in these hours, e.g. 'Mon-Fri 09:00-18:00'.")
    ] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of --warm-hours (e.g. Asia/Tokyo).")] = "UTC",
    warm_instances: Annotated[int, typer.Option(help="Instances kept during --warm-hours.")] = 1,
    alarm_topic: Annotated[
        str | None, typer.Option(help="SNS topic ARN told when requests fail, expire or wait too long.")
    ] = None,
    expire_inputs_after: Annotated[
        int | None, typer.Option(help="Delete uploaded inputs (PREFIX/input/) after N days (S3 lifecycle rule).")
    ] = None,
    ami_version: Annotated[str, typer.Option(help="InferenceAmiVersion (host GPU driver).")] = DEFAULT_AMI_VERSION,
    startup_timeout: Annotated[int, typer.Option(help="Seconds for the container to load and pass /ping.")] = 900,
    batch_size: Annotated[int | None, typer.Option(help="KOE_BATCH_SIZE in the container.")] = None,
    invocation_timeout: Annotated[
        int, typer.Option(help="InvocationTimeoutSeconds `koe invoke` sends; sizes the container's audio limit.")
    ] = 3600,
    throughput: Annotated[
        float | None, typer.Option(help="Measured speed of one instance, x real time (e.g. 40).")
    ] = None,
    kms_key: Annotated[str | None, typer.Option(help="KMS key id or ARN for outputs (and volume).")] = None,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE container environment (repeatable).")] = None,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for InService.")] = 1800,
    dry_run: DryRun = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Create or update a scale-to-zero SageMaker async endpoint. Shows the plan, then applies it."""
    from koe.cli.plans import step_printer
    from koe.deploy.plan import execute, plan_deploy
    from koe.deploy.sizing import cost_notes, derive, parse_duration

    settings = Settings.model_validate({})
    with _reported():
        wait_s = parse_duration(max_wait)
        notes: list[str] = []
        if throughput is not None:
            sized = derive(speed=throughput, max_wait_s=wait_s, typical_audio_s=parse_duration(typical_audio),
                           batch_size=batch_size or settings.batch_size)  # fmt: skip
            notes.append(
                f"sizing: {sized.reason} -> MaxConcurrentInvocationsPerInstance {sized.max_concurrent}"
                f"{' (given: ' + str(max_concurrent) + ')' if max_concurrent is not None else ''}, target backlog "
                f"{sized.target_backlog:g} per instance"
                f"{' (given: ' + format(target_backlog, 'g') + ')' if target_backlog is not None else ''}"
            )
            max_concurrent = sized.max_concurrent if max_concurrent is None else max_concurrent
            target_backlog = sized.target_backlog if target_backlog is None else target_backlog
        spec = DeploySpec(
            name=name, image_uri=image, model=model, role_arn=role, bucket=bucket, prefix=prefix or "",
            instance_type=instance_type, max_instances=max_instances, min_instances=min_instances,
            max_concurrent_invocations=max_concurrent or 0,  # 0: one batch of requests (the spec's default)
            invocation_timeout_s=invocation_timeout, throughput=throughput, kms_key=kms_key,
            success_topic=success_topic, error_topic=error_topic,
            target_backlog_per_instance=5.0 if target_backlog is None else target_backlog,
            ami_version=ami_version, startup_timeout_s=startup_timeout, batch_size=batch_size,
            warm_hours=warm_hours, timezone=timezone, warm_instances=warm_instances, alarm_topic=alarm_topic,
            oldest_request_alarm_s=int(min(21600, max(60, wait_s))), expire_inputs_days=expire_inputs_after,
            environment=parse_environment(env or []),
        )  # fmt: skip
        warm = spec.warm
        notes += cost_notes(
            instance_type=instance_type, speed=throughput, price_override=price,
            cold_start_s=parse_duration(cold_start) if cold_start else None, min_instances=min_instances,
            warm_hours_per_week=(warm.hours_per_week * warm_instances) if warm else 0.0,
        )  # fmt: skip
        aws = _aws(region, profile, endpoint_url)
        plan = plan_deploy(aws, spec, wait_timeout_s=wait_timeout)
        plan = replace(plan, notes=(*plan.notes, *notes))
        if _show(plan, dry_run):
            execute(plan, aws, report=step_printer(err), console=err, cache_dir=settings.cache_dir)
            bounds = f"{min_instances}..{max_instances}"
            err.print(f"[green]endpoint {name} is InService[/green]; scales {bounds} on its backlog")
    typer.echo(name)


def _show(plan: Plan, dry_run: bool) -> bool:
    """Print the plan; whether to go on and execute it."""
    from koe.cli.plans import describe_instruction, render_plan

    err.print(render_plan(plan))
    for note in plan.notes:
        err.print(note, highlight=False)
    if not plan.changes:
        err.print("nothing to change")
        return False
    if dry_run:
        err.print("[bold]dry run[/bold]: these calls would be made, in order:")
        for instruction in plan.calls:
            err.print(f"  {describe_instruction(instruction)}", highlight=False, soft_wrap=True)
        return False
    return True


def invoke_command(
    name: Name,
    files: Annotated[list[str], typer.Argument(help="Audio/video files, folders, or s3://bucket/prefix/.")],
    wait: Annotated[bool, typer.Option(help="Wait for the results and print (or save) them.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text | json | verbose_json | srt | vtt | tsv")] = "text",
    output_dir: Annotated[
        Path | None, typer.Option(help="Write FILE.<ext> here instead of printing (folders: default ./transcripts).")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait for all results (--wait).")] = None,
    concurrency: Annotated[int, typer.Option(help="Uploads / invocations / checks at once (folders, S3).")] = 8,
    language: Annotated[str | None, typer.Option(help="Language code, or auto.")] = None,
    task: Annotated[str | None, typer.Option(help="transcribe | translate")] = None,
    word_timestamps: Annotated[bool | None, typer.Option(help="Word-level timestamps.")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Any other option as KEY=VALUE (repeatable).")] = None,
    request_ttl: Annotated[int | None, typer.Option(help="Seconds a request may wait in the queue.")] = None,
    invocation_timeout: Annotated[
        int, typer.Option(help="Seconds one request may run (InvocationTimeoutSeconds, at most 3600).")
    ] = 3600,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Send files to the endpoint; with --wait, collect the transcripts; exit 1 on failure or timeout.

    A folder or an s3:// prefix is a bulk run: every audio/video file in it, N at a time, with a progress bar;
    results saved one per input under --output-dir; files already transcribed there are skipped, so an
    interrupted run resumes; with SNS topics on the endpoint, --wait follows them through a temporary SQS queue.
    """
    from koe.deploy import invoke as invoke_lib

    with _reported():
        given: dict[str, Any] = dict(pair.split("=", 1) for pair in _pairs(option or []))
        given.update({k: v for k, v in (("language", language), ("task", task),
                                        ("word_timestamps", word_timestamps)) if v is not None})  # fmt: skip
        options = parse_options(given).model_dump(exclude_unset=True)
        aws = _aws(region, profile, endpoint_url)
        if any(f.startswith("s3://") or Path(f).is_dir() for f in files):
            ok = _bulk(aws, name, files, wait=wait, fmt=fmt, options=options, output_dir=output_dir,
                       timeout=timeout, concurrency=concurrency, request_ttl=request_ttl,
                       invocation_timeout=invocation_timeout)  # fmt: skip
            if not ok:
                raise typer.Exit(1)
            return
        queued = invoke_lib.submit(aws, name, [Path(f) for f in files], fmt=fmt, options=options,
                                   request_ttl_s=request_ttl, invocation_timeout_s=invocation_timeout,
                                   console=err)  # fmt: skip
        if not wait:
            _queued_table(queued)
            return
        done = invoke_lib.wait_for_results(aws, queued, timeout_s=timeout or 1800, console=err)
        _emit(done, fmt, output_dir)
    if any(i.state != "completed" for i in done):
        raise typer.Exit(1)


def _bulk(aws: Aws, name: str, targets: list[str], *, wait: bool, fmt: str, options: dict[str, Any],
          output_dir: Path | None, timeout: float | None, concurrency: int, request_ttl: int | None,
          invocation_timeout: int) -> bool:  # fmt: skip
    """A bulk run over folders / S3 prefixes; prints the summary; whether everything succeeded."""
    from koe.deploy.bulk import list_sources, run_bulk
    from koe.deploy.invoke import endpoint_topics

    sources, other = [], 0
    for target in targets:
        found, passed_over = list_sources(aws, target)
        sources += found
        other += passed_over
    if not sources:
        raise OptionsError(f"no audio or video files in {', '.join(targets)}")
    topics = endpoint_topics(aws, name) if wait else []
    folder = output_dir or Path("transcripts")
    result = run_bulk(aws, name, sources, output_dir=folder, fmt=fmt, options=options, concurrency=concurrency,
                      timeout_s=timeout or 6 * 3600, topics=topics, request_ttl_s=request_ttl,
                      invocation_timeout_s=invocation_timeout, wait=wait, console=err)  # fmt: skip
    summary = Table("result", "files", "detail", title=f"{name}: {len(sources)} inputs", title_justify="left")
    follow = "SNS via a temporary SQS queue" if topics else "S3, with backoff"
    summary.add_row("transcribed", str(len(result.completed)), f"saved under {folder}/ (followed {follow})")
    summary.add_row("already done", str(len(result.skipped)), "result file exists: skipped")
    if result.queued:
        summary.add_row("queued", str(len(result.queued)), "run again with --wait to collect them")
    summary.add_row("failed", str(len(result.failed)), "sent again by the next run")
    summary.add_row("timed out", str(len(result.timed_out)), "still queued: the next run waits for them")
    if other:
        summary.add_row("not audio/video", str(other), "passed over (by extension)")
    err.print(summary)
    problems = Table("file", "result", "error", title="problems", title_justify="left")
    for item in result.failed + result.timed_out:
        problems.add_row(str(item.path), f"[red]{item.state}[/red]", item.error or "")
    if problems.row_count:
        err.print(problems)
    for leftover in result.leftovers:
        err.print(f"[yellow]warning:[/yellow] {leftover}", highlight=False)
    return result.ok


def _pairs(items: list[str]) -> list[str]:
    bad = [i for i in items if "=" not in i]
    if bad:
        raise OptionsError(f"option: {bad[0]!r} is not KEY=VALUE")
    return items


def _queued_table(queued: list[Invocation]) -> None:
    """One tab-separated line per file on stdout (for scripts): file, inference id, output, failure location."""
    for i in queued:
        typer.echo("\t".join((str(i.path), i.inference_id, i.output_location, i.failure_location or "-")))


def _emit(done: list[Invocation], fmt: str, output_dir: Path | None) -> None:
    from koe.deploy.invoke import save_result

    summary = Table("file", "result", "detail")
    for i in done:
        if i.state == "completed" and i.body is not None:
            if output_dir is not None:
                summary.add_row(str(i.path), "completed", str(save_result(i, fmt, output_dir)))
                continue
            text = i.body.decode("utf-8", errors="replace")
            typer.echo(text, nl=not text.endswith("\n"))
            summary.add_row(str(i.path), "completed", i.output_location)
        else:
            summary.add_row(str(i.path), f"[red]{i.state}[/red]", i.error or "")
    err.print(summary)


def status_command(
    name: Name,
    minutes: Annotated[int, typer.Option(help="How far back to read metrics.")] = 60,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Endpoint state, instance count, autoscaling (target, policies, alarms) and the recent backlog."""
    from koe.deploy import status as status_lib

    with _reported():
        check_name(name)
        status = status_lib.collect_status(_aws(region, profile, endpoint_url), name, minutes=minutes)
        Console().print(status_lib.render_status(status))
    if not status.exists:
        raise typer.Exit(1)


def destroy_command(
    name: Name,
    delete_data: Annotated[bool, typer.Option(help="Also delete every object under the endpoint's S3 prefix.")] = False,
    bucket: Annotated[str | None, typer.Option(help="Data bucket, when the endpoint is already gone.")] = None,
    prefix: Annotated[str | None, typer.Option(help="Data prefix (default: the endpoint's).")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before deleting data.")] = False,
    wait_timeout: Annotated[float, typer.Option(help="Seconds to wait for the endpoint to go.")] = 1800,
    dry_run: DryRun = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Remove alarm, policies, scalable target, endpoint, configs, models (and --delete-data). Idempotent."""
    from koe.cli.plans import step_printer
    from koe.deploy.plan import execute, plan_destroy

    with _reported():
        check_name(name)
        aws = _aws(region, profile, endpoint_url)
        plan = plan_destroy(aws, name, delete_data=delete_data, bucket=bucket, prefix=prefix,
                            wait_timeout_s=wait_timeout)  # fmt: skip
        if not _show(plan, dry_run):
            return
        deletes_data = any(s.resource == "s3 data" and s.action == "delete" for s in plan.steps)
        if deletes_data and not yes and not typer.confirm("delete the S3 data listed above?", err=True):
            raise typer.Exit(1)
        execute(plan, aws, report=step_printer(err), console=err)
        err.print(f"[green]{name} is gone[/green]")


def iam_policy_command(
    name: Name,
    bucket: Annotated[str, typer.Option(help="The deploy's bucket.")],
    image: Annotated[str, typer.Option(help="The ECR image URI the endpoint runs.")],
    prefix: Annotated[str | None, typer.Option(help="The deploy's prefix (default: koe/NAME).")] = None,
    model_data: Annotated[str | None, typer.Option(help="An s3:// model.tar.gz outside the prefix.")] = None,
    success_topic: Annotated[str | None, typer.Option(help="SNS success topic ARN.")] = None,
    error_topic: Annotated[str | None, typer.Option(help="SNS error topic ARN.")] = None,
    kms_key: Annotated[str | None, typer.Option(help="KMS key id or ARN (bucket, outputs, topics, volume).")] = None,
    input_prefix: Annotated[
        list[str] | None, typer.Option("--input", help="s3://bucket/prefix/ that bulk invokes read in place.")
    ] = None,
    create_role: Annotated[bool, typer.Option(help="Create (or update) the role in IAM.")] = False,
    role_name: Annotated[str | None, typer.Option(help="Role name (default: koe-NAME-sagemaker).")] = None,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Print the execution role's least-privilege policy and trust policy; --create-role creates the role."""
    from koe.deploy.iam import ensure_role, execution_policy, role_name_for, scope_for, trust_policy

    with _reported():
        check_name(name)
        aws = _aws(region, profile, endpoint_url)
        scope = scope_for(aws, endpoint=name, bucket=bucket, prefix=prefix, image_uri=image,
                          topics=(success_topic, error_topic), model_data_url=model_data,
                          kms_key=kms_key, inputs=input_prefix or ())  # fmt: skip
        policy = execution_policy(scope)
        if not create_role:
            trust = trust_policy(scope.account)
            typer.echo(json.dumps({"PermissionsPolicy": policy, "TrustPolicy": trust}, indent=2))
            return
        arn, created = ensure_role(aws, role_name=role_name or role_name_for(name), policy=policy, endpoint=name)
        err.print(f"{'created' if created else 'updated'} role {arn}")
    typer.echo(arn)


def wake_command(
    name: Name,
    instances: Annotated[int, typer.Option(help="Instances to start.")] = 1,
    hold: Annotated[
        str, typer.Option("--for", help="Keep them at least this long (then scale-to-zero resumes).")
    ] = "1h",
    wait: Annotated[bool, typer.Option(help="Wait until they run.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait (--wait).")] = 1800,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Start instances now, before a batch, so that its first request does not wait for a cold start."""
    from koe.deploy.operate import wait_for_instances, wake
    from koe.deploy.sizing import parse_duration

    with _reported():
        check_name(name)
        aws = _aws(region, profile, endpoint_url)
        woken = wake(aws, name, instances=instances, hold_s=parse_duration(hold))
        action = "starting" if woken.started else "already running:"
        err.print(f"{name}: {action} {instances} instance(s), kept until {woken.until:%Y-%m-%d %H:%M} UTC "
                  f"(then the floor goes back to {woken.floor_was})")  # fmt: skip
        if wait:
            wait_for_instances(aws, name, instances, timeout_s=timeout)
            err.print(f"[green]{name}: {instances} instance(s) InService[/green]")


def logs_command(
    name: Name,
    since: Annotated[str, typer.Option(help="How far back (90s, 10m, 1h, 2d as 48h).")] = "1h",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events (Ctrl-C stops).")] = False,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """The endpoint's CloudWatch Logs (/aws/sagemaker/Endpoints/NAME): container start, model load, errors."""
    from koe.deploy.operate import LOG_GROUP, log_lines
    from koe.deploy.sizing import parse_duration

    with _reported():
        check_name(name)
        aws = _aws(region, profile, endpoint_url)
        count = 0
        try:
            for line in log_lines(aws, name, since_s=parse_duration(since), follow=follow):
                typer.echo(line)
                count += 1
        except KeyboardInterrupt:
            return
        if not count:
            err.print(f"no events in {LOG_GROUP.format(name)} in the last {since}")
