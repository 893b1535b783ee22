"""``create_app(settings=None)``: the diagnosis service.

The lifespan loads the model (a bundle, the registry's champion, or the bundled default), warms every inference
stream, and only then reports ready; on shutdown it stops reporting ready, drains queued batches and jobs, and
exits.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

import plantdx
from plantdx.config import Settings, load_settings
from plantdx.serve.edge import create_edge_router
from plantdx.serve.engine import Engine, ModelSource, load_model
from plantdx.serve.errors import install_error_handlers
from plantdx.serve.jobs import JobBackend, LocalJobs
from plantdx.serve.limits import RateLimiter
from plantdx.serve.metrics import Metrics
from plantdx.serve.middleware import RequestContextMiddleware, configure_logging
from plantdx.serve.monitoring import Monitoring
from plantdx.serve.routes.health import create_health_router
from plantdx.serve.routes.model import create_admin_router, create_model_router
from plantdx.serve.routes.monitor import create_monitor_router
from plantdx.serve.routes.predict import create_predict_router, diagnose
from plantdx.serve.static_files import PageFiles

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("plantdx.serve")
# Module scripts and WASM are refused by browsers under another type; a slim image may lack /etc/mime.types.
for _type, _ext in (
    ("text/javascript", ".mjs"),
    ("application/wasm", ".wasm"),
    ("application/manifest+json", ".webmanifest"),
):
    mimetypes.add_type(_type, _ext)


def create_app(settings: Settings | None = None, *, model: ModelSource | None = None) -> FastAPI:
    """Build the app; ``model`` injects an already loaded model (tests), else the lifespan loads one."""
    settings = settings or load_settings()
    cfg = settings.serve
    configure_logging(cfg.log_level)
    metrics = Metrics()
    monitoring = Monitoring(settings, metrics) if settings.monitor.log_url else None
    engine = Engine(settings, metrics, monitoring)

    async def run_job(
        data: bytes, content_type: str | None, top_k: int | None, explain: bool, job_id: str
    ) -> dict[str, object]:
        prediction = await diagnose(engine, data, content_type, job_id, top_k=top_k, explain=explain)
        return prediction.model_dump()

    jobs: JobBackend
    if cfg.redis_url:
        from plantdx.serve.tasks import CeleryJobs

        jobs = CeleryJobs(settings)
    else:
        jobs = LocalJobs(
            run_job,
            workers=cfg.job_workers,
            ttl_s=cfg.job_ttl_s,
            max_queued=cfg.queue_size,
            on_finish=lambda state: metrics.jobs.labels(state=state).inc(),
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loaded = model or load_model(settings)
        await engine.start(loaded)
        await jobs.start()
        if monitoring is not None:
            monitoring.start(lambda: engine.current().model.version)
        log.info(
            "ready",
            extra={
                "fields": {
                    "model": loaded.name,
                    "version": loaded.version,
                    "source": loaded.source,
                    "degraded": loaded.degraded,
                    "batching": cfg.batching,
                    "streams": cfg.streams,
                }
            },
        )
        yield
        log.info("draining")
        engine.draining = True
        await jobs.stop(cfg.drain_timeout_s)
        await engine.stop()
        if monitoring is not None:
            await monitoring.stop()  # after the drain: what the last requests logged is written
        log.info("stopped")

    app = FastAPI(
        title="plantdx",
        version=plantdx.__version__,
        summary="Plant disease diagnosis from a photo of a leaf.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = engine
    app.state.jobs = jobs
    app.state.monitoring = monitoring
    app.state.limiter = RateLimiter(cfg)
    install_error_handlers(app)

    app.include_router(create_predict_router())
    app.include_router(create_model_router())
    if settings.admin_token is not None and settings.admin_token.get_secret_value():  # an empty token is none
        app.include_router(create_admin_router())
    app.include_router(create_monitor_router())
    app.include_router(create_health_router())
    app.include_router(create_edge_router())

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/sw.js", include_in_schema=False)
    def service_worker() -> FileResponse:
        # at the root, so it may control the page at /; never cached, so a new one is found on the next visit
        return FileResponse(STATIC / "sw.js", media_type="text/javascript", headers={"Cache-Control": "no-cache"})

    @app.get("/manifest.webmanifest", include_in_schema=False)
    def manifest() -> FileResponse:
        return FileResponse(STATIC / "manifest.webmanifest", media_type="application/manifest+json")

    app.mount("/static", PageFiles(directory=STATIC), name="static")

    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    max_body = cfg.max_upload_bytes * cfg.max_batch_images * 4 // 3 + 2**20  # base64 inflates by 4/3
    one_image = cfg.max_upload_bytes + 2**16  # one file and its multipart framing: refused as it streams in
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        max_body_bytes=max_body,
        max_in_flight=cfg.max_in_flight,
        body_limits={"/v1/predict": one_image, "/v1/jobs": one_image, "/v1/feedback": 2**16},
    )
    return app
