"""Where every door gets its model: one interface (`ModelProvider`), two ways to hold models.

- `LoadedModel` (the SageMaker container): one model, loaded when the server starts; it answers 503 until
  then, and for good after a fatal GPU error (SageMaker then replaces the instance).
- `OnDemandModels` (koe.ondemand, `koe serve`): any model koe knows, loaded on first use and unloaded when idle.

Both answer to the model's own name and to the aliases in `ALIASES` (`whisper-1`, OpenAI's name, among them).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from koe.errors import KoeError, ModelUnavailableError, NotReadyError, UnknownModelError

if TYPE_CHECKING:
    from koe.engine import Engine

logger = logging.getLogger("koe.provider")

WHISPER_1 = "whisper-1"
"""OpenAI's model name: on koe, the server's own model."""
ALIASES = frozenset({"", "default", WHISPER_1})


def real_name(model: str | None, default: str) -> str:
    """The name of the model `model` asks for: None or an alias is `default`."""
    return default if model is None or model in ALIASES else model


def known_models(cache_dir: Path) -> list[str]:
    """Every model koe knows by name (bundled, and the hub's, downloaded or not)."""
    from koe.model_files import list_models  # here: it loads faster-whisper

    return [info.name for info in list_models(cache_dir)]


def offline_models(cache_dir: Path) -> list[str]:
    """The models this machine can load without a network (bundled, or already downloaded)."""
    from koe.model_files import list_models

    return [info.name for info in list_models(cache_dir) if info.ready]


class ModelProvider(Protocol):
    """How a door gets a model. `model` is a name or an alias; None is the server's own model."""

    default: str
    """The server's own model."""

    def name(self, model: str | None) -> str:
        """The model's real name (an alias is the default model)."""
        ...

    def check(self, model: str | None) -> str:
        """The real name of a model this provider can run; UnknownModelError (404) if it cannot."""
        ...

    def names(self) -> list[str]:
        """The model ids to list: the default, its aliases that clients use, and what else runs offline."""
        ...

    def get(self, model: str | None = None) -> Engine:
        """The engine, loading it now if this provider loads on demand (blocking)."""
        ...

    def ready(self, model: str | None = None) -> Engine:
        """The engine if it is loaded (never blocks); NotReadyError (503) or the load's error if not."""
        ...

    def loaded(self, model: str | None = None) -> Engine | None:
        """The engine if it is loaded, else None (never blocks, never starts a load)."""
        ...

    def healthy(self) -> None:
        """Raise the reason this server cannot serve (503); return when it can."""
        ...


class LoadedModel:
    """One model, loaded once at start (`load`, blocking: run it in a worker thread)."""

    def __init__(self, default: str, load: Callable[[], Engine]) -> None:
        self.default = default
        self._load = load
        self._engine: Engine | None = None
        self.error: KoeError | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model; a failure is kept as `error` (and answered by `ready`), not raised."""
        try:
            engine = self._load()
        except KoeError as exc:
            logger.error("cannot load the model: %s", exc.message)
            self.error = exc
            return
        except Exception as exc:
            logger.exception("cannot load the model")
            self.error = ModelUnavailableError(f"cannot load the model: {type(exc).__name__}: {exc}")
            return
        with self._lock:
            self._engine = engine
        placement = engine.placement
        logger.info("ready: model %s on %s/%s", engine.name, placement.device, placement.compute_type)

    def close(self) -> None:
        """Drop the model: requests still running keep their own reference, so it goes when the last ends."""
        with self._lock:
            self._engine = None

    def name(self, model: str | None) -> str:
        return real_name(model, self.default)

    def check(self, model: str | None) -> str:
        name = self.name(model)
        if name != self.default:
            raise UnknownModelError(
                f"model: {str(model)[:100]!r} is not served here; use {self.default!r} or {WHISPER_1!r} "
                "(the same model)"
            )
        return name

    def names(self) -> list[str]:
        return list(dict.fromkeys([self.default, WHISPER_1]))

    def get(self, model: str | None = None) -> Engine:
        return self.ready(model)

    def ready(self, model: str | None = None) -> Engine:
        self.check(model)
        engine = self._engine
        if engine is not None:
            return engine
        raise self.error or NotReadyError("the model is still loading; retry shortly")

    def loaded(self, model: str | None = None) -> Engine | None:
        return self._engine if self.name(model) == self.default else None

    def healthy(self) -> None:
        engine = self.ready()
        if engine.failed:
            # The CUDA context is broken for good: say so, and SageMaker replaces the instance.
            raise ModelUnavailableError(f"the GPU failed and this instance must be replaced: {engine.failed}")
