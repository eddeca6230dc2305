"""koe's HTTP server: the app factory (`create_app`) and its routers.

Imported on first use: importing one module under koe.api loads what that module needs, not the whole app.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from koe.api.app import DEFAULT_ROUTERS, EngineFactory, create_app

__all__ = ["DEFAULT_ROUTERS", "EngineFactory", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'koe.api' has no attribute {name!r}")
    value = getattr(importlib.import_module("koe.api.app"), name)
    globals()[name] = value
    return value
