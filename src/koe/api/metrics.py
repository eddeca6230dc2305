"""`GET /metrics`: Prometheus text, named after SageMaker Async Inference's metrics (see koe.metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from koe.metrics import Metrics

router = APIRouter(tags=["metrics"])


def app_metrics(request: Request) -> Metrics:
    """The app's metrics (made on first use when the app has none yet: each app has its own registry)."""
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is None:
        metrics = request.app.state.metrics = Metrics()
    return metrics


@router.get("/metrics", summary="Prometheus metrics (backlog, age of the oldest request, invocations, ...)")
def metrics(request: Request) -> Response:
    body, content_type = app_metrics(request).render()
    return Response(body, media_type=content_type)
