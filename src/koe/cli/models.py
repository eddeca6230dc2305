"""`koe models`: the models koe knows, where they live, and whether they are usable offline."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from koe.config import Settings


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)


def models_command() -> None:
    """List the bundled and hub models with their location."""
    from koe.model_files import list_models  # here: faster-whisper loads CTranslate2, which other commands skip

    settings = Settings()
    table = Table("name", "kind", "ready offline", "location")
    for info in list_models(settings.cache_dir):
        name = f"{info.name} (default)" if info.name == settings.model else info.name
        table.add_row(name, info.kind, "yes" if info.ready else "no", info.location)
    Console().print(table)
