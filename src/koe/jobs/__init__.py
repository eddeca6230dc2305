"""The local async endpoint's jobs: model, SQLite queue, worker pool, notifications.

LocalEndpoint (endpoint.py) ── JobQueue (queue.py) ── Job / JobStatus (job.py)
                            ├─ WorkerPool (worker.py) ── OnDemandModels (koe.ondemand)
                            └─ Notifier (notify.py)
"""

from koe.jobs.endpoint import LocalEndpoint
from koe.jobs.job import Job, JobRequest, JobStatus
from koe.jobs.notify import Notifier, notification
from koe.jobs.queue import Claim, JobQueue, QueueStats, Reaped, migrate
from koe.jobs.worker import WorkerConfig, WorkerPool

__all__ = [
    "Claim",
    "Job",
    "JobQueue",
    "JobRequest",
    "JobStatus",
    "LocalEndpoint",
    "Notifier",
    "QueueStats",
    "Reaped",
    "WorkerConfig",
    "WorkerPool",
    "migrate",
    "notification",
]
