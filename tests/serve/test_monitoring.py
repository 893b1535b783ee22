"""Monitoring around the service: every prediction logged off the request path, feedback, and the drift verdicts that
`plantdx monitor` writes beside the service (its gauges, its report, the alert hook)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

from conftest import jpeg, serve_settings
from plantdx.cli import app
from plantdx.config import Settings
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
    settings = serve_settings(exported.bundle, "monitor.min_window=10", "monitor.window=40", "monitor.verdict_poll_s=0")
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


def _monitor(settings: Settings, *args: str) -> Result:
    """``plantdx monitor`` on the service's prediction log and model, as it runs beside the service."""
    sets = [
        f"serve.model={settings.serve.model}",
        f"monitor.log_url={settings.monitor.log_url}",
        f"monitor.report_dir={settings.monitor.report_dir}",
        f"monitor.min_window={settings.monitor.min_window}",
        f"monitor.window={settings.monitor.window}",
    ]
    return CliRunner().invoke(app, ["monitor", *args, *(x for item in sets for x in ("--set", item))])


def test_drift_verdicts_are_served_with_their_report_and_gauges(monitored: TestClient) -> None:
    settings: Settings = monitored.app.state.settings  # type: ignore[attr-defined]
    monitoring: Monitoring = monitored.app.state.monitoring  # type: ignore[attr-defined]
    first = monitored.get("/v1/drift").json()
    assert first["status"] == "not_checked" and "plantdx monitor" in first["message"]
    assert monitored.get("/v1/drift/report").status_code == 404

    too_few = _monitor(settings)  # no predictions yet: no verdict, and it says why
    assert too_few.exit_code == 1 and "a verdict needs at least 10" in str(too_few.exception)
    time.sleep(1.1)  # past the refresh cool-down
    r = monitored.get("/v1/drift?refresh=true").json()
    assert r["status"] == "insufficient_data" and "at least 10" in r["message"]

    for i in range(12):
        _predict(monitored, _grey(i), f"req-grey-{i}")
    assert monitoring.writer.flush(5)
    checked = _monitor(settings)
    assert checked.exit_code == 0, checked.output
    assert "drift DETECTED" in checked.output  # grey noise vs coloured leaves
    time.sleep(1.1)
    body = monitored.get("/v1/drift?refresh=true").json()
    assert body["status"] == "drift" and body["summary"]["drift_detected"] is True
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
    assert _metric(monitored, "plantdx_drift_last_check_timestamp_seconds") == pytest.approx(body["checked_at"])

    # A window of the past is reported, not recorded: the service still serves the latest scheduled check.
    past = _monitor(settings, "--since", "2020-01-01T00:00:00+00:00", "--until", "2020-01-02T00:00:00+00:00")
    assert past.exit_code == 1 and "0 logged predictions" in str(past.exception)
    time.sleep(1.1)
    assert monitored.get("/v1/drift?refresh=true").json()["checked_at"] == body["checked_at"]

    # A reloaded model with no verdict of its own: the last model's must not stay on the gauges (its drift alert
    # would keep firing).
    state = asyncio.run(monitoring.read_verdict("bundle-reloaded"))
    assert state.verdict is None
    assert _metric(monitored, "plantdx_drift_detected") == 0.0
    assert math.isnan(_metric(monitored, "plantdx_drift_share"))
    assert "plantdx_drift_feature_score{" not in monitored.get("/metrics").text


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_watching_monitor_calls_the_alert_hook_and_logs_a_warning(
    exported: ExportResult,
    tmp_path: Path,
    clean_env: None,  # noqa: ARG001
) -> None:
    """`plantdx monitor --watch` as its own process beside the service: it checks again and again, and on drift it
    logs a warning and POSTs the summary to the hook."""
    hook = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    _Hook.received.clear()
    settings = serve_settings(exported.bundle, "monitor.min_window=10")
    with TestClient(create_app(settings)) as client:
        for i in range(12):
            _predict(client, _grey(100 + i), f"req-alert-{i}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    log = tmp_path / "monitor.log"
    sets = [f"serve.model={exported.bundle}", f"monitor.log_url={settings.monitor.log_url}",
            f"monitor.report_dir={tmp_path / 'reports'}", "monitor.min_window=10", "monitor.check_interval_s=0.3",
            f"monitor.alert_webhook=http://127.0.0.1:{hook.server_port}/alerts"]  # fmt: skip
    cmd = [sys.executable, "-m", "plantdx.cli", "monitor", "--watch", *(x for s in sets for x in ("--set", s))]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(_Hook.received) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        hook.shutdown()
    said = log.read_text()
    assert len(_Hook.received) >= 2, f"the alert hook was called {len(_Hook.received)} times:\n{said[-3000:]}"
    payload = _Hook.received[0]
    assert payload["event"] == "plantdx.drift_detected" and payload["drift_detected"] is True
    assert payload["window"]["size"] == 12 and payload["drifted_columns"]
    warnings = [json.loads(line) for line in said.splitlines() if line.startswith("{")]
    assert any(w["message"] == "drift detected" and w["level"] == "WARNING" for w in warnings), said[-2000:]


def test_monitoring_off_means_503_for_feedback(exported: ExportResult, clean_env: None) -> None:  # noqa: ARG001
    with TestClient(create_app(serve_settings(exported.bundle, "monitor.log_url=null"))) as client:
        _predict(client, jpeg(), "req-off")
        r = client.post("/v1/feedback", json={"request_id": "req-off", "label": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "monitoring_off"
        assert client.get("/v1/drift").status_code == 503
