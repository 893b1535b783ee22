"""Async jobs: accept now (202), diagnose in the background, answer ``GET /v1/jobs/{id}`` until the TTL ends.

Embedded default: an in-process queue and store. The job's work is the same ``Engine.diagnose`` as a predict.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from plantdx.serve.errors import OverloadedError, ServiceError

Work = Callable[[bytes, str | None, int | None, bool, str], Awaitable[dict[str, Any]]]  # ..., explain, job id
OVERLOAD_PATIENCE_S = 60.0


@dataclass
class Job:
    job_id: str
    status: str = "queued"
    result: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job_id": self.job_id, "status": self.status}
        if self.result is not None:
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


class JobBackend(Protocol):
    async def submit(self, data: bytes, content_type: str | None, top_k: int | None, explain: bool = False) -> Job: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...


class LocalJobs:
    """In-process workers and an in-memory store: nothing to install, nothing shared between replicas."""

    def __init__(self, work: Work, *, workers: int, ttl_s: float, max_queued: int, on_finish: Any = None) -> None:
        self.work = work
        self.ttl = ttl_s
        self.jobs: dict[str, Job] = {}
        self.queue: asyncio.Queue[tuple[Job, bytes, str | None, int | None, bool]] = asyncio.Queue(maxsize=max_queued)
        self.n_workers = workers
        self.tasks: list[asyncio.Task[None]] = []
        self.on_finish = on_finish

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(), name=f"plantdx-job-{i}") for i in range(self.n_workers)]

    async def submit(self, data: bytes, content_type: str | None, top_k: int | None, explain: bool = False) -> Job:
        self._expire()
        job = Job(uuid.uuid4().hex)
        try:
            self.queue.put_nowait((job, data, content_type, top_k, explain))
        except asyncio.QueueFull:
            raise OverloadedError(f"{self.queue.maxsize} jobs are already waiting; retry later") from None
        self.jobs[job.job_id] = job
        return job

    async def get(self, job_id: str) -> Job | None:
        self._expire()
        return self.jobs.get(job_id)

    def _expire(self) -> None:
        now = time.time()
        for job_id in [j.job_id for j in self.jobs.values() if j.finished and now - j.finished > self.ttl]:
            del self.jobs[job_id]

    async def _worker(self) -> None:
        while True:
            job, data, content_type, top_k, explain = await self.queue.get()
            job.status = "running"
            try:
                job.result = await self._work_patiently(data, content_type, top_k, explain, job.job_id)
                job.status = "done"
            except ServiceError as exc:
                job.error = {"code": exc.code, "message": str(exc)}
                job.status = "failed"
            except Exception as exc:  # a job failure is the job's answer, never the worker's death
                job.error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
                job.status = "failed"
            job.finished = time.time()
            if self.on_finish is not None:
                self.on_finish(job.status)
            self.queue.task_done()

    async def _work_patiently(
        self, data: bytes, content_type: str | None, top_k: int | None, explain: bool, job_id: str
    ) -> dict[str, Any]:
        """A job was accepted with a 202: when the model is merely busy (the shedding a predict answers with 503),
        it waits and tries again, for up to ``OVERLOAD_PATIENCE_S``, instead of failing."""
        deadline = time.monotonic() + OVERLOAD_PATIENCE_S
        delay = 0.05
        while True:
            try:
                return await self.work(data, content_type, top_k, explain, job_id)
            except OverloadedError:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def stop(self, timeout: float) -> None:
        """Finish queued and running jobs within ``timeout`` (graceful shutdown), then stop the workers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), timeout)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
