"""Monitoring routes: feedback (the true class of a served prediction) and the latest drift check."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

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
    if state.summary is not None:
        detected = bool(state.summary["drift_detected"])
        return DriftStatus(
            status="drift" if detected else "ok",
            checked_at=state.checked_at,
            report_url="/v1/drift/report",
            summary=state.summary,
        )
    if state.error is not None:
        return DriftStatus(status="insufficient_data", message=state.error, checked_at=state.checked_at)
    return DriftStatus(status="not_checked", message="no drift check has run yet; add ?refresh=true")


REFRESH_COOLDOWN_S = 5.0

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
                description=f"run a check now instead of returning the last one (not within {REFRESH_COOLDOWN_S:.0f}"
                " s of the last complete check: anyone may call this, and a check costs CPU)"
            ),
        ] = False,
    ) -> DriftStatus:
        """The latest drift check of the logged predictions against the model's reference profile."""
        monitoring = _monitoring(request)
        state = monitoring.drift
        if refresh or (state.summary is None and state.error is None):
            served = engine.current()
            state = await monitoring.check(
                served.predictor.bundle.reference, served.model.version, unless_newer_than_s=REFRESH_COOLDOWN_S
            )
        return _status(state)

    @router.get(
        "/drift/report",
        response_class=FileResponse,
        responses={200: {"content": {"text/html": {}}, "description": "the Evidently HTML report"}},
    )
    async def drift_report(request: Request) -> FileResponse:
        """The Evidently HTML report of the latest drift check."""
        state = _monitoring(request).drift
        if state.report is None or not state.report.is_file():
            raise NotFoundError("no drift report yet; GET /v1/drift?refresh=true runs a check")
        return FileResponse(state.report, media_type="text/html")

    return router
