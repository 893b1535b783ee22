"""The model being served, the advice table the page shows, and the admin reload."""

from __future__ import annotations

import hmac
import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException

from plantdx.serve.deps import EngineDep, SettingsDep
from plantdx.serve.edge import edge_model
from plantdx.serve.schemas import ErrorBody, ModelInfo, ReloadResult

ADVICE = Path(__file__).resolve().parents[1] / "advice.json"


@cache
def load_advice() -> dict[str, Any]:
    advice: dict[str, Any] = json.loads(ADVICE.read_text())
    return advice


def create_model_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["model"])

    @router.get(
        "/model",
        response_model=ModelInfo,
        responses={503: {"model": ErrorBody, "description": "the model is not loaded yet"}},
    )
    def model_info(engine: EngineDep) -> ModelInfo:
        """Name, version, alias, architecture, classes, metrics and runtime of the model being served."""
        runtime = engine.current()
        model, described = runtime.model, runtime.predictor.describe()
        edge = edge_model(runtime.predictor.bundle)
        reject = runtime.predictor.bundle.calibration.get("reject_label")
        return ModelInfo(
            name=model.name,
            version=model.version,
            alias=model.alias,
            source=model.source,
            architecture=described["architecture"],
            classes=described["classes"],
            metrics=described["metrics"],
            runtime=described["runtime"],
            input_size=described["input_size"],
            preprocess=described["preprocess"],
            temperature=described["temperature"],
            abstain_threshold=described["abstain_threshold"],
            loaded_at=runtime.loaded_at,
            degraded=model.degraded,
            reject_label=reject if reject in described["classes"] else None,
            edge=edge.info() if edge is not None else None,
        )

    @router.get("/advice")
    def advice() -> dict[str, Any]:
        """What each condition is and what a grower can do about it, with public sources."""
        return load_advice()

    return router


def create_admin_router() -> APIRouter:
    """Only mounted when an admin token is configured: without one, the routes do not exist."""

    async def check_token(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
        token = settings.admin_token
        assert token is not None
        if not authorization:
            raise HTTPException(
                401, "admin routes need 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
            )
        scheme, _, given = authorization.partition(" ")
        secret = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not secret or not hmac.compare_digest(given.encode(), secret):
            raise HTTPException(403, "the admin token is not valid")

    router = APIRouter(
        prefix="/v1/admin",
        tags=["admin"],
        dependencies=[Depends(check_token)],
        responses={
            401: {"model": ErrorBody, "description": "no bearer token"},
            403: {"model": ErrorBody, "description": "the bearer token is not the admin token"},
            503: {"model": ErrorBody, "description": "the new model failed to load; the current one stays"},
        },
    )

    @router.post("/reload", response_model=ReloadResult)
    async def reload(engine: EngineDep) -> ReloadResult:
        """Re-resolve the configured model (e.g. models:/plantdx@champion) and swap it in with no dropped request."""
        previous, current = await engine.reload()
        return ReloadResult(previous_version=previous.version, version=current.version, source=current.source)

    return router
