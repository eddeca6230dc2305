"""Run the app under uvicorn with a two-stage SIGTERM.

The first SIGTERM (or Ctrl-C) stops accepting connections and lets in-flight requests finish for up to
`settings.shutdown_grace_s` (SageMaker sends SIGKILL 30 s after SIGTERM); a second one stops waiting.
"""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from koe.config import Settings

logger = logging.getLogger("koe.server")


class GracefulServer(uvicorn.Server):
    """uvicorn's server, where a second SIGTERM (not only a second Ctrl-C) forces the exit."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            logger.warning("second signal: exiting without waiting for in-flight requests")
            self.force_exit = True
        else:
            logger.info("signal %d: finishing in-flight requests (up to %gs)", sig, self.grace_s)
            self.should_exit = True

    @property
    def grace_s(self) -> float:
        return float(self.config.timeout_graceful_shutdown or 0)


def server_for(app: FastAPI, settings: Settings, *, log_level: str = "info") -> GracefulServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        timeout_keep_alive=75,  # longer than SageMaker's 60 s idle, so it never sees a half-closed connection
        server_header=False,
    )
    return GracefulServer(config)


def run(app: FastAPI, settings: Settings, *, log_level: str = "info") -> bool:
    """Serve `app` until a signal. False when a second signal forced the exit: the caller should then exit at
    once (`os._exit`), since request threads may still be running and Python would wait for them."""
    server = server_for(app, settings, log_level=log_level)
    server.run()
    return not server.force_exit


def check_exposure(settings: Settings) -> None:
    """`koe serve` listening beyond loopback with no API keys would let anyone on the network read every
    transcript: refuse (SystemExit) unless `settings.insecure`, and then warn on every start."""
    from koe.api.sites import is_loopback

    if settings.api_keys or is_loopback(settings.host.strip("[]").lower()):
        return
    problem = (
        f"listening on {settings.host} without API keys: anyone who can reach this machine can submit jobs and "
        "read every transcript"
    )
    if not settings.insecure:
        raise SystemExit(f"koe serve: refusing to start: {problem}. Set KOE_API_KEYS, or pass --insecure.")
    logger.warning("INSECURE: %s (--insecure)", problem)
