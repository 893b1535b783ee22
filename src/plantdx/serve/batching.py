"""Micro-batching: concurrent requests share one ONNX Runtime call.

Ray Serve's fixed window (flush at ``max_batch_size`` or ``max_wait``) plus BentoML's cheap protections: a bounded
queue that sheds load with a fast 503, a deadline per request (a request that waited too long is answered 503
rather than computed for a client that gave up), and a cap on batches in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from plantdx.serve.errors import OverloadedError
from plantdx.serve.metrics import Metrics

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future[np.ndarray]
    deadline: float


class _NothingToRun(Exception):
    """Every request of a batch had expired or gone: give the stream back and carry on."""


def _fail(items: list[_Item], exc: BaseException) -> None:
    for item in items:
        if not item.future.done():
            item.future.set_exception(exc)


class MicroBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        queue_size: int,
        timeout_ms: float,
        max_in_flight: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.timeout = timeout_ms / 1000
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._collecting: list[_Item] = []
        self.closed = False
        self._last_run_s = 0.0  # how long the last batch took, from dispatch to its rows

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="plantdx-batcher")

    def idle(self) -> bool:
        """A stream is free and no request is waiting: one arriving now would not be batched with anything. Never
        with one stream: the loop holds it while it waits for work."""
        return not self.closed and self.queue.empty() and not self.in_flight.locked()

    async def submit(self, x: np.ndarray, since: float | None = None) -> np.ndarray:
        """Logits for one preprocessed image, computed together with whatever else is waiting. The deadline counts
        from ``since`` (``time.monotonic()``; default now): the engine passes when the photo started its way, so
        time spent waiting for a decode thread counts too."""
        loop = asyncio.get_running_loop()
        if self.closed:  # a straggler after drain: compute it alone rather than wait on a stopped loop
            return np.asarray((await loop.run_in_executor(self.executor, self.run_batch, x[None]))[0])
        item = _Item(x, loop.create_future(), (time.monotonic() if since is None else since) + self.timeout)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            if self.metrics is not None:
                self.metrics.shed.labels(reason="queue_full").inc()
            raise OverloadedError(
                f"the inference queue is full ({self.queue.maxsize} waiting); retry shortly"
            ) from None
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queue.qsize())
        try:  # a safety net: no code path should leave a future unresolved, but a client must never hang
            return await asyncio.wait_for(asyncio.shield(item.future), self.timeout + 60)
        except TimeoutError:
            raise OverloadedError("inference did not answer in time; retry") from None

    async def _collect(self, batch: list[_Item]) -> None:
        """Called holding a free stream: take the first waiting request and whatever queued behind it.

        The ``max_wait`` window opens only when this was the last free stream: with a stream to spare, waiting
        for company would only add latency (a lone request at low load goes straight through). ``batch`` is the
        loop's own list, filled in place, so a cancellation mid-window still knows whom to answer.
        """
        batch.append(await self.queue.get())
        while len(batch) < self.max_batch_size and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        if len(batch) < self.max_batch_size and self.max_wait > 0 and self.in_flight.locked():
            until = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch_size and (remaining := until - time.monotonic()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break

    def _expire(self, batch: list[_Item]) -> list[_Item]:
        """Answer late items with a fast 503 (their clients have likely given up) and keep the rest. Late means
        past the deadline by the time a batch takes (the last one's duration): started, it would answer late."""
        now = time.monotonic() + self._last_run_s
        live = []
        for item in batch:
            if item.future.done():  # the client went away
                continue
            if now > item.deadline:
                item.future.set_exception(
                    OverloadedError(f"waited more than {self.timeout * 1000:.0f} ms for inference; retry")
                )
                if self.metrics is not None:
                    self.metrics.shed.labels(reason="deadline").inc()
                continue
            live.append(item)
        return live

    async def _loop(self) -> None:
        """Wait for a free inference stream, then batch what is waiting: while every stream is busy, requests
        pile up in the queue and the next free stream takes them together."""
        while True:
            batch: list[_Item] = []
            self._collecting = batch  # drain waits for these too: taken from the queue, not yet running
            await self.in_flight.acquire()
            try:
                await self._collect(batch)
                await self._dispatch(batch)  # hands the stream to _finish, which releases it
                self._collecting = []
            except asyncio.CancelledError:
                self.in_flight.release()
                _fail(batch, OverloadedError("the service is shutting down; retry"))
                raise
            except Exception as exc:  # never let one bad batch stop the loop, never leave a waiter hanging
                self.in_flight.release()
                _fail(batch, exc)

    async def _dispatch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        live = self._expire(batch)
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.queue.qsize())
        if not live:
            raise _NothingToRun
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(live))
        started = time.perf_counter()
        fut = loop.run_in_executor(self.executor, self.run_batch, np.stack([i.x for i in live]))
        wrapped = asyncio.ensure_future(self._finish(fut, live, started))
        self._pending.add(wrapped)
        wrapped.add_done_callback(self._pending.discard)

    async def _finish(self, fut: asyncio.Future[np.ndarray], items: list[_Item], started: float) -> None:
        try:
            logits = await fut
            if len(logits) != len(items):
                raise RuntimeError(f"the model returned {len(logits)} rows for {len(items)} images")
            self._last_run_s = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.inference_seconds.observe(self._last_run_s)
            for item, row in zip(items, logits, strict=True):
                if not item.future.done():
                    item.future.set_result(row)
        except Exception as exc:  # fan the failure out: every waiter gets it, none hangs
            _fail(items, exc)
        finally:
            self.in_flight.release()

    async def drain(self, timeout: float) -> None:
        """Let queued and running batches finish (graceful shutdown), then stop the loop."""
        deadline = time.monotonic() + timeout
        while (not self.queue.empty() or self._pending or self._collecting) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        leftover = []
        while not self.queue.empty():
            leftover.append(self.queue.get_nowait())
        _fail(leftover, OverloadedError("the model was replaced or the service is stopping; retry"))
