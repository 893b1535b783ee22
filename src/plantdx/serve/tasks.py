"""Async jobs on Redis with Celery: the API enqueues, ``plantdx worker`` processes hold the model and run them.

Late acknowledgement (``task_acks_late``) with ``task_reject_on_worker_lost``: a job is removed from the queue only
after a worker finished it, so a worker killed mid-job loses nothing; Redis hands the job to another worker once
``serve.job_visibility_timeout_s`` has passed.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from typing import Any

from celery import Celery

from plantdx.config import Settings
from plantdx.serve.errors import ServiceError
from plantdx.serve.jobs import Job

TASK = "plantdx.diagnose"
_KEY = "plantdx:job:{}"
_FINISHED = b"finished"
_worker_state: dict[str, Any] = {}


_RNG = random.Random()


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


def _predictor() -> Any:
    """The worker's model, loaded once per worker process (the settings come from ``plantdx worker``)."""
    if "predictor" not in _worker_state:
        from plantdx.serve.engine import load_model

        _worker_state["predictor"] = load_model(_worker_state["settings"])
    return _worker_state["predictor"]


def _diagnose_task(
    task: Any, image_b64: str, content_type: str | None, top_k: int | None, explain: bool = False
) -> dict[str, Any]:
    from plantdx.serve.schemas import Prediction
    from plantdx.serve.uploads import decode_upload

    settings: Settings = _worker_state["settings"]
    cfg = settings.serve
    if cfg.fault_job_delay_s:
        time.sleep(cfg.fault_job_delay_s)
    model = _predictor()
    started = time.perf_counter()
    try:
        image = decode_upload(
            base64.b64decode(image_b64),
            content_type,
            max_bytes=cfg.max_upload_bytes,
            max_pixels=cfg.max_pixels,
            max_decoded_pixels=cfg.max_decoded_pixels,
            min_side=model.predictor.resize,
        )
    except ServiceError as exc:
        return {"status": "failed", "error": {"code": exc.code, "message": str(exc)}}
    predictor = model.predictor
    x = predictor.preprocess(image)
    heatmap = None
    if explain and predictor.can_explain:
        prediction, heatmap = predictor.explain(image, top_k)
    else:
        logits, embedding = predictor.split(predictor.forward(x[None]))
        prediction = predictor.postprocess(logits, top_k, embedding, x[None])[0]
    elapsed_ms = (time.perf_counter() - started) * 1000
    result = Prediction.build(
        prediction,
        elapsed_ms=elapsed_ms,
        version=model.version,
        request_id=task.request.id,
        heatmap=base64.b64encode(heatmap).decode() if heatmap is not None else None,
    )
    _log_prediction(settings, task.request.id, model.version, prediction, x, predictor, image_b64, content_type)
    return {"status": "done", "result": result.model_dump()}


def _log_prediction(
    settings: Settings,
    request_id: str,
    version: str,
    prediction: Any,
    x: Any,
    predictor: Any,
    image_b64: str,
    content_type: str | None,
) -> None:
    """Jobs done by workers go to the same prediction log as the API's (point both at one PostgreSQL)."""
    cfg = settings.monitor
    if cfg.log_url is None:
        return
    from plantdx.monitor.log import LogWriter, PredictionLog
    from plantdx.monitor.reference import sampled_record

    if "log" not in _worker_state:  # per worker process: connections and threads do not survive fork()
        store = PredictionLog(cfg.log_url, image_store_bytes=int(cfg.image_store_mb * 2**20))
        _worker_state["log"] = LogWriter(store, max_queued=cfg.log_queue_size, max_bytes=int(cfg.log_queue_mb * 2**20))
    data = base64.b64decode(image_b64)
    record = sampled_record(cfg, _RNG, request_id, version, prediction, x, predictor, data, content_type)
    if record is not None:
        _worker_state["log"].submit(record)


def run_worker(settings: Settings, *, concurrency: int = 1, loglevel: str = "INFO") -> None:
    _worker_state["settings"] = settings
    app = create_celery(settings)
    _predictor()  # load and verify the model before taking jobs
    if concurrency > 1:
        # ONNX Runtime's thread pools do not survive fork(): each prefork child loads its own copy.
        _worker_state.pop("predictor")
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
