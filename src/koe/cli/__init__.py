"""The `koe` command: thin wrappers that parse flags, build Settings once, and call the library."""

from __future__ import annotations

import typer

from koe.cli import deploy, jobs, models, package, serve, transcribe

app = typer.Typer(
    name="koe",
    help="koe: fast speech-to-text on faster-whisper (CLI, local endpoint, SageMaker).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (transcribe, models, serve, package, deploy, jobs):
    module.register(app)


def main() -> None:
    app()
