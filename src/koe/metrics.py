"""Prometheus metrics named after SageMaker Async Inference's CloudWatch metrics.

One `Metrics` per app or worker process, each with its own registry (never the global default one), so
tests and several apps in one process do not share counters. Queue-wide values (backlog, age of the oldest
request, capacity, loaded models) are read from the shared job database at scrape time, so every process
sees the same numbers; counters and histograms count what this process did.

| Prometheus name | SageMaker metric |
| --- | --- |
| koe_approximate_backlog_size | ApproximateBacklogSize |
| koe_approximate_backlog_size_per_instance | ApproximateBacklogSizePerInstance |
| koe_approximate_age_of_oldest_request_seconds | ApproximateAgeOfOldestRequest |
| koe_has_backlog_without_capacity | HasBacklogWithoutCapacity |
| koe_invocations_processed_total | InvocationsProcessed |
| koe_invocation_failures_total | InvocationFailures |
| koe_expired_requests_total | ExpiredRequests |
| koe_notification_failures_total | NotificationFailures |
| koe_time_in_backlog_seconds | TimeInBacklog |
| koe_total_processing_time_seconds | TotalProcessingTime |
| koe_audio_seconds_transcribed_total | (koe) audio transcribed |
| koe_model_loaded | (koe) models loaded by live workers |
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger("koe.metrics")

TIME_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600)

QueueView = Callable[[], dict[str, float]]
"""Returns the queue-wide gauges: queued, running, oldest_age_s, capacity, workers, models_loaded."""


class Metrics:
    """The counters, histograms and queue gauges of one process, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.invocations_processed = Counter(
            "koe_invocations_processed", "InvocationsProcessed: jobs completed.", registry=r
        )
        self.invocation_failures = Counter(
            "koe_invocation_failures", "InvocationFailures: jobs that ended failed.", registry=r
        )
        self.expired_requests = Counter(
            "koe_expired_requests", "ExpiredRequests: jobs that waited past their TTL.", registry=r
        )
        self.notification_failures = Counter(
            "koe_notification_failures",
            "NotificationFailures: webhook or SNS deliveries given up.",
            registry=r,
        )
        self.time_in_backlog = Histogram(
            "koe_time_in_backlog_seconds",
            "TimeInBacklog: seconds from submission to the first start.",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.processing_time = Histogram(
            "koe_total_processing_time_seconds",
            "TotalProcessingTime: seconds from claim to result written.",
            buckets=TIME_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "koe_audio_seconds_transcribed", "Seconds of audio transcribed by completed jobs.", registry=r
        )
        self.model_loads = Counter("koe_model_loads", "Times this process loaded the model.", registry=r)
        self._queue: _QueueCollector | None = None

    def watch_queue(self, view: QueueView) -> None:
        """Report the queue-wide gauges from `view` at every scrape."""
        if self._queue is None:
            self._queue = _QueueCollector(view)
            self.registry.register(self._queue)
        else:
            self._queue.view = view

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _QueueCollector(Collector):
    def __init__(self, view: QueueView) -> None:
        self.view = view

    def describe(self) -> list[Metric]:
        return []  # values come from the database: nothing to describe up front

    def collect(self) -> Iterator[Metric]:
        try:
            q = self.view()
        except Exception:  # a scrape must not fail because the database is busy
            logger.exception("cannot read the queue for metrics")
            return
        backlog = q["queued"] + q["running"]
        yield _gauge("koe_approximate_backlog_size", "ApproximateBacklogSize: jobs queued or running.", backlog)
        yield _gauge(
            "koe_approximate_backlog_size_per_instance",
            "ApproximateBacklogSizePerInstance: backlog divided by live workers.",
            backlog / max(1.0, q["workers"]),
        )
        yield _gauge("koe_jobs_queued", "Jobs waiting in the queue.", q["queued"])
        yield _gauge("koe_jobs_running", "Jobs being processed.", q["running"])
        yield _gauge(
            "koe_approximate_age_of_oldest_request_seconds",
            "ApproximateAgeOfOldestRequest: age of the oldest queued job.",
            q["oldest_age_s"],
        )
        yield _gauge(
            "koe_has_backlog_without_capacity",
            "HasBacklogWithoutCapacity: 1 when jobs are queued and no worker slot is alive.",
            1.0 if q["queued"] > 0 and q["capacity"] <= 0 else 0.0,
        )
        yield _gauge("koe_worker_capacity", "Job slots of the live workers.", q["capacity"])
        loaded = q["models_loaded"]
        yield _gauge("koe_model_loaded", "Models loaded by live workers (0: scaled to zero).", loaded)


def _gauge(name: str, documentation: str, value: Any) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
