"""koe's HTTP server: the app factory (`create_app`) and its routers."""

from koe.api.app import DEFAULT_ROUTERS, EngineFactory, create_app

__all__ = ["DEFAULT_ROUTERS", "EngineFactory", "create_app"]
