"""Bulk `koe invoke` over a folder or an S3 prefix, and following SNS notices through a temporary SQS queue,
against the real moto server (see moto_aws.py): moto's InvokeEndpointAsync never runs a model (results come from
a queue of canned outcomes) and SageMaker never publishes to the topics there, so the SNS test publishes
SageMaker's notice JSON itself, right after each invocation, as SageMaker would once it finished."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from koe.cli import app
from koe.deploy.aws import AsyncInvocation, Aws
from koe.deploy.bulk import Source, list_sources, result_path, run_bulk
from koe.deploy.notify import parse_notice
from koe.deploy.plan import execute, plan_deploy
from koe.deploy.wait import Backoff
from koe.errors import OptionsError
from support import deploy_world, moto_aws
from support.deploy_world import seed
from support.moto_aws import Raw, queue_results
from test_deploy import BUCKET, NAME, make_spec

aws, aws_env, moto_url, raw = moto_aws.aws, moto_aws.aws_env, moto_aws.moto_url, moto_aws.raw  # fixtures
wide_console = deploy_world.wide_console  # autouse: rich tables on one line each, searchable
FAST = Backoff(first=0.01, cap=0.05)
FAILURE = json.dumps({"error": {"type": "undecodable_audio", "message": "cannot decode the input"}})


@pytest.fixture
def topics(raw: Raw) -> dict[str, str]:
    return seed(raw, BUCKET, {"success": "koe-done", "error": "koe-failed"})


def deploy(aws: Aws, topics: dict[str, str], *, notify: bool) -> None:
    spec = (
        make_spec(topics) if notify else make_spec({"success": "", "error": ""}, success_topic=None, error_topic=None)
    )
    execute(plan_deploy(aws, spec), aws, console=Console(file=io.StringIO()), backoff=FAST)


def clips(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "a.mp3").write_bytes(b"ID3 first")
    (folder / "b.flac").write_bytes(b"fLaC second")
    (folder / "sub" / "c.wav").write_bytes(b"RIFF third")
    (folder / "notes.txt").write_text("not audio")
    return folder


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_sources_and_result_names(tmp_path: Path) -> None:
    folder = clips(tmp_path / "in")
    sources, other = list_sources(None, str(folder))
    assert [s.name for s in sources] == ["a.mp3", "b.flac", "sub/c.wav"] and other == 1
    assert result_path(tmp_path / "out", sources[2], "srt") == tmp_path / "out" / "sub" / "c.srt"
    with pytest.raises(OptionsError, match="leaves the output folder"):
        result_path(tmp_path, Source("../x.mp3"), "text")
    with pytest.raises(OptionsError, match="no such file or folder"):
        list_sources(None, str(tmp_path / "missing"))


def test_notices_are_parsed_from_the_sns_envelope() -> None:
    completed = {"invocationStatus": "Completed", "inferenceId": "i-1", "eventName": "InferenceResult",
                 "responseParameters": {"outputLocation": "s3://b/o.out"}}  # fmt: skip
    notice = parse_notice(json.dumps({"Type": "Notification", "Message": json.dumps(completed)}))
    assert notice is not None and notice.completed and notice.output_location == "s3://b/o.out"
    failed = {"invocationStatus": "Failed", "inferenceId": "i-2", "eventName": "InferenceResult",
              "failureReason": "ClientError: Received server error (500) from model."}  # fmt: skip
    notice = parse_notice(json.dumps(failed))  # raw message delivery
    assert notice is not None and not notice.completed and "500" in (notice.reason or "")
    test = {"eventVersion": "1.0", "eventSource": "aws:sagemaker", "eventName": "TestNotification"}
    assert parse_notice(json.dumps({"Message": json.dumps(test)})) is None
    assert parse_notice("not json") is None


def test_bulk_folder_polls_s3_resumes_and_retries_failures(
    aws: Aws, raw: Raw, topics: dict[str, str], tmp_path: Path, aws_env: str
) -> None:
    deploy(aws, topics, notify=False)
    folder, out = clips(tmp_path / "in"), tmp_path / "out"
    queue_results(aws_env, [(False, "first text\n"), (False, "second text\n"), (True, FAILURE)])
    args = ["invoke", "--name", NAME, str(folder), "--wait", "--output-dir", str(out), "--concurrency", "1"]
    first = cli(*args)
    assert first.exit_code == 1, first.output  # one failed
    assert (out / "a.txt").read_text() == "first text\n" and (out / "b.txt").read_text() == "second text\n"
    assert not (out / "sub" / "c.txt").exists()
    for text in ("transcribed", "already done", "undecodable_audio: cannot decode the input", "not audio/video"):
        assert text in first.stderr, text
    uploaded = raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/input/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in uploaded) == ["a.mp3", "b.flac", "c.wav"]

    # Run again: the two saved files are skipped, only the failed one is sent again.
    queue_results(aws_env, [(False, "third text\n")])
    second = cli(*args)
    assert second.exit_code == 0, second.output
    assert (out / "sub" / "c.txt").read_text() == "third text\n"
    assert len(raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/input/")["Contents"]) == 4
    assert not list(out.glob(".koe-invoke-*"))  # nothing pending: no state left


def test_bulk_queue_now_collect_later_sends_nothing_twice(
    aws: Aws, raw: Raw, topics: dict[str, str], tmp_path: Path, aws_env: str
) -> None:
    deploy(aws, topics, notify=False)
    folder, out = clips(tmp_path / "in"), tmp_path / "out"
    queue_results(aws_env, [(False, "one\n"), (False, "two\n"), (False, "three\n")])
    queued = cli("invoke", "--name", NAME, str(folder), "--output-dir", str(out), "--concurrency", "1")
    assert queued.exit_code == 0, queued.output
    assert "run again with --wait" in queued.stderr
    [state] = out.glob(".koe-invoke-*.jsonl")
    assert len(state.read_text().splitlines()) == 3
    # Collected by a second run: had it invoked again, moto would answer its default body, not these texts.
    collected = cli("invoke", "--name", NAME, str(folder), "--wait", "--output-dir", str(out))
    assert collected.exit_code == 0, collected.output
    assert sorted(p.read_text() for p in out.rglob("*.txt")) == ["one\n", "three\n", "two\n"]
    assert len(raw("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"koe/{NAME}/input/")["Contents"]) == 3


def test_bulk_s3_prefix_follows_sns_through_a_temporary_queue(
    aws: Aws, raw: Raw, topics: dict[str, str], tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deploy(aws, topics, notify=True)
    s3 = raw("s3")
    for key in ("talks/a.mp3", "talks/day2/b.m4a", "talks/readme.txt", "talks2/other.mp3"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"audio bytes")
    sources, other = list_sources(aws, f"s3://{BUCKET}/talks")
    assert [s.name for s in sources] == ["a.mp3", "day2/b.m4a"] and other == 1  # talks2/ is not under talks/

    sns, real_invoke = raw("sns"), Aws.invoke_endpoint_async
    outcomes = iter([True, False])  # a.mp3 completes, b.m4a fails
    queue_results(aws_env, [(False, "from a\n"), (True, FAILURE)])
    seen: list[dict[str, Any]] = []

    def invoke_and_notify(self: Aws, **kwargs: Any) -> AsyncInvocation:
        seen.append(kwargs)
        answer = real_invoke(self, **kwargs)
        ok = next(outcomes)
        request = {"endpointName": NAME, "inputLocation": kwargs["input_location"]}
        event = {"awsRegion": "us-east-1", "invocationStatus": "Completed" if ok else "Failed",
                 "inferenceId": answer.inference_id, "eventVersion": "1.0", "eventSource": "aws:sagemaker",
                 "eventName": "InferenceResult", "requestParameters": request}  # fmt: skip
        if ok:
            event["responseParameters"] = {"contentType": "text/plain", "outputLocation": answer.output_location}
        else:
            event["failureReason"] = "ClientError: Received client error (400) from primary with message ..."
        sns.publish(TopicArn=topics["success" if ok else "error"], Message=json.dumps(event))
        return answer

    monkeypatch.setattr(Aws, "invoke_endpoint_async", invoke_and_notify)
    ops: list[str] = []
    aws._client("s3").meta.events.register("before-call", lambda model, **_: ops.append(model.name))
    result = run_bulk(aws, NAME, sources, output_dir=tmp_path / "out", concurrency=1, timeout_s=60,
                      topics=[topics["success"], topics["error"]], console=Console(file=io.StringIO()))  # fmt: skip
    assert [i.path.name for i in result.completed] == ["a.mp3"] and (
        tmp_path / "out" / "a.txt"
    ).read_text() == "from a\n"
    [failed] = result.failed
    assert failed.path.as_posix() == "day2/b.m4a" and failed.error == "undecodable_audio: cannot decode the input"
    # S3 inputs are invoked where they are (no upload), and nothing polled S3 per file: the notices said when.
    assert [k["input_location"] for k in seen] == [f"s3://{BUCKET}/talks/a.mp3", f"s3://{BUCKET}/talks/day2/b.m4a"]
    assert "HeadObject" not in ops and "PutObject" not in ops
    # The queue and both subscriptions are gone.
    assert raw("sqs").list_queues().get("QueueUrls", []) == []
    assert raw("sns").list_subscriptions()["Subscriptions"] == []


def test_bulk_an_aws_error_fails_that_file_only(
    aws: Aws, topics: dict[str, str], tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from koe.errors import AwsError

    deploy(aws, topics, notify=False)
    sources, _ = list_sources(aws, str(clips(tmp_path / "in")))
    real_invoke = Aws.invoke_endpoint_async

    def throttled_for_b(self: Aws, **kwargs: Any) -> AsyncInvocation:
        if kwargs["input_location"].endswith("/b.flac"):
            raise AwsError("sagemaker-runtime invoke_endpoint_async: ThrottlingException: Rate exceeded")
        return real_invoke(self, **kwargs)

    monkeypatch.setattr(Aws, "invoke_endpoint_async", throttled_for_b)
    queue_results(aws_env, [(False, "a\n"), (False, "c\n")])
    result = run_bulk(aws, NAME, sources, output_dir=tmp_path / "out", concurrency=1, timeout_s=30, backoff=FAST,
                      console=Console(file=io.StringIO()))  # fmt: skip
    assert sorted(i.path.name for i in result.completed) == ["a.mp3", "c.wav"]
    [failed] = result.failed
    assert failed.path.name == "b.flac" and "ThrottlingException" in (failed.error or "") and not result.ok
