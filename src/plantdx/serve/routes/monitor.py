"""Monitoring routes: feedback (the true class of a served prediction) and the latest drift check."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from plantdx.serve.deps import EngineDep
from plantdx.serve.errors import InvalidRequestError, NotFoundError, ServiceError
from plantdx.serve.monitoring import DriftState, Monitoring
from plantdx.serve.schemas import DriftStatus, ErrorBody, FeedbackRequest, FeedbackResponse


class MonitoringOffError(ServiceError):
    status_code = 503
    code = "monitoring_off"


def _monitoring(request: Request) -> Monitoring:
    monitoring: Monitoring | None = request.app.state.monitoring
    if monitoring is None:
        raise MonitoringOffError("the prediction log is off (monitor.log_url is not set)")
    return monitoring


def _status(state: DriftState) -> DriftStatus:
    verdict = state.verdict
    if verdict is None:
        return DriftStatus(
            status="not_checked",
            message="no drift check of this model yet: `plantdx monitor` runs them beside the service",
        )
    checked_at = verdict.checked_at.timestamp()
    if verdict.summary is None:
        return DriftStatus(status="insufficient_data", message=verdict.error, checked_at=checked_at)
    return DriftStatus(
        status="drift" if verdict.detected else "ok",
        checked_at=checked_at,
        report_url="/v1/drift/report" if verdict.has_report else None,
        summary=verdict.summary,
    )


REFRESH_COOLDOWN_S = 1.0

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a body that cannot be parsed (e.g. not UTF-8)"},
    404: {"model": ErrorBody, "description": "unknown request id, or no report yet"},
    422: {"model": ErrorBody, "description": "unknown label or invalid body"},
    503: {"model": ErrorBody, "description": "monitoring is off or the model is not ready"},
}


def create_monitor_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["monitoring"], responses=ERRORS)

    @router.post("/feedback", response_model=FeedbackResponse)
    async def feedback(body: FeedbackRequest, request: Request, engine: EngineDep) -> FeedbackResponse:
        """Attach the true class to a served prediction: live accuracy, and a labelled photo for retraining."""
        monitoring = _monitoring(request)
        labels = engine.current().predictor.labels
        if body.label not in labels:
            raise InvalidRequestError(f"unknown label {body.label!r}; the model's classes are {', '.join(labels)}")
        result = await monitoring.label(body.request_id, body.label)
        if result is None:
            raise NotFoundError(f"no logged prediction with request_id {body.request_id!r}")
        return FeedbackResponse(
            request_id=result.request_id,
            label=result.label,
            predicted=result.predicted,
            correct=result.label == result.predicted,
            replaced=result.previous is not None,
            previous_label=result.previous,
            image_kept=result.image_kept,
        )

    @router.get("/drift", response_model=DriftStatus)
    async def drift(
        request: Request,
        engine: EngineDep,
        refresh: Annotated[
            bool,
            Query(
                description="read the latest verdict from the prediction log now rather than the one the service "
                f"last read (at most once every {REFRESH_COOLDOWN_S:.0f} s)"
            ),
        ] = False,
    ) -> DriftStatus:
        """The latest drift verdict of the served model, from the checks ``plantdx monitor`` runs beside it."""
        monitoring = _monitoring(request)
        state = monitoring.drift
        stale = state.read_at is None or time.time() - state.read_at > REFRESH_COOLDOWN_S
        if (refresh and stale) or state.read_at is None:
            state = await monitoring.read_verdict(engine.current().model.version)
        return _status(state)

    @router.get(
        "/drift/report",
        # Not response_class=HTMLResponse: that would document the JSON error answers as HTML too.
        responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "the report"}},
    )
    async def drift_report(request: Request, engine: EngineDep) -> HTMLResponse:
        """The Evidently HTML report of the served model's latest drift check."""
        monitoring = _monitoring(request)
        loop = asyncio.get_running_loop()
        html = await loop.run_in_executor(None, monitoring.store.verdict_report, engine.current().model.version)
        if html is None:
            raise NotFoundError("no drift report of the served model yet: `plantdx monitor` writes them")
        return HTMLResponse(html)

    return router
