"""How a koe process ends when threads may still be running: the one `os._exit` of the servers and workers."""

from __future__ import annotations

import os
import sys


def end(*, forced: bool = False, threads_in_model: int = 0) -> None:
    """Return, so the process ends normally; or end it now, without finalizing the interpreter:

    - after a forced stop (a second signal): exit 1, since request threads may still be running and a normal
      exit would wait for them;
    - when job threads released at shutdown are still inside the model: exit 0, since finalizing the
      interpreter under a thread inside CTranslate2 aborts the process (SIGABRT)."""
    if not forced and not threads_in_model:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if forced else 0)
