"""The model being served, its inference streams and batcher, and the atomic swap that reload uses."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from plantdx.config import Settings
from plantdx.inference import Predictor, default_bundle_path, resolve_model
from plantdx.serve.batching import MicroBatcher
from plantdx.serve.diagnosis import Answer, diagnose
from plantdx.serve.errors import NotReadyError, OverloadedError, ServiceError
from plantdx.serve.metrics import Metrics
from plantdx.serve.monitoring import Monitoring
from plantdx.serve.uploads import UploadLimits

T = TypeVar("T")

log = logging.getLogger("plantdx.serve")


class ModelUnavailableError(ServiceError):
    status_code = 503
    code = "model_unavailable"
    headers = {"Retry-After": "10"}


@dataclass(frozen=True)
class ModelSource:
    predictor: Predictor
    name: str
    version: str
    alias: str | None
    source: str
    degraded: str | None = None  # why this is not the configured model (e.g. the registry was unreachable)


def redact(uri: str) -> str:
    """``scheme://user:password@host/...`` -> ``scheme://***@host/...``: reasons are shown on open endpoints."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


def load_model(settings: Settings, *, allow_fallback: bool = True) -> ModelSource:
    """Resolve ``serve.model`` (``resolve_model``: a bundle folder, ``models:/<name>@<alias>``, or the bundled model).

    At start-up, when the registry cannot be reached and ``fallback_to_default`` is on, the bundled model is
    served and the reason is kept, so ``/health`` says so instead of the service refusing to start. A reload
    passes ``allow_fallback=False``: it keeps the current model rather than downgrade to the bundled one.
    """
    cfg = settings.serve
    spec = cfg.model

    def predictor_of(bundle: Any) -> Predictor:
        return Predictor(bundle, threads=cfg.threads, top_k=cfg.top_k, int8=cfg.int8)

    if spec is not None and spec.startswith("models:/"):
        from plantdx.registry import ping

        try:
            ping(settings.tracking.uri)  # seconds, not MLflow's minutes of retries, to know the registry is down
            resolved = resolve_model(spec, settings.tracking)
            return ModelSource(
                predictor_of(resolved.bundle), resolved.name, resolved.version, resolved.alias, resolved.source
            )
        except Exception as exc:
            if not (cfg.fallback_to_default and allow_fallback):
                raise ModelUnavailableError(
                    f"cannot load {spec} from {redact(settings.tracking.uri)} ({type(exc).__name__})"
                ) from exc
            reason = (
                f"could not resolve {spec} from {redact(settings.tracking.uri)} ({type(exc).__name__}); "
                "serving the bundled model"
            )
            log.warning(reason)
            predictor = predictor_of(default_bundle_path())
            return ModelSource(predictor, "plantdx", predictor.bundle.version, None, "bundled", degraded=reason)
    try:
        resolved = resolve_model(spec, settings.tracking)
        predictor = predictor_of(resolved.bundle)
    except Exception as exc:
        raise ModelUnavailableError(f"cannot load the bundle {spec or default_bundle_path()}: {exc}") from exc
    return ModelSource(predictor, resolved.name, resolved.version, None, resolved.source)


@dataclass
class ModelRuntime:
    """One model with its own batcher: a request keeps the runtime it started on, so a swap never mixes inputs
    preprocessed for one model into another's batch. It is the service's ``Runner`` of the diagnosis path."""

    model: ModelSource
    decode_pool: ThreadPoolExecutor
    infer_pool: ThreadPoolExecutor
    queue_size: int
    timeout_s: float
    batcher: MicroBatcher | None = None
    loaded_at: float = field(default_factory=time.time)
    metrics: Metrics | None = None
    active: int = 0  # requests that started on this runtime and have not finished
    waiting: int = 0  # without batching: requests waiting for or in an inference stream

    @property
    def predictor(self) -> Predictor:
        return self.model.predictor

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn, *args)

    async def infer(self, prepare: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The photo decoded and inferred in one hop to an inference stream, as the in-process ceiling does: always
        without batching, and with it while a stream is free and nobody waits (a lone request pays no hop to the
        decode pool and the batcher). Under load, decoded in the decode pool and batched with the others."""
        forward = self._timed(self.predictor.forward)

        def whole() -> tuple[np.ndarray, np.ndarray]:
            x = prepare()
            return x, np.asarray(forward(x[None])[0])

        batcher = self.batcher
        if batcher is None:
            return await self._in_stream(whole)
        if batcher.idle():
            async with batcher.in_flight:  # free: taken at once, so the batcher counts this stream as busy
                if self.metrics is not None:
                    self.metrics.batch_size.observe(1)
                return await asyncio.get_running_loop().run_in_executor(self.infer_pool, whole)
        since = time.monotonic()
        x = await self.decode(prepare)
        return x, await batcher.submit(x, since)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """An inference outside the batcher (a heat map) under the batcher's rules: the same queue bound (a fast
        503), the same deadline (no late answers) and the same inference and queue metrics."""
        timed = self._timed(fn)
        return await self._in_stream(lambda: timed(*args))

    def _timed(self, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any) -> T:
            started = time.monotonic()
            try:
                return fn(*args)
            finally:
                if self.metrics is not None:
                    self.metrics.inference_seconds.observe(time.monotonic() - started)

        return timed

    async def _in_stream(self, fn: Callable[[], T]) -> T:
        """``fn`` on an inference stream, bounded by the queue size and the request deadline."""
        queue_size, timeout_s = self.queue_size, self.timeout_s
        if self.waiting >= queue_size:
            if self.metrics is not None:
                self.metrics.shed.labels(reason="queue_full").inc()
            raise OverloadedError(f"{self.waiting} requests are waiting for inference; retry shortly")
        submitted = time.monotonic()

        def guarded() -> T:
            if time.monotonic() - submitted > timeout_s:  # the client has likely given up: do not spend a stream
                if self.metrics is not None:
                    self.metrics.shed.labels(reason="deadline").inc()
                raise OverloadedError(f"waited more than {timeout_s * 1000:.0f} ms for inference; retry")
            return fn()

        self.waiting += 1
        self._publish_depth()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.infer_pool, guarded)
        finally:
            self.waiting -= 1
            self._publish_depth()

    def _publish_depth(self) -> None:
        if self.metrics is not None and self.batcher is None:
            self.metrics.queue_depth.set(self.waiting)


class Engine:
    """Owns the thread pools, the current runtime, and readiness."""

    def __init__(self, settings: Settings, metrics: Metrics, monitoring: Monitoring | None = None) -> None:
        self.settings = settings
        self.monitoring = monitoring
        self.cfg = settings.serve
        self.limits = UploadLimits.of(self.cfg)
        self.metrics = metrics
        self.decode_pool = ThreadPoolExecutor(self.cfg.decode_workers, thread_name_prefix="plantdx-decode")
        self.infer_pool = ThreadPoolExecutor(self.cfg.streams, thread_name_prefix="plantdx-infer")
        self.runtime: ModelRuntime | None = None
        self.ready = False
        self.draining = False
        self._swap_lock = asyncio.Lock()

    def _runtime(self, model: ModelSource) -> ModelRuntime:
        batcher = None
        if self.cfg.batching:
            batcher = MicroBatcher(
                model.predictor.forward,
                self.infer_pool,
                max_batch_size=self.cfg.max_batch_size,
                max_wait_ms=self.cfg.max_wait_ms,
                queue_size=self.cfg.queue_size,
                timeout_ms=self.cfg.request_timeout_ms,
                max_in_flight=self.cfg.streams,
                metrics=self.metrics,
            )
            batcher.start()
        return ModelRuntime(
            model,
            self.decode_pool,
            self.infer_pool,
            self.cfg.queue_size,
            self.cfg.request_timeout_ms / 1000,
            batcher,
            metrics=self.metrics,
        )

    async def _warm_up(self, runtime: ModelRuntime) -> None:
        """One batch through every stream before taking traffic: the first ONNX Runtime call is slow."""
        size = runtime.predictor.input_size
        x = np.zeros((max(1, self.cfg.max_batch_size), 3, size, size), dtype=np.float32)
        loop = asyncio.get_running_loop()
        predictor = runtime.predictor
        outs = await asyncio.gather(
            *(loop.run_in_executor(self.infer_pool, predictor.forward, x) for _ in range(self.cfg.streams))
        )
        predictor.answer(outs[0], x)  # the whole answer path, not just the graph
        if predictor.can_explain:
            await loop.run_in_executor(self.infer_pool, predictor.session.run, None, {predictor.input_name: x[:1]})

    def _publish(self, model: ModelSource) -> None:
        card = model.predictor.bundle.card
        self.metrics.set_model(
            model.version, str(card.get("architecture")), model.predictor.labels, model.predictor.runtime
        )

    async def start(self, model: ModelSource) -> None:
        runtime = self._runtime(model)
        await self._warm_up(runtime)
        self.runtime = runtime
        self._publish(model)
        self.ready = True
        self.metrics.ready.set(1)
        self.metrics.queue_capacity.set(self.cfg.queue_size)

    async def reload(self) -> tuple[ModelSource, ModelSource]:
        """Resolve the configured model again (no fallback) and swap it in; on failure the current model stays."""
        async with self._swap_lock:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(None, lambda: load_model(self.settings, allow_fallback=False))
            return await self._swap(model)

    async def _swap(self, model: ModelSource) -> tuple[ModelSource, ModelSource]:
        """Warm the new model, point new requests at it, then let the old one finish what it holds."""
        new = self._runtime(model)
        try:
            await self._warm_up(new)
        except Exception as exc:
            if new.batcher is not None:
                await new.batcher.drain(0)
            raise ModelUnavailableError(
                f"the new model failed its warm-up ({type(exc).__name__}); the current one stays"
            ) from exc
        old, self.runtime = self.runtime, new
        self._publish(model)
        assert old is not None
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while old.active and time.monotonic() < deadline:  # requests still decoding for the old model
            await asyncio.sleep(0.005)
        if old.batcher is not None:
            await old.batcher.drain(max(0.0, deadline - time.monotonic()))
        return old.model, model

    def current(self) -> ModelRuntime:
        if self.runtime is None or not self.ready:
            raise NotReadyError("the model is not loaded yet")
        return self.runtime

    async def diagnose(
        self, data: bytes, content_type: str | None, *, top_k: int | None, explain: bool, request_id: str
    ) -> Answer:
        """Untrusted bytes -> an answer on the current model: decode and infer off the event loop."""
        runtime = self.current()
        runtime.active += 1
        try:
            return await diagnose(
                data,
                content_type,
                predictor=runtime.predictor,
                version=runtime.model.version,
                runner=runtime,
                limits=self.limits,
                request_id=request_id,
                top_k=top_k,
                explain=explain,
                metrics=self.metrics,
                record=self.monitoring.record if self.monitoring is not None else None,
            )
        finally:
            runtime.active -= 1

    async def stop(self) -> None:
        self.ready = False
        self.draining = True
        self.metrics.ready.set(0)
        if self.runtime is not None and self.runtime.batcher is not None:
            await self.runtime.batcher.drain(self.cfg.drain_timeout_s)
        self.decode_pool.shutdown(wait=True)
        self.infer_pool.shutdown(wait=True)
