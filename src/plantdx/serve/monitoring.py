"""The service's side of monitoring: log every prediction off the request path, take feedback, and publish the drift
verdicts that ``plantdx monitor`` writes beside it (the service runs no drift check itself: Evidently is not even
installed with it)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from plantdx.config import Settings
from plantdx.serve.metrics import Metrics
from plantdx.serve.prediction_log import DriftVerdict, LabelResult, LogWriter, PredictionLog, Recording

log = logging.getLogger("plantdx.monitor")


@dataclass
class DriftState:
    """The latest verdict of the served model, as last read from the prediction log."""

    verdict: DriftVerdict | None = None
    read_at: float | None = None


class Monitoring:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.cfg = settings.monitor
        self.metrics = metrics
        assert self.cfg.log_url is not None
        self.store = PredictionLog(self.cfg.log_url, image_store_bytes=int(self.cfg.image_store_mb * 2**20))
        self.writer = LogWriter(
            self.store,
            max_queued=self.cfg.log_queue_size,
            max_bytes=int(self.cfg.log_queue_mb * 2**20),
            on_drop=metrics.log_dropped.inc,
            on_depth=metrics.log_queue.set,
        )
        self.record = Recording(self.cfg, self.writer)  # the diagnosis path's Recorder
        self.drift = DriftState()
        self._task: asyncio.Task[None] | None = None
        self._read_lock = asyncio.Lock()

    # -- feedback --------------------------------------------------------------------------------------------------

    async def label(self, request_id: str, label: str) -> LabelResult | None:
        loop = asyncio.get_running_loop()

        def attach() -> LabelResult | None:
            result = self.store.attach_label(request_id, label)
            if result is None and self.writer.flush(timeout=2.0):  # its prediction may still be in the queue
                result = self.store.attach_label(request_id, label)
            return result

        result = await loop.run_in_executor(None, attach)
        if result is not None:
            self.metrics.feedback.labels(outcome="correct" if result.label == result.predicted else "wrong").inc()
            await loop.run_in_executor(None, self.update_live_accuracy)
        return result

    def update_live_accuracy(self) -> tuple[float | None, int]:
        accuracy, n = self.store.live_accuracy(self.cfg.feedback_window)
        self.metrics.live_labelled.set(n)
        if accuracy is not None:
            self.metrics.live_accuracy.set(accuracy)
        return accuracy, n

    # -- drift verdicts --------------------------------------------------------------------------------------------

    async def read_verdict(self, version: str) -> DriftState:
        """The newest verdict of model ``version`` from the prediction log (a query in a thread), on the gauges."""
        async with self._read_lock:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(None, self.store.latest_verdict, version)
            self._publish(verdict)
            self.drift = DriftState(verdict, time.time())
            return self.drift

    def _publish(self, verdict: DriftVerdict | None) -> None:
        """The gauges show the served model's verdict. Without one (never checked, too few of its predictions, e.g.
        just after a reload) they must not keep the last model's, or its drift alert would go on firing for a model
        that has not been judged."""
        summary = verdict.summary if verdict is not None else None
        self.metrics.drift_score.clear()
        if summary is None:
            self.metrics.drift_detected.set(0)
            self.metrics.drift_share.set(math.nan)
            self.metrics.drift_window.set(0)
        else:
            self.metrics.drift_detected.set(int(bool(summary["drift_detected"])))
            self.metrics.drift_share.set(summary["drift_share"])
            self.metrics.drift_window.set(summary["window"]["size"])
            for column, score in summary["columns"].items():
                self.metrics.drift_score.labels(feature=column).set(score["p_value"])
        if verdict is not None:  # checks are running: the stale-check alert must not fire
            self.metrics.drift_checked.set(verdict.checked_at.timestamp())

    def start(self, served: Callable[[], str]) -> None:
        """Read the served model's verdict every ``monitor.verdict_poll_s``; ``served`` gives its version each time,
        so a reloaded model shows its own."""
        if self.cfg.verdict_poll_s <= 0:
            return

        async def loop() -> None:
            while True:
                try:
                    await self.read_verdict(served())
                    await asyncio.get_running_loop().run_in_executor(None, self.update_live_accuracy)
                except Exception:  # a failed read must not end the loop
                    log.exception("reading the drift verdict failed")
                await asyncio.sleep(self.cfg.verdict_poll_s)

        self._task = asyncio.create_task(loop(), name="plantdx-drift-verdict")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.writer.close)
        self.store.close()
