"""Models loaded only while there is work: the local counterpart of scaling to zero (`koe serve`).

`EngineHolder` owns one model. `use()` loads it on first need (concurrent first users share one load) and
counts users; `unload_if_idle()` lets it go after `idle_s` seconds without a user. Letting go means
dropping the holder's reference: the model's memory is freed when the last user holding the Engine (a
synchronous request, say) finishes, never under it. `OnDemandModels` keeps one holder per model name and is
the `koe.provider.ModelProvider` of the local endpoint.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from koe.errors import KoeError, ModelUnavailableError, NotReadyError, UnknownModelError
from koe.provider import WHISPER_1, known_models, offline_models, real_name

if TYPE_CHECKING:
    from koe.engine import Engine

logger = logging.getLogger("koe.ondemand")


class EngineHolder:
    """One model, loaded on first use and unloaded after `idle_s` seconds without users (0: never)."""

    def __init__(
        self,
        name: str,
        load: Callable[[], Engine],
        *,
        idle_s: float,
        unload: Callable[[Engine], None] | None = None,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._load = load
        self._unload = unload
        self.idle_s = idle_s
        self.on_change = on_change
        self._clock = clock
        self._engine: Engine | None = None
        self._users = 0
        self._idle_since = clock()
        self._lock = threading.Lock()  # guards _users and _idle_since
        self._load_lock = threading.Lock()  # guards _engine; held while loading
        self._loading: threading.Thread | None = None
        self.last_error: KoeError | None = None
        self.loads = 0
        self.unloads = 0

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> Engine | None:
        """The engine if loaded (never loads it)."""
        return self._engine

    @contextmanager
    def use(self) -> Iterator[Engine]:
        """The engine, loaded if needed; it stays loaded at least until the block ends."""
        with self._lock:
            self._users += 1
        try:
            yield self.get()
        finally:
            with self._lock:
                self._users -= 1
                self._idle_since = self._clock()

    def get(self) -> Engine:
        """The engine, loading it now if needed (blocking). Counts as use for the idle timer."""
        with self._load_lock:
            if self._engine is None:
                started = time.perf_counter()
                try:
                    self._engine = self._load()
                except KoeError as exc:
                    self.last_error = exc
                    raise
                except Exception as exc:
                    self.last_error = ModelUnavailableError(f"cannot load model {self.name}: {exc}")
                    raise self.last_error from exc
                self.last_error = None
                self.loads += 1
                logger.info("model %s loaded in %.1fs", self.name, time.perf_counter() - started)
                self._changed(True)
            with self._lock:
                self._idle_since = self._clock()
            return self._engine

    def ready(self) -> Engine:
        """The engine if loaded (never blocks); otherwise start loading it and raise NotReadyError."""
        engine = self._engine
        if engine is not None:
            with self._lock:
                self._idle_since = self._clock()
            return engine
        with self._lock:
            if self._loading is None or not self._loading.is_alive():
                self._loading = threading.Thread(target=self._load_quietly, name="koe-model-load", daemon=True)
                self._loading.start()
        if self.last_error is not None:
            raise self.last_error
        raise NotReadyError(f"model {self.name} is loading (it loads on demand); retry in a few seconds")

    def _load_quietly(self) -> None:
        try:
            self.get()
        except Exception:
            logger.exception("cannot load model %s", self.name)

    def unload_if_idle(self) -> bool:
        """Unload the model if nobody has used it for `idle_s`; True if it did."""
        if self.idle_s <= 0:
            return False
        with self._load_lock, self._lock:
            engine = self._engine
            if engine is None or self._users or self._clock() - self._idle_since < self.idle_s:
                return False
            self._engine = None
        self._drop(engine)
        logger.info("model %s unloaded after %gs idle", self.name, self.idle_s)
        return True

    def close(self) -> None:
        """Unload the model now (shutdown), unless a job still uses it."""
        with self._load_lock, self._lock:
            if self._users:
                logger.warning("model %s still in use by %d job(s); not unloading it", self.name, self._users)
                return
            engine, self._engine = self._engine, None
        if engine is not None:
            self._drop(engine)

    def _drop(self, engine: Engine) -> None:
        if self._unload is not None:
            self._unload(engine)
        del engine
        gc.collect()
        self.unloads += 1
        self._changed(False)

    def _changed(self, loaded: bool) -> None:
        if self.on_change is not None:
            try:
                self.on_change(loaded)
            except Exception:
                logger.exception("model state callback failed")


class OnDemandModels:
    """One EngineHolder per model name; `None` (or an alias of it) means the default model. Any model koe
    knows (`koe models`) can be asked for; it is loaded on first use."""

    def __init__(
        self,
        load: Callable[[str], Engine],
        *,
        default: str,
        idle_s: float,
        unload: Callable[[Engine], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        cache_dir: Path | None = None,
    ) -> None:
        self._load = load
        self.default = default
        self.cache_dir = cache_dir
        self.idle_s = idle_s
        self._unload = unload
        self._clock = clock
        self._holders: dict[str, EngineHolder] = {}
        self._lock = threading.Lock()
        self.on_change: Callable[[bool], None] | None = None
        """Called with True after a model loads and False after one unloads."""

    def name(self, model: str | None) -> str:
        return real_name(model, self.default)

    # -- koe.provider.ModelProvider ---------------------------------------------------------------------------

    def check(self, model: str | None) -> str:
        name = self.name(model)
        if name == self.default:
            return name
        known = known_models(self._models_dir())
        if name not in known:
            raise UnknownModelError(
                f"model: unknown model {str(model)[:100]!r}; use {WHISPER_1!r} (the server's default, "
                f"{self.default}) or one of: {', '.join(sorted(known))}"
            )
        return name

    def names(self) -> list[str]:
        return list(dict.fromkeys([self.default, WHISPER_1, *offline_models(self._models_dir())]))

    def get(self, model: str | None = None) -> Engine:
        return self.holder(model).get()

    def ready(self, model: str | None = None) -> Engine:
        return self.holder(model).ready()

    def loaded(self, model: str | None = None) -> Engine | None:
        return self.holder(model).engine

    def healthy(self) -> None:
        """Always: a model that is not loaded is loaded on demand, so it is no fault here."""

    def _models_dir(self) -> Path:
        from koe.config import default_cache_dir

        return self.cache_dir or default_cache_dir()

    # -- holders ------------------------------------------------------------------------------------------------

    def holder(self, model: str | None = None) -> EngineHolder:
        name = self.name(model)
        with self._lock:
            if name not in self._holders:
                self._holders[name] = EngineHolder(
                    name,
                    lambda: self._load(name),
                    idle_s=self.idle_s,
                    unload=self._unload,
                    on_change=self._changed,
                    clock=self._clock,
                )
            return self._holders[name]

    def use(self, model: str | None = None) -> AbstractContextManager[Engine]:
        return self.holder(model).use()

    def holders(self) -> list[EngineHolder]:
        with self._lock:
            return list(self._holders.values())

    @property
    def loaded_count(self) -> int:
        """How many models are loaded."""
        return sum(1 for h in self.holders() if h.loaded)

    @property
    def loads(self) -> int:
        return sum(h.loads for h in self.holders())

    @property
    def unloads(self) -> int:
        return sum(h.unloads for h in self.holders())

    def unload_if_idle(self) -> int:
        return sum(1 for h in self.holders() if h.unload_if_idle())

    def close(self) -> None:
        for holder in self.holders():
            holder.close()

    def _changed(self, loaded: bool) -> None:
        if self.on_change is not None:
            self.on_change(loaded)
