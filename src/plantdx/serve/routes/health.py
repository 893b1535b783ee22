"""Liveness, readiness, detailed health and the Prometheus scrape."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from plantdx.serve.deps import EngineDep, MetricsDep, SettingsDep
from plantdx.serve.errors import error_body
from plantdx.serve.schemas import Check, Health


def _memory() -> Check:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return Check(ok=True, detail="unknown (no /proc/meminfo)")
    return Check(ok=available > 200 * 2**20, detail=f"{available / 2**30:.1f} GiB available")


def _disk() -> Check:
    usage = shutil.disk_usage(os.getcwd())
    return Check(ok=usage.free > 500 * 2**20, detail=f"{usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.0f}")


def create_health_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    @router.get("/readyz", responses={503: {"description": "not ready (loading, warming up or draining)"}})
    def readyz(engine: EngineDep) -> JSONResponse:
        """Readiness: the model is loaded and warmed up, and the service is not draining."""
        if engine.ready and not engine.draining:
            return JSONResponse({"status": "ready"})
        reason = "draining" if engine.draining else "loading"
        return JSONResponse(error_body("not_ready", reason), status_code=503, headers={"Retry-After": "2"})

    @router.get("/health", response_model=Health)
    def health(engine: EngineDep, settings: SettingsDep) -> Health:
        """Every check with its detail: model, registry fallback, GPU, disk, memory, Redis."""
        import onnxruntime as ort

        checks: dict[str, Check] = {}
        runtime = engine.runtime
        if runtime is None:
            checks["model"] = Check(ok=False, detail="not loaded")
        else:
            m = runtime.model
            checks["model"] = Check(ok=engine.ready, detail=f"{m.name} v{m.version} from {m.source}")
            checks["model_source"] = Check(ok=m.degraded is None, detail=m.degraded or "the configured model")
        gpu = "CUDAExecutionProvider" in ort.get_available_providers()
        checks["gpu"] = Check(ok=True, detail="CUDA available" if gpu else "no GPU; running on CPU")
        checks["disk"] = _disk()
        checks["memory"] = _memory()
        if settings.serve.redis_url:
            checks["redis"] = _redis(settings.serve.redis_url)
        failing = not checks["model"].ok
        degraded = any(not c.ok for c in checks.values())
        return Health(status="failing" if failing else "degraded" if degraded else "ok", checks=checks)

    @router.get("/metrics", include_in_schema=False)
    def metrics(m: MetricsDep) -> Response:
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def _redis(url: str) -> Check:
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # no retries: a hung Redis would otherwise hold /health for ~11 s (redis-py retries 10 times by default)
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)).ping()
        return Check(ok=True, detail="reachable")
    except Exception as exc:
        return Check(ok=False, detail=f"unreachable: {type(exc).__name__}")
