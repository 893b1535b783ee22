"""FastAPI dependencies as ``Annotated`` aliases, so a handler reads like a sentence.

Each is ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop per dependency
per request for what is an attribute read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from plantdx.config import Settings
from plantdx.serve.engine import Engine
from plantdx.serve.jobs import JobBackend
from plantdx.serve.metrics import Metrics


async def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def _jobs(request: Request) -> JobBackend:
    jobs: JobBackend = request.app.state.jobs
    return jobs


async def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


EngineDep = Annotated[Engine, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
JobsDep = Annotated[JobBackend, Depends(_jobs)]
RequestIdDep = Annotated[str, Depends(request_id)]
