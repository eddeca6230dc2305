"""`koe invoke --name NAME DIR|s3://bucket/prefix/ --wait`: transcribe every audio file there.

    sources ──▶ skip those with a result file ──▶ upload + InvokeEndpointAsync (N at a time) ──▶ wait ──▶ save
    (a folder, or                (resumable)        (a local folder's files; S3 objects        (SNS via SQS, or
     an S3 prefix)                                   are invoked where they are)                S3 with backoff)

Results go to one file per input under the output folder (`talk.mp3` -> `talk.srt`, keeping sub-folders).
A state file there (`.koe-invoke-NAME.jsonl`) records every queued invocation as soon as it is queued, so an
interrupted run, started again, neither re-sends what is still in SageMaker's queue nor transcribes again what
is already saved: it watches the pending ones and sends only the rest. Failures are not saved, so the next
run sends them again.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from koe.deploy.aws import Aws, S3Url
from koe.deploy.invoke import (
    Invocation,
    accept_for,
    check_invocation,
    content_type_for,
    custom_attributes,
    failure_message,
    input_root,
)
from koe.deploy.notify import Notice, NotificationQueue
from koe.deploy.spec import MAX_INVOCATION_TIMEOUT_S
from koe.deploy.wait import Backoff, Clock
from koe.errors import KoeError, OptionsError
from koe.formats import EXTENSIONS, check_format


@dataclass(frozen=True)
class Source:
    """One input: `name` is its path relative to the folder or prefix (the result keeps it)."""

    name: str
    path: Path | None = None
    url: str | None = None


@dataclass
class BulkResult:
    completed: list[Invocation] = field(default_factory=list)
    failed: list[Invocation] = field(default_factory=list)
    timed_out: list[Invocation] = field(default_factory=list)
    queued: list[Invocation] = field(default_factory=list)  # without `wait`: sent, not waited for
    skipped: list[Source] = field(default_factory=list)
    saved: dict[str, Path] = field(default_factory=dict)  # inference id -> result file
    not_media: int = 0
    leftovers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.failed or self.timed_out)


def is_media(name: str) -> bool:
    return content_type_for(Path(name)) != "application/octet-stream"


def list_sources(aws: Aws | None, target: str) -> tuple[list[Source], int]:
    """The audio/video inputs in a folder or under an S3 prefix, sorted; and how many other files were passed
    over (by their extension)."""
    if target.startswith("s3://"):
        if aws is None:
            raise OptionsError("an s3:// input needs AWS")
        return _s3_sources(aws, S3Url.parse(target))
    root = Path(target).expanduser()
    if root.is_file():
        return [Source(root.name, path=root)], 0
    if not root.is_dir():
        raise OptionsError(f"no such file or folder: {target}")
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]
    media = [Source(p.relative_to(root).as_posix(), path=p) for p in files if is_media(p.name)]
    return media, len(files) - len(media)


def _s3_sources(aws: Aws, loc: S3Url) -> tuple[list[Source], int]:
    """An object (s3://b/talk.mp3) or everything under a prefix (s3://b/talks/ or s3://b/talks)."""
    prefix = loc.key
    objects = [(k, n) for k, n in aws.list_objects(loc.bucket, prefix) if not k.endswith("/") and n > 0]
    if prefix and not prefix.endswith("/") and prefix not in {k for k, _ in objects}:
        prefix += "/"  # a folder named without its slash: not s3://b/talks2/...
        objects = [(k, n) for k, n in objects if k.startswith(prefix)]
    base = prefix if prefix.endswith("/") or not prefix else prefix.rpartition("/")[0] + "/"
    base = "" if base == "/" else base
    media = [Source(k[len(base) :], url=f"s3://{loc.bucket}/{k}") for k, _ in objects if is_media(k)]
    return sorted(media, key=lambda s: s.name), len(objects) - len(media)


def result_path(output_dir: Path, source: Source, fmt: str) -> Path:
    """`<output_dir>/<relative name without its extension>.<format extension>`."""
    relative = PurePosixPath(source.name)
    if ".." in relative.parts or relative.is_absolute():
        raise OptionsError(f"refusing an input name that leaves the output folder: {source.name!r}")
    return output_dir.joinpath(*relative.with_suffix(f".{EXTENSIONS[check_format(fmt)]}").parts)


class StateFile:
    """Append-only JSON lines of queued invocations (thread-safe); rewritten at the end with what is pending."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, Invocation]:
        """Pending invocations of an earlier run, by source name."""
        found: dict[str, Invocation] = {}
        if not self.path.is_file():
            return found
        for line in self.path.read_text().splitlines():
            try:
                item = json.loads(line)
                found[item["name"]] = Invocation(
                    Path(item["name"]), item["inference_id"], item["input_location"], item["output_location"],
                    item.get("failure_location"),
                )  # fmt: skip
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption
        return found

    def append(self, name: str, invocation: Invocation) -> None:
        record = {"name": name, **{k: v for k, v in asdict(invocation).items() if k in _RECORDED}}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")

    def rewrite(self, pending: Mapping[str, Invocation]) -> None:
        with self._lock:
            if not pending:
                self.path.unlink(missing_ok=True)
                return
            lines = [
                json.dumps({"name": n, **{k: v for k, v in asdict(i).items() if k in _RECORDED}}, default=str)
                for n, i in pending.items()
            ]
            self.path.write_text("\n".join(lines) + "\n")


_RECORDED = ("inference_id", "input_location", "output_location", "failure_location")


def run_bulk(
    aws: Aws,
    endpoint: str,
    sources: Sequence[Source],
    *,
    output_dir: Path,
    fmt: str = "text",
    options: Mapping[str, Any] | None = None,
    concurrency: int = 8,
    timeout_s: float = 6 * 3600,
    topics: Sequence[str] = (),
    request_ttl_s: int | None = None,
    invocation_timeout_s: int = MAX_INVOCATION_TIMEOUT_S,
    wait: bool = True,
    console: Console | None = None,
    backoff: Backoff = Backoff(first=2.0, cap=30.0),
    clock: Clock | None = None,
) -> BulkResult:
    """Transcribe `sources` on `endpoint`, saving one result file each under `output_dir`; see the module doc.
    Without `wait` it only queues (the state file keeps what was sent: a later run with `wait` collects it)."""
    if not 1 <= concurrency <= 64:
        raise OptionsError("concurrency: must be 1..64")
    console = console or Console(stderr=True)
    clock = clock or Clock()
    result = BulkResult()
    state = StateFile(output_dir / f".koe-invoke-{endpoint}.jsonl")
    earlier = state.load()
    todo: list[Source] = []
    pending: dict[str, Invocation] = {}  # source name -> invocation
    for source in sources:
        if result_path(output_dir, source, fmt).exists():
            result.skipped.append(source)
        elif source.name in earlier:
            pending[source.name] = earlier[source.name]
        else:
            todo.append(source)
    by_name = {s.name: s for s in sources}
    root = input_root(aws, endpoint).rstrip("/") if any(s.path for s in todo) else ""
    accept, attributes = accept_for(fmt), custom_attributes(options or {})

    def send(source: Source) -> tuple[str, Invocation]:
        """Upload (a local file) and invoke; an AWS error fails this file only."""
        try:
            return _send(source)
        except KoeError as exc:
            return source.name, Invocation(Path(source.name), "-", source.url or str(source.path), "", None,
                                           state="failed", error=exc.message)  # fmt: skip

    def _send(source: Source) -> tuple[str, Invocation]:
        inference_id = str(uuid.uuid4())
        if source.path is not None:
            location = f"{root}/{inference_id}/{PurePosixPath(source.name).name}"
            aws.upload_file(source.path, location, content_type=content_type_for(source.path))
        else:
            location = str(source.url)
        answer = aws.invoke_endpoint_async(
            endpoint=endpoint, input_location=location, content_type=content_type_for(Path(source.name)),
            accept=accept, custom_attributes=attributes, inference_id=inference_id, request_ttl_s=request_ttl_s,
            invocation_timeout_s=invocation_timeout_s,
        )  # fmt: skip
        queued = Invocation(Path(source.name), answer.inference_id, location, answer.output_location,
                            answer.failure_location)  # fmt: skip
        state.append(source.name, queued)
        return source.name, queued

    def finish(name: str, done: Invocation) -> None:
        pending.pop(name, None)
        if done.state == "completed" and done.body is not None:
            target = result_path(output_dir, by_name[name], fmt)
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".part")
            partial.write_bytes(done.body)
            partial.replace(target)  # a result file is whole or absent: what resuming relies on
            result.saved[done.inference_id] = target
            result.completed.append(done)
        else:
            result.failed.append(done)
        progress.advance(task)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{endpoint}: transcribing", total=len(todo) + len(pending))
        follower = NotificationQueue(aws, endpoint, topics) if topics and wait else None
        try:
            if follower is not None:
                follower.__enter__()  # subscribed before the first invocation: no notice can be missed
            for name, done in _check_all(aws, pending, concurrency):  # resumed: finished while we were away?
                finish(name, done)
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                for name, queued in pool.map(send, todo):
                    if queued.state == "failed":
                        result.failed.append(queued)
                        progress.advance(task)
                    else:
                        pending[name] = queued
            if not wait:
                result.queued = list(pending.values())
                state.rewrite(pending)
                return result
            progress.update(task, description=f"{endpoint}: waiting for results")
            _wait(aws, pending, finish, follower, concurrency, timeout_s, backoff, clock)
        finally:
            if follower is not None:
                follower.close()
                result.leftovers.extend(follower.problems)
            if wait:
                message = f"no result after {timeout_s:.0f} s; it may still arrive at {{}}"
                for invocation in pending.values():
                    result.timed_out.append(
                        replace(invocation, state="timed out", error=message.format(invocation.output_location))
                    )
                state.rewrite(pending)  # still queued: the next run watches it instead of sending it again
    return result


def _wait(
    aws: Aws,
    pending: dict[str, Invocation],
    finish: Callable[[str, Invocation], None],
    follower: NotificationQueue | None,
    concurrency: int,
    timeout_s: float,
    backoff: Backoff,
    clock: Clock,
) -> None:
    deadline = clock.now() + timeout_s
    if follower is not None:
        ids = {i.inference_id: n for n, i in pending.items()}
        while pending and clock.now() < deadline:
            for notice in follower.notices(wait_s=int(min(20, max(1, deadline - clock.now())))):
                name = ids.get(notice.inference_id)
                if name is not None and name in pending:
                    finish(name, _from_notice(aws, pending[name], notice))
        for name, done in _check_all(aws, pending, concurrency):  # one last look at S3 for anything missed
            finish(name, done)
        return
    for delay in backoff.delays():
        for name, done in _check_all(aws, pending, concurrency):
            finish(name, done)
        if not pending or clock.now() + delay > deadline:
            return
        clock.sleep(delay)


def _check_all(aws: Aws, pending: Mapping[str, Invocation], concurrency: int) -> Iterable[tuple[str, Invocation]]:
    """The pending invocations whose output or failure object exists now (checked `concurrency` at a time)."""
    if not pending:
        return []
    items = list(pending.items())
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        checked = list(pool.map(lambda item: (item[0], check_invocation(aws, item[1])), items))
    return [(name, done) for name, done in checked if done.state != "queued"]


def _from_notice(aws: Aws, invocation: Invocation, notice: Notice) -> Invocation:
    if notice.completed:
        location = notice.output_location or invocation.output_location
        body, content_type = aws.read_object(location)
        return replace(invocation, state="completed", body=body, content_type=content_type)
    failure = notice.failure_location or invocation.failure_location
    if failure:
        try:
            body, _ = aws.read_object(failure)
            return replace(invocation, state="failed", error=failure_message(body))
        except KoeError:
            pass  # not written (yet): the notice's reason is all there is
    return replace(invocation, state="failed", error=notice.reason or "failed (no reason given)")
