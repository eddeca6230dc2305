"""The app's typed state: what every route reads, in one object on `app.state.koe`.

Starlette's `app.state` takes any attribute and types none; routes reach the server's parts through
`app_state(request)` instead, so a missing or misspelt part is a type error, not a `None` at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from koe.audio import AudioMemory
from koe.config import Settings
from koe.metrics import Metrics
from koe.provider import ModelProvider

if TYPE_CHECKING:
    from fastapi import FastAPI

    from koe.jobs.endpoint import LocalEndpoint


@dataclass
class AppState:
    settings: Settings
    models: ModelProvider
    """Loaded at start (the container) or on demand (`koe serve`): see koe.provider."""
    audio_memory: AudioMemory
    """One budget for decoded audio, shared by the synchronous routes and the job workers."""
    metrics: Metrics
    jobs: LocalEndpoint | None = None
    """The local endpoint's queue and workers (`koe serve`); None in the container."""
    threads_left_running: int = 0
    """Job threads still inside the model after shutdown (the server then ends with os._exit)."""


def app_state(where: HTTPConnection | FastAPI) -> AppState:
    """The state of the app serving this request (or of this app)."""
    app = where.app if isinstance(where, HTTPConnection) else where
    state: AppState = app.state.koe
    return state
