"""Async jobs on Redis with Celery: the API enqueues, ``plantdx worker`` processes hold the model and run them.

Late acknowledgement (``task_acks_late``) with ``task_reject_on_worker_lost``: a job is removed from the queue only
after a worker finished it, so a worker killed mid-job loses nothing; Redis hands the job to another worker once
``serve.job_visibility_timeout_s`` has passed.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery

from plantdx.config import MonitorConfig, Settings
from plantdx.errors import PlantdxError
from plantdx.serve.diagnosis import Inline, Recorder, diagnose
from plantdx.serve.errors import ServiceError
from plantdx.serve.jobs import Job
from plantdx.serve.metrics import Metrics
from plantdx.serve.uploads import UploadLimits

if TYPE_CHECKING:
    from plantdx.serve.engine import ModelSource

TASK = "plantdx.diagnose"
_KEY = "plantdx:job:{}"
_FINISHED = b"finished"


def create_celery(settings: Settings) -> Celery:
    cfg = settings.serve
    if not cfg.redis_url:
        raise ValueError("serve.redis_url is not set")
    app = Celery("plantdx", broker=cfg.redis_url, backend=cfg.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=cfg.job_ttl_s,
        # Sweep for jobs of dead workers every third of the visibility timeout, scanning on every sweep.
        broker_transport_options={
            "visibility_timeout": cfg.job_visibility_timeout_s,
            "unacked_restore_interval": max(1, cfg.job_visibility_timeout_s // 3),
            "unacked_restore_throttle": 1,
        },
        result_backend_transport_options={"visibility_timeout": cfg.job_visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK, bind=True)(_diagnose_task)
    return app


@dataclass
class WorkerState:
    """What one worker process holds: its model, its limits, its metrics and its prediction-log recorder.

    Loaded once per process (``ONNX Runtime``'s threads, the log's connections and its writer thread do not survive
    ``fork()``, so a prefork child builds its own)."""

    settings: Settings
    model: ModelSource
    limits: UploadLimits
    metrics: Metrics
    record: Recorder | None


_state: dict[str, Any] = {}  # "settings" from ``run_worker``, "worker" built on first use in each process


def _worker() -> WorkerState:
    if "worker" not in _state:
        from plantdx.serve.engine import load_model

        settings: Settings = _state["settings"]
        metrics: Metrics = _state.setdefault("metrics", Metrics())
        model = load_model(settings)
        metrics.set_model(
            model.version,
            str(model.predictor.bundle.card.get("architecture")),
            model.predictor.labels,
            model.predictor.runtime,
        )
        _state["worker"] = WorkerState(
            settings, model, UploadLimits.of(settings.serve), metrics, _recorder(settings.monitor)
        )
    worker: WorkerState = _state["worker"]
    return worker


def _recorder(cfg: MonitorConfig) -> Recorder | None:
    """Jobs done by workers go to the same prediction log as the API's (point both at one PostgreSQL)."""
    if cfg.log_url is None:
        return None
    from plantdx.serve.prediction_log import LogWriter, PredictionLog, Recording

    store = PredictionLog(cfg.log_url, image_store_bytes=int(cfg.image_store_mb * 2**20))
    return Recording(cfg, LogWriter(store, max_queued=cfg.log_queue_size, max_bytes=int(cfg.log_queue_mb * 2**20)))


def _diagnose_task(
    task: Any, image_b64: str, content_type: str | None, top_k: int | None, explain: bool = False
) -> dict[str, Any]:
    """One job, through the service's own diagnosis path (``plantdx.serve.diagnosis.diagnose``), run inline."""
    from plantdx.serve.schemas import Prediction

    worker = _worker()
    predictor = worker.model.predictor
    try:
        answer = asyncio.run(
            diagnose(
                base64.b64decode(image_b64),
                content_type,
                predictor=predictor,
                version=worker.model.version,
                runner=Inline(predictor),
                limits=worker.limits,
                request_id=task.request.id,
                top_k=top_k,
                explain=explain,
                metrics=worker.metrics,
                record=worker.record,
            )
        )
    except ServiceError as exc:
        worker.metrics.jobs.labels(state="failed").inc()
        return {"status": "failed", "error": {"code": exc.code, "message": str(exc)}}
    worker.metrics.jobs.labels(state="done").inc()
    return {"status": "done", "result": Prediction.build(answer, request_id=task.request.id).model_dump()}


def run_worker(
    settings: Settings, *, concurrency: int = 1, loglevel: str = "INFO", metrics_port: int | None = None
) -> None:
    """Take jobs from Redis. With ``metrics_port``, the worker's Prometheus metrics (the same predictions,
    confidence, abstentions and job counts the API exports) are served on it (one process: concurrency 1)."""
    if metrics_port is not None and concurrency > 1:
        raise PlantdxError("--metrics-port needs --concurrency 1 (one process); scale with more worker processes")
    _state["settings"] = settings
    app = create_celery(settings)
    _worker()  # load and verify the model before taking jobs
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=_state["metrics"].registry)
    if concurrency > 1:
        # ONNX Runtime's thread pools do not survive fork(): each prefork child loads its own copy.
        _state.pop("worker")
    app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            "--pool=solo" if concurrency == 1 else "--pool=prefork",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


class CeleryJobs:
    """The API side: enqueue, and read state and results back from Redis."""

    def __init__(self, settings: Settings) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.app = create_celery(settings)
        self.ttl = settings.serve.job_ttl_s
        assert settings.serve.redis_url is not None
        # One retry, not redis-py's ten: a hung Redis gets its 503 in ~6 s rather than ~30 s (docs/reliability.md).
        self.redis = redis.Redis.from_url(
            settings.serve.redis_url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 1)
        )

    async def start(self) -> None:
        return None

    async def stop(self, timeout: float) -> None:  # noqa: ARG002 - queued jobs stay in Redis for the workers
        return None

    def _submit(self, data: bytes, content_type: str | None, top_k: int | None, explain: bool) -> Job:
        job = Job(uuid.uuid4().hex)
        self.redis.set(_KEY.format(job.job_id), b"1", ex=self.ttl)
        self.app.send_task(
            # explain only when asked: a worker of the previous release (three arguments) still runs plain jobs
            TASK,
            args=[base64.b64encode(data).decode(), content_type, top_k, *([True] if explain else [])],
            task_id=job.job_id,
        )
        return job

    def _get(self, job_id: str) -> Job | None:
        key = _KEY.format(job_id)
        marker = self.redis.get(key)
        if marker is None:
            return None
        result = self.app.AsyncResult(job_id)
        state = result.state
        if state in ("SUCCESS", "FAILURE"):
            if marker != _FINISHED:  # results live job_ttl_s after they are first seen, however often polled
                self.redis.set(key, _FINISHED, ex=self.ttl)
        elif marker == _FINISHED:
            return None  # its result has expired: the job is gone, not queued again
        else:
            self.redis.expire(key, self.ttl)  # a backlog longer than the TTL must not lose a job still to run
        job = Job(job_id, status={"PENDING": "queued", "RECEIVED": "queued", "RETRY": "queued"}.get(state, "running"))
        if state == "SUCCESS":
            payload = result.result
            job.status = payload["status"]
            job.result = payload.get("result")
            job.error = payload.get("error")
        elif state == "FAILURE":
            job.status = "failed"
            job.error = {"code": "job_failed", "message": f"{type(result.result).__name__}: {result.result}"}
        return job

    async def submit(self, data: bytes, content_type: str | None, top_k: int | None, explain: bool = False) -> Job:
        try:
            return await asyncio.to_thread(self._submit, data, content_type, top_k, explain)
        except Exception as exc:
            raise JobsUnavailableError(f"the job queue (Redis) is unavailable: {type(exc).__name__}") from None

    async def get(self, job_id: str) -> Job | None:
        try:
            return await asyncio.to_thread(self._get, job_id)
        except Exception as exc:
            raise JobsUnavailableError(f"the job store (Redis) is unavailable: {type(exc).__name__}") from None


class JobsUnavailableError(ServiceError):
    status_code = 503
    code = "jobs_unavailable"
    headers = {"Retry-After": "5"}
