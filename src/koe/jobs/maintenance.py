"""Maintenance: the worker pool's housekeeping thread.

Every `heartbeat_s` it renews the leases of in-flight jobs (which also fails those past their invocation
timeout) and reports the worker as alive; every `reap_interval_s` it reaps the queue (lapsed leases, TTLs) and
performs effects left pending by any process; on every tick it unloads the model after `model_idle_s` without a
job: the local counterpart of scaling to zero.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from koe.errors import KoeError
from koe.jobs.effects import Effects
from koe.jobs.queue import JobQueue
from koe.metrics import Metrics
from koe.ondemand import OnDemandModels

logger = logging.getLogger("koe.jobs.maintenance")


class Maintenance:
    """Heartbeats, the reaper and idle unload for one worker; `run` until `halt` is set."""

    def __init__(
        self,
        queue: JobQueue,
        engines: OnDemandModels,
        effects: Effects,
        metrics: Metrics,
        *,
        worker_id: str,
        concurrency: int,
        heartbeat_s: float,
        reap_interval_s: float,
        renew_leases: Callable[[], None],
    ) -> None:
        self.queue = queue
        self.engines = engines
        self.effects = effects
        self.metrics = metrics
        self.worker_id = worker_id
        self.concurrency = concurrency
        self.heartbeat_s = heartbeat_s
        self.reap_interval_s = reap_interval_s
        self.renew_leases = renew_leases

    def run(self, halt: threading.Event) -> None:
        tick = min(self.heartbeat_s, self.reap_interval_s, 1.0)
        next_beat = next_reap = 0.0
        while not halt.wait(tick if next_beat else 0):
            now = time.monotonic()
            try:
                if now >= next_beat:
                    next_beat = now + self.heartbeat_s
                    self.renew_leases()
                    self.report_alive()
                if now >= next_reap:
                    next_reap = now + self.reap_interval_s
                    self.reap()
                self.engines.unload_if_idle()
            except KoeError as exc:  # a known condition (the disk is full, say): one line, no traceback
                logger.error("maintenance failed (%s: %s); retrying", exc.type, exc.message)
            except Exception:
                logger.exception("maintenance failed; retrying")

    def reap(self) -> None:
        """Reap the queue, then do the effects of jobs finished by any process that did not do them."""
        reaped = self.queue.reap()
        self.metrics.invocation_failures.inc(len(reaped.failed))
        self.metrics.expired_requests.inc(len(reaped.expired))
        for job in self.queue.claim_effects():
            self.effects.submit(job)

    def report_alive(self) -> None:
        self.queue.worker_heartbeat(
            self.worker_id, concurrency=self.concurrency, models_loaded=self.engines.loaded_count
        )

    def model_changed(self, loaded: bool) -> None:
        """The on-demand model was loaded or unloaded: count loads and report the new state at once."""
        if loaded:
            self.metrics.model_loads.inc()
        try:
            self.report_alive()
        except Exception:
            logger.exception("cannot record the model state")
