"""koe's log output: one setup for every process (koe serve, koe worker, the container), HTTP or not."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str = "info") -> None:
    """Log koe's messages to stderr next to uvicorn's (CloudWatch picks up both in a container)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request's full URL at INFO: a client's webhook URL may carry credentials.
    logging.getLogger("httpx").setLevel(logging.WARNING)
