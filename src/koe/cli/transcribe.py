"""`koe transcribe FILE...`: transcribe files on this machine, with a progress bar and a summary table."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from koe import transcription
from koe.audio import AudioLimits
from koe.config import Settings
from koe.errors import KoeError
from koe.formats import EXTENSIONS, check_format, render
from koe.options import parse_options
from koe.transcript import Transcript

err = Console(stderr=True)


@dataclass
class Outcome:
    file: Path
    duration: float = 0.0
    wall: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe_command)


def transcribe_command(
    files: Annotated[list[Path], typer.Argument(help="Audio or video files.")],
    model: Annotated[
        str | None, typer.Option(help="Model name, folder or model.tar.gz (default base; tiny.en: English, faster).")
    ] = None,
    language: Annotated[str | None, typer.Option(help="Language code, or auto.")] = None,
    task: Annotated[str, typer.Option(help="transcribe | translate")] = "transcribe",
    fmt: Annotated[str, typer.Option("--format", "-f", help="text,json,verbose_json,srt,vtt,tsv,rttm")] = "text",
    output_dir: Annotated[Path | None, typer.Option(help="Write FILE.<ext> here instead of printing.")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    compute_type: Annotated[str | None, typer.Option(help="auto | int8 | float16 | ...")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Chunks per batch (batched mode).")] = None,
    mode: Annotated[str, typer.Option(help="auto | batched | sequential")] = "auto",
    beam_size: Annotated[int, typer.Option(help="Beam size.")] = 5,
    word_timestamps: Annotated[bool, typer.Option(help="Word-level timestamps.")] = False,
    vad: Annotated[bool, typer.Option(help="Skip silence with Silero VAD.")] = True,
    initial_prompt: Annotated[str | None, typer.Option(help="Text to condition the first window on.")] = None,
    diarize: Annotated[bool, typer.Option(help="Label speakers: who said what.")] = False,
    num_speakers: Annotated[int | None, typer.Option(help="Exact number of speakers (implies --diarize).")] = None,
    min_speakers: Annotated[int | None, typer.Option(help="Fewest speakers (implies --diarize).")] = None,
    max_speakers: Annotated[int | None, typer.Option(help="Most speakers (implies --diarize).")] = None,
) -> None:
    """Transcribe FILE... and print (or write) the transcripts. Exit code 1 if any file failed."""
    overrides = {"model": model, "device": device, "compute_type": compute_type}
    settings = Settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    try:
        formats = [check_format(f.strip()) for f in fmt.split(",") if f.strip()]
        options = parse_options(
            {
                "language": language,
                "task": task,
                "batch_size": batch_size,
                "mode": mode,
                "beam_size": beam_size,
                "word_timestamps": word_timestamps,
                "vad": vad,
                "initial_prompt": initial_prompt,
                "diarize": diarize,
                "num_speakers": num_speakers,
                "min_speakers": min_speakers,
                "max_speakers": max_speakers,
            }
        )
        from koe.engine import Engine  # here: the other commands start without CTranslate2

        request = transcription.check(Engine.from_settings(settings), options, formats)
    except KoeError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    limits = AudioLimits(settings.max_input_bytes, settings.max_duration_s)
    outcomes = _run_all(request, files, formats, output_dir, limits)
    _summary(outcomes)
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


def _run_all(
    request: transcription.Transcription,
    files: list[Path],
    formats: Sequence[str],
    output_dir: Path | None,
    limits: AudioLimits,
) -> list[Outcome]:
    outcomes = []
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} s"))
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=True) as bar:
        for path in files:
            task = bar.add_task(path.name, total=0)
            outcome = Outcome(path)
            started = time.perf_counter()
            try:
                audio = request.decode(path, limits)
                outcome.duration = audio.duration
                bar.update(task, total=audio.duration)
                transcript = request.transcribe(audio, _updater(bar, task))
                _emit(transcript, path, formats, output_dir)
                outcome.warnings = transcript.warnings
                for warning in transcript.warnings:
                    err.print(f"[yellow]{path}: warning:[/yellow] {warning}")
            except KoeError as exc:
                outcome.error = exc.message
                err.print(f"[red]{path}:[/red] {exc.message}")
            outcome.wall = time.perf_counter() - started
            bar.remove_task(task)
            outcomes.append(outcome)
    return outcomes


def _updater(bar: Progress, task: TaskID) -> Callable[[float, float], None]:
    def update(done: float, total: float) -> None:
        bar.update(task, completed=done)

    return update


def _emit(transcript: Transcript, path: Path, formats: Sequence[str], output_dir: Path | None) -> None:
    for fmt in formats:
        body = render(transcript, fmt, name=path.stem)
        if output_dir is None:
            typer.echo(body, nl=not body.endswith("\n"))
        else:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / f"{path.stem}.{EXTENSIONS[fmt]}").write_text(body, encoding="utf-8")


def _summary(outcomes: list[Outcome]) -> None:
    table = Table("file", "duration", "wall time", "x real time", "result")
    for o in outcomes:
        speed = f"{o.duration / o.wall:.1f}x" if o.wall and o.duration else "-"
        table.add_row(str(o.file), f"{o.duration:.1f} s", f"{o.wall:.2f} s", speed, _result(o))
    err.print(table)


def _result(outcome: Outcome) -> str:
    if outcome.error:
        return outcome.error
    if outcome.warnings:  # the text is there but likely wrong: not "ok"
        return "[yellow]warning:[/yellow] " + "; ".join(outcome.warnings)
    return "ok"
