"""`koe package`: build a SageMaker model.tar.gz (model files at the root, code/inference.py beside them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from koe.config import Settings
from koe.errors import KoeError

err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("package")(package_command)


def package_command(
    model: Annotated[
        str,
        typer.Option(
            help="Model name (tiny.en, base, large-v3-turbo, distil-large-v3, "
            "kotoba-tech/kotoba-whisper-v2.0-faster, ...), folder or archive."
        ),
    ],
    output: Annotated[Path, typer.Option(help="Where to write the archive.")] = Path("model.tar.gz"),
    source: Annotated[bool, typer.Option(help="Bundle koe's source under code/koe/.")] = True,
) -> None:
    """Write model.tar.gz for SageMaker: upload it to S3 and use it as the model's ModelDataUrl."""
    from koe.deploy.package import build_model_archive  # here: it loads the model code, which other commands skip

    settings = Settings.model_validate({})
    try:
        with err.status(f"packaging {model} ..."):
            path = build_model_archive(model, output, settings.cache_dir, include_source=source)
    except KoeError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None
    size = path.stat().st_size
    err.print(f"wrote {path} ({size / 1e6:.1f} MB)")
    typer.echo(str(path))
