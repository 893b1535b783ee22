"""The service's side of monitoring: log every prediction off the request path, take feedback, check drift now and
then, publish gauges and call the alert hook."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.config import Settings
from plantdx.inference import Prediction, Predictor
from plantdx.monitor.log import LabelResult, LogWriter, PredictionLog
from plantdx.monitor.reference import sampled_record
from plantdx.serve.metrics import Metrics

log = logging.getLogger("plantdx.monitor")


@dataclass
class DriftState:
    summary: dict[str, Any] | None = None
    report: Path | None = None
    error: str | None = None  # why the last check gave no verdict (too few predictions, ...)
    checked_at: float | None = None


def post_alert(url: str, payload: dict[str, Any], timeout: float = 5.0) -> bool:
    """POST the JSON payload; a failing hook is logged, never raised (the check itself succeeded)."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (an operator-set URL)
            return bool(200 <= response.status < 300)
    except Exception as exc:
        log.warning("drift alert hook failed: %s", type(exc).__name__)
        return False


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
        self.drift = DriftState()
        self._random = random.Random()
        self._task: asyncio.Task[None] | None = None
        self._check_lock = asyncio.Lock()

    # -- the request path: O(1), no I/O ----------------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        model_version: str,
        prediction: Prediction,
        x: np.ndarray,
        predictor: Predictor,
        data: bytes,
        content_type: str | None,
    ) -> None:
        record = sampled_record(
            self.cfg, self._random, request_id, model_version, prediction, x, predictor, data, content_type
        )
        if record is not None:
            self.writer.submit(record)

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

    # -- drift -----------------------------------------------------------------------------------------------------

    async def check(self, reference: dict[str, Any], version: str, *, unless_newer_than_s: float = 0.0) -> DriftState:
        """One drift check of model ``version``'s last logged predictions against its ``reference`` (in a thread:
        Evidently takes ~0.2 s). With ``unless_newer_than_s``, a verdict that recent is returned instead: decided
        under the lock, so a burst of refresh requests runs one check, not one each."""
        async with self._check_lock:
            last = self.drift
            if last.summary is not None and time.time() - (last.checked_at or 0) < unless_newer_than_s:
                return last
            loop = asyncio.get_running_loop()
            self.drift = await loop.run_in_executor(None, self._check, reference, version)
            return self.drift

    def _check(self, reference: dict[str, Any], version: str) -> DriftState:
        from plantdx.monitor.drift import NotEnoughDataError, check_drift, of_version

        self.writer.flush(timeout=2.0)
        # The served model's own rows: after a reload, the old model's would read as drift against this reference.
        rows = of_version(self.store.window(last=self.cfg.window), version)
        state = DriftState(checked_at=time.time())
        self.metrics.drift_window.set(len(rows))
        try:
            result = check_drift(rows, reference, self.cfg, model_version=version)
        except NotEnoughDataError as exc:
            # No verdict (too few of this model's rows, e.g. just after a reload): the gauges must not keep the
            # last model's, or its drift alert would go on firing for a model that has not been judged.
            state.error = str(exc)
            self.metrics.drift_detected.set(0)
            self.metrics.drift_share.set(float("nan"))
            self.metrics.drift_score.clear()
            self.metrics.drift_checked.set(time.time())  # checks are running: the stale-check alert must not fire
            return state
        state.summary = result.summary
        state.report = result.save_html(self.cfg.report_dir / "drift_report.html")
        (self.cfg.report_dir / "drift_summary.json").write_text(json.dumps(result.summary, indent=2) + "\n")
        self.metrics.drift_detected.set(int(result.detected))
        self.metrics.drift_share.set(result.summary["drift_share"])
        for column, score in result.summary["columns"].items():
            self.metrics.drift_score.labels(feature=column).set(score["p_value"])
        self.metrics.drift_checked.set(time.time())
        self.update_live_accuracy()
        if result.detected:
            log.warning(
                "drift detected",
                extra={
                    "fields": {
                        "drift_share": result.summary["drift_share"],
                        "drifted_columns": result.summary["drifted_columns"],
                        "window": result.summary["window"]["size"],
                    }
                },
            )
            if self.cfg.alert_webhook:
                post_alert(self.cfg.alert_webhook, {"event": "plantdx.drift_detected", **result.summary})
        return state

    def start(self, served: Callable[[], tuple[dict[str, Any], str]]) -> None:
        """Periodic checks; ``served`` gives the serving model's reference and version each time, so a reloaded
        model is checked against its own."""
        if self.cfg.check_interval_s <= 0:
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.cfg.check_interval_s)
                try:
                    await self.check(*served())
                except Exception:  # a failed check must not end the loop
                    log.exception("drift check failed")

        self._task = asyncio.create_task(loop(), name="plantdx-drift")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.writer.close)
        self.store.close()
