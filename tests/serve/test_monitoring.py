"""Monitoring in the service: every prediction logged off the request path, feedback, drift checks, gauges, alerts."""

from __future__ import annotations

import io
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import jpeg, serve_settings
from plantdx.export import ExportResult
from plantdx.serve import create_app
from plantdx.serve.monitoring import Monitoring

pytestmark = pytest.mark.slow


def _predict(client: TestClient, image: bytes, client_id: str) -> dict[str, Any]:
    r = client.post(
        "/v1/predict", files={"file": ("leaf.jpg", image, "image/jpeg")}, headers={"X-Request-ID": client_id}
    )
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == client_id != r.json()["request_id"]  # the log key is the service's own
    return dict(r.json())


def _grey(seed: int) -> bytes:
    """Flat grey noise: nothing like the tiny dataset's coloured leaves."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 60, (48, 48, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def monitored(exported: ExportResult, clean_env: None) -> Iterator[TestClient]:  # noqa: ARG001
    settings = serve_settings(
        exported.bundle, "monitor.min_window=10", "monitor.window=40", "monitor.check_interval_s=0"
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_every_prediction_is_logged_with_its_features(monitored: TestClient) -> None:
    body = _predict(monitored, jpeg(seed=3), "req-log-1")
    monitoring: Monitoring = monitored.app.state.monitoring  # type: ignore[attr-defined]
    assert monitoring.writer.flush(5)
    (row,) = monitoring.store.window(last=1)
    assert row["request_id"] == body["request_id"] and row["predicted"] == body["prediction"]
    assert row["confidence"] == pytest.approx(body["confidence"]) and row["abstained"] == body["abstained"]
    assert row["model_version"] == body["model_version"]
    assert 0 < row["brightness"] < 1 and row["sharpness"] > 0 and row["emb_0"] is not None
    assert monitoring.store.image_bytes() == len(jpeg(seed=3))  # the photo is held for feedback


def test_feedback_labels_replaces_and_refuses(monitored: TestClient) -> None:
    body = _predict(monitored, jpeg(seed=4), "req-fb-1")
    rid = body["request_id"]
    other = next(c for c in body["probabilities"] if c != body["prediction"])
    r = monitored.post("/v1/feedback", json={"request_id": rid, "label": body["prediction"]})
    assert r.status_code == 200, r.text
    assert r.json() | {} == {
        "request_id": rid, "label": body["prediction"], "predicted": body["prediction"], "correct": True,
        "replaced": False, "previous_label": None, "image_kept": True,
    }  # fmt: skip
    assert _metric(monitored, "plantdx_live_accuracy") == 1.0
    r = monitored.post("/v1/feedback", json={"request_id": rid, "label": other})
    assert r.status_code == 200 and r.json()["replaced"] is True and r.json()["previous_label"] == body["prediction"]
    assert r.json()["correct"] is False and _metric(monitored, "plantdx_live_accuracy") == 0.0
    assert _metric(monitored, "plantdx_live_labelled") == 1.0  # replaced, not added

    unknown = monitored.post("/v1/feedback", json={"request_id": "req-fb-1", "label": other})  # the client's id
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    bad = monitored.post("/v1/feedback", json={"request_id": rid, "label": "Banana___Moonburn"})
    assert bad.status_code == 422 and "unknown label" in bad.json()["error"]["message"]
    empty = monitored.post("/v1/feedback", json={"request_id": "", "label": other})
    assert empty.status_code == 422


def test_a_client_reusing_its_request_id_labels_the_photo_it_means(monitored: TestClient) -> None:
    """Two photos sent under one X-Request-ID: each answer's request_id names its own photo, so feedback on the
    second cannot land on the first (and put that photo into the retraining set under the wrong label)."""
    first = _predict(monitored, jpeg(seed=5), "same-id")
    second = _predict(monitored, jpeg(seed=6), "same-id")
    assert first["request_id"] != second["request_id"]
    monitoring: Monitoring = monitored.app.state.monitoring  # type: ignore[attr-defined]
    assert monitoring.writer.flush(5)
    logged = {r["request_id"] for r in monitoring.store.window(last=5)}
    assert {first["request_id"], second["request_id"]} <= logged  # both photos logged, neither refused
    label = next(c for c in second["probabilities"] if c != second["prediction"])
    r = monitored.post("/v1/feedback", json={"request_id": second["request_id"], "label": label})
    assert r.status_code == 200 and r.json()["predicted"] == second["prediction"] and r.json()["correct"] is False


def test_drift_check_report_and_gauges(monitored: TestClient) -> None:
    first = monitored.get("/v1/drift").json()
    assert first["status"] == "insufficient_data" and "at least 10" in first["message"]
    assert monitored.get("/v1/drift/report").status_code == 404
    for i in range(12):
        _predict(monitored, _grey(i), f"req-grey-{i}")
    r = monitored.get("/v1/drift?refresh=true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "drift" and body["summary"]["drift_detected"] is True  # grey noise vs coloured leaves
    summary = body["summary"]
    assert summary["window"]["size"] == 12 and "brightness" in summary["drifted_columns"]
    assert set(summary["columns"]) >= {"brightness", "sharpness", "confidence", "predicted", "emb_0"}
    report = monitored.get(body["report_url"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "Value Drift for column brightness" in report.text and "Drifted Columns" in report.text
    assert _metric(monitored, "plantdx_drift_detected") == 1.0
    assert _metric(monitored, "plantdx_drift_share") == pytest.approx(summary["drift_share"])
    assert _metric(monitored, 'plantdx_drift_feature_score{feature="brightness"}') < 0.05
    assert _metric(monitored, "plantdx_drift_window_size") == 12.0
    again = monitored.get("/v1/drift?refresh=true").json()  # at once: the last check stands (a check costs CPU)
    assert again["checked_at"] == body["checked_at"]

    # A reloaded model with no rows of its own yet: no verdict, so the last model's must not stay on the gauges
    # (its drift alert would keep firing), and the check still counts as run (the stale-check alert stays quiet).
    monitoring: Monitoring = monitored.app.state.monitoring  # type: ignore[attr-defined]
    engine = monitored.app.state.engine  # type: ignore[attr-defined]
    checked = _metric(monitored, "plantdx_drift_last_check_timestamp_seconds")
    time.sleep(0.01)
    state = monitoring._check(engine.current().predictor.bundle.reference, "bundle-reloaded")  # the periodic check
    assert state.summary is None and "0 logged predictions of model bundle-reloaded" in (state.error or "")
    assert _metric(monitored, "plantdx_drift_detected") == 0.0
    assert math.isnan(_metric(monitored, "plantdx_drift_share"))
    assert "plantdx_drift_feature_score{" not in monitored.get("/metrics").text
    assert _metric(monitored, "plantdx_drift_last_check_timestamp_seconds") > checked


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_periodic_check_calls_the_alert_hook_and_logs_a_warning(exported: ExportResult, clean_env: None) -> None:  # noqa: ARG001
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received.clear()
    settings = serve_settings(
        exported.bundle,
        "monitor.min_window=10",
        "monitor.check_interval_s=0.3",
        f"monitor.alert_webhook=http://127.0.0.1:{hook.server_port}/alerts",
    )
    records = _Records()  # the service's JSON log handler does not propagate to pytest's caplog
    logging.getLogger("plantdx.monitor").addHandler(records)
    try:
        with TestClient(create_app(settings)) as client:
            for i in range(12):
                _predict(client, _grey(100 + i), f"req-alert-{i}")
            deadline = time.monotonic() + 20
            while not _Hook.received and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _metric(client, "plantdx_drift_last_check_timestamp_seconds") > 0
    finally:
        hook.shutdown()
        logging.getLogger("plantdx.monitor").removeHandler(records)
    assert _Hook.received, "the alert hook was not called"
    payload = _Hook.received[0]
    assert payload["event"] == "plantdx.drift_detected" and payload["drift_detected"] is True
    # A check may land while the last predictions are still being made (it runs every 0.3 s): 10 rows suffice.
    assert 10 <= payload["window"]["size"] <= 12 and payload["drifted_columns"]
    assert any(r.getMessage() == "drift detected" and r.levelno == logging.WARNING for r in records.records), [
        r.getMessage() for r in records.records
    ]


def test_monitoring_off_means_503_for_feedback(exported: ExportResult, clean_env: None) -> None:  # noqa: ARG001
    with TestClient(create_app(serve_settings(exported.bundle, "monitor.log_url=null"))) as client:
        _predict(client, jpeg(), "req-off")
        r = client.post("/v1/feedback", json={"request_id": "req-off", "label": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "monitoring_off"
        assert client.get("/v1/drift").status_code == 503
