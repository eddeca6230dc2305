"""`GET /metrics`: Prometheus text, named after SageMaker Async Inference's metrics (see koe.metrics)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from koe.api.state import app_state

router = APIRouter(tags=["metrics"])


@router.get("/metrics", summary="Prometheus metrics (backlog, age of the oldest request, invocations, ...)")
def metrics(request: Request) -> Response:
    body, content_type = app_state(request).metrics.render()
    return Response(body, media_type=content_type)
