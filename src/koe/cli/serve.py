"""`koe serve`: run the HTTP endpoint (SageMaker's /ping and /invocations) on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from koe.config import Settings
from koe.shutdown import end


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    model: Annotated[
        str | None, typer.Option(help="Model name, folder or model.tar.gz (default base; tiny.en: English, faster).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default 8080).")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    compute_type: Annotated[str | None, typer.Option(help="auto | int8 | float16 | ...")] = None,
    max_input_bytes: Annotated[int | None, typer.Option(help="Largest accepted request body.")] = None,
    spool_dir: Annotated[Path | None, typer.Option(help="Where request bodies are spooled.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Queue and file:// store (~/.koe).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Jobs the worker pool runs at once.")] = None,
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Listen beyond loopback without API keys (refused otherwise).")
    ] = False,
) -> None:
    """Serve the local async endpoint (/v1/jobs, /metrics) plus GET /ping and POST /invocations.
    Ctrl-C (or SIGTERM) drains and stops; a second one releases running jobs back to the queue at once."""
    from koe.api import create_app
    from koe.api.server import check_exposure, run
    from koe.api.state import app_state
    from koe.logs import configure_logging

    overrides: dict[str, Any] = {
        "model": model, "host": host, "port": port, "device": device, "compute_type": compute_type,
        "max_input_bytes": max_input_bytes, "spool_dir": spool_dir,
        "data_dir": data_dir, "worker_concurrency": concurrency, "insecure": insecure or None,
    }  # fmt: skip
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    if "jobs_enabled" not in settings.model_fields_set:  # koe serve is the local async endpoint
        settings = settings.model_copy(update={"jobs_enabled": True})
    configure_logging(log_level)
    check_exposure(settings)
    app = create_app(settings)
    forced = not run(app, settings, log_level=log_level)
    end(forced=forced, threads_in_model=app_state(app).threads_left_running)
