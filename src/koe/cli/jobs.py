"""Commands for the local async endpoint.

    koe worker                      a worker process on the same queue as `koe serve` (same KOE_DATA_DIR)
    koe submit FILE... [--wait]     upload files as jobs; with --wait, follow them and print the results
    koe jobs [--status S]           list jobs
    koe job ID                      one job's status, progress, timings and error (JSON)
    koe result ID [--format F]      a completed job's transcript

The client commands talk to the server at --server (KOE_SERVER, default http://127.0.0.1:8080) and send
--api-key (KOE_API_KEY) when the server needs one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from koe.client import DEFAULT_SERVER, FINISHED, ApiError, Client, UnreachableError
from koe.config import Settings
from koe.formats import EXTENSIONS
from koe.shutdown import end

err = Console(stderr=True)


Server = Annotated[str, typer.Option("--server", envvar="KOE_SERVER", help="The koe server's URL.")]
ApiKey = Annotated[
    str | None, typer.Option("--api-key", envvar="KOE_API_KEY", help="API key, if the server needs one.")
]


def register(app: typer.Typer) -> None:
    app.command("worker")(worker_command)
    app.command("submit")(submit_command)
    app.command("jobs")(jobs_command)
    app.command("job")(job_command)
    app.command("result")(result_command)


# -- koe worker --------------------------------------------------------------------------------------------


def worker_command(
    concurrency: Annotated[int | None, typer.Option(help="Jobs this worker runs at once.")] = None,
    model: Annotated[str | None, typer.Option(help="Default model (KOE_MODEL).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="The queue's folder (KOE_DATA_DIR, ~/.koe).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
) -> None:
    """Run a worker on the local endpoint's queue until SIGTERM (twice: release running jobs at once)."""
    from koe.jobs.endpoint import LocalEndpoint
    from koe.logs import configure_logging

    overrides: dict[str, Any] = {
        "worker_concurrency": concurrency,
        "model": model,
        "data_dir": data_dir,
        "device": device,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(log_level)
    endpoint = LocalEndpoint(settings)
    try:
        endpoint.pool.run_until_signalled()
    finally:
        endpoint.stop(0)
    end(threads_in_model=endpoint.pool.threads_left_running)


# -- the client ----------------------------------------------------------------------------------------------


@contextmanager
def _client(server: str, api_key: str | None) -> Iterator[Client]:
    """A Client for the command; a server that cannot be reached is a red line and exit code 2."""
    try:
        with Client(server, api_key) as client:
            yield client
    except UnreachableError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _fail(exc: ApiError) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def submit_command(
    files: Annotated[list[Path], typer.Argument(help="Audio or video files.", exists=True, dir_okay=False)],
    wait: Annotated[bool, typer.Option(help="Follow the jobs and print their results.")] = False,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text|json|verbose_json|srt|vtt|tsv|rttm")] = "text",
    language: Annotated[str | None, typer.Option(help="Language code, or auto.")] = None,
    task: Annotated[str | None, typer.Option(help="transcribe | translate")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the server's).")] = None,
    job_id: Annotated[str | None, typer.Option("--id", help="Job id (one file only).")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Notify this URL when the job finishes.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="With --wait: write FILE.<ext> here.")] = None,
    diarize: Annotated[bool, typer.Option(help="Label speakers: who said what.")] = False,
    num_speakers: Annotated[int | None, typer.Option(help="Exact number of speakers (implies --diarize).")] = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Submit FILE... as jobs. Prints the job ids; with --wait, follows them and prints the transcripts."""
    if job_id and len(files) > 1:
        err.print("[red]error:[/red] --id names one job; give one file")
        raise typer.Exit(2)
    fields = {"format": fmt, "language": language, "task": task, "model": model, "id": job_id,
              "webhook_url": webhook_url, "diarize": "true" if diarize else None,
              "num_speakers": num_speakers}  # fmt: skip
    data = {k: v for k, v in fields.items() if v is not None}
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"))
    with _client(server, api_key) as client, Progress(*columns, TimeElapsedColumn(), console=err) as bar:
        jobs: list[tuple[Path, str, TaskID]] = []
        for path in files:
            task_id = bar.add_task(path.name, total=None, state="uploading")
            try:
                view = client.submit(path, **data)
            except ApiError as exc:
                bar.update(task_id, state=f"[red]{exc}[/red]", total=1, completed=0)
                continue
            bar.update(task_id, state=view["status"])
            jobs.append((path, view["id"], task_id))
        if not wait:
            bar.stop()
            for path, id_, _ in jobs:
                typer.echo(f"{id_}\t{path}")
            raise typer.Exit(0 if len(jobs) == len(files) else 1)
        views = _follow(client, bar, jobs)
        bar.stop()
        failed = len(files) - len(jobs)
        for path, id_, _ in jobs:
            view = views[id_]
            if view["status"] != "completed":
                failed += 1
                error = view.get("error") or {}
                err.print(f"[red]{path}:[/red] {view['status']}: {error.get('message', '')}")
                continue
            try:
                body = client.result(id_, fmt)
            except ApiError as exc:
                raise _fail(exc) from None
            if output_dir is None:
                typer.echo(body, nl=not body.endswith("\n"))
            else:
                output_dir.mkdir(parents=True, exist_ok=True)
                (output_dir / f"{path.stem}.{EXTENSIONS.get(fmt, 'txt')}").write_text(body, encoding="utf-8")
    if failed:
        raise typer.Exit(1)


def _follow(client: Client, bar: Progress, jobs: list[tuple[Path, str, TaskID]]) -> dict[str, dict[str, Any]]:
    """Poll the jobs until all have finished, moving each file's bar with its audio seconds done."""
    views: dict[str, dict[str, Any]] = {}
    open_jobs = list(jobs)
    while open_jobs:
        for item in list(open_jobs):
            _, job_id, task_id = item
            try:
                view = client.job(job_id)
            except ApiError as exc:
                view = {"status": "failed", "error": {"message": str(exc)}}
            views[job_id] = view
            progress = view.get("progress") or {}
            total = progress.get("total_s")
            done = progress.get("done_s") or 0.0
            state = view["status"]
            if total:
                state = f"{state} {done:.0f}/{total:.0f} s"
            bar.update(task_id, total=total, completed=done if total else 0, state=state)
            if view["status"] in FINISHED:
                if view["status"] == "completed" and total:
                    bar.update(task_id, completed=total)
                open_jobs.remove(item)
        if open_jobs:
            time.sleep(0.5)
    return views


def jobs_command(
    status: Annotated[str | None, typer.Option(help="queued|running|completed|failed|expired|cancelled")] = None,
    limit: Annotated[int, typer.Option(help="How many (newest first).")] = 20,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """List jobs, newest first."""
    with _client(server, api_key) as client:
        try:
            listed = client.jobs(status, limit)
        except ApiError as exc:
            raise _fail(exc) from None
    table = Table("id", "status", "progress", "created", "error")
    for view in listed:
        progress = view.get("progress") or {}
        total = progress.get("total_s")
        shown = f"{progress.get('done_s', 0):.0f}/{total:.0f} s" if total else "-"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(view["created_at"]))
        error = (view.get("error") or {}).get("message", "")
        table.add_row(view["id"], view["status"], shown, created, error)
    Console().print(table)


def job_command(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Show one job (JSON): status, progress, timings, locations, error."""
    with _client(server, api_key) as client:
        try:
            typer.echo(json.dumps(client.job(job_id), indent=2))
        except ApiError as exc:
            raise _fail(exc) from None


def result_command(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    fmt: Annotated[str | None, typer.Option("--format", "-f", help="Default: the job's format.")] = None,
    server: Server = DEFAULT_SERVER,
    api_key: ApiKey = None,
) -> None:
    """Print a completed job's transcript, in any format (no transcribing again)."""
    with _client(server, api_key) as client:
        try:
            body = client.result(job_id, fmt)
        except ApiError as exc:
            raise _fail(exc) from None
    typer.echo(body, nl=not body.endswith("\n"))
