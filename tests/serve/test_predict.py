"""The diagnosis routes over HTTP (TestClient runs the lifespan: load, warm up, ready)."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from conftest import jpeg, serve_settings
from plantdx.export import ExportResult
from plantdx.serve import create_app

pytestmark = pytest.mark.slow


def _samples(exposition: str) -> dict[str, float]:
    """Every sample of a /metrics page, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_predict_returns_a_prediction(client: TestClient) -> None:
    r = client.post(
        "/v1/predict", files={"file": ("leaf.jpg", jpeg(), "image/jpeg")}, headers={"X-Request-ID": "abc-1"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    # The client's id is echoed for correlation; the request_id that keys the log and /v1/feedback is the service's.
    assert r.headers["x-request-id"] == "abc-1" and len(body["request_id"]) == 32 and body["request_id"] != "abc-1"
    long_id = "x" * 65  # an unsafe id is not echoed: the header carries the service's id
    r = client.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, headers={"X-Request-ID": long_id})
    assert r.status_code == 200 and r.headers["x-request-id"] == r.json()["request_id"] != long_id
    assert body["prediction"] in body["probabilities"]
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert [t["label"] for t in body["top_k"]][0] == body["prediction"] and len(body["top_k"]) == 3
    assert isinstance(body["abstained"], bool) and body["inference_time_ms"] > 0
    assert body["model_version"].startswith("bundle-") and body["heatmap"] is None


def test_explain_adds_a_heat_map(client: TestClient) -> None:
    r = client.post("/v1/predict?explain=true&top_k=2", files={"file": ("leaf.jpg", jpeg(), "image/jpeg")})
    assert r.status_code == 200
    assert base64.b64decode(r.json()["heatmap"])[:4] == b"\x89PNG"
    assert len(r.json()["top_k"]) == 2


def test_batch_json_and_multipart_with_a_bad_item(client: TestClient) -> None:
    good = base64.b64encode(jpeg()).decode()
    r = client.post("/v1/predict/batch", json={"images": [good, "%%%not-base64", good]})
    assert r.status_code == 200, r.text
    items = r.json()["predictions"]
    assert [i["index"] for i in items] == [0, 1, 2]
    assert items[0]["prediction"] and items[2]["prediction"]
    assert items[1]["error"]["code"] == "invalid_base64" and items[1]["prediction"] is None

    files = [("files", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(3)]
    files.append(("files", ("bad.jpg", b"not an image at all", "image/jpeg")))
    r = client.post("/v1/predict/batch", files=files)
    assert r.status_code == 200
    assert [bool(i["prediction"]) for i in r.json()["predictions"]] == [True, True, True, False]
    assert r.json()["predictions"][3]["error"]["code"] == "unsupported_media_type"


def test_batch_limits(client: TestClient) -> None:
    good = base64.b64encode(jpeg()).decode()
    r = client.post("/v1/predict/batch", json={"images": [good] * 17})
    assert r.status_code == 422 and "at most 16" in r.json()["error"]["message"]
    assert client.post("/v1/predict/batch", json={"images": [good] * 16}).status_code == 200
    assert client.post("/v1/predict/batch", json={"images": []}).status_code == 422
    assert (
        client.post("/v1/predict/batch", content=b"{not json", headers={"content-type": "application/json"}).status_code
        == 422
    )
    assert client.post("/v1/predict/batch", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


def test_jobs_round_trip_and_unknown_id(client: TestClient) -> None:
    r = client.post("/v1/jobs", files={"file": ("leaf.jpg", jpeg(), "image/jpeg")})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 10
    while (status := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["status"] == "done" and status["result"]["prediction"] and status["result"]["heatmap"] is None
    explained = client.post("/v1/jobs?explain=true", files={"file": ("leaf.jpg", jpeg(), "image/jpeg")}).json()
    deadline = time.monotonic() + 10
    while (status := client.get(f"/v1/jobs/{explained['job_id']}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert base64.b64decode(status["result"]["heatmap"])[:4] == b"\x89PNG"  # jobs take predict's explain
    # What needs no decoding is refused at the door; a file that only fails to decode fails its job.
    refused = client.post("/v1/jobs", files={"file": ("x.jpg", b"GIF89a....", "image/jpeg")})
    assert refused.status_code == 415 and refused.json()["error"]["code"] == "unsupported_media_type"
    truncated = jpeg(size=256)[:5000]
    bad = client.post("/v1/jobs", files={"file": ("x.jpg", truncated, "image/jpeg")}).json()["job_id"]
    deadline = time.monotonic() + 10
    while (status := client.get(f"/v1/jobs/{bad}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["status"] == "failed" and status["error"]["code"] == "corrupt_image"
    missing = client.get("/v1/jobs/does-not-exist")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_model_info_health_and_metrics(client: TestClient, exported: ExportResult) -> None:
    info = client.get("/v1/model").json()
    assert info["architecture"] == "plant_cnn"
    assert info["classes"] == ["Crop___Blight", "Crop___Spot", "Crop___healthy"]
    assert info["runtime"] == "onnxruntime" and info["input_size"] == 32
    # The page sizes its heat-map overlay from resize / crop.
    assert info["preprocess"] == json.loads((exported.bundle / "preprocess.json").read_text())
    assert (info["preprocess"]["resize"], info["preprocess"]["crop"]) == (37, 32)
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").status_code == 200
    health = client.get("/health").json()
    assert health["status"] in ("ok", "degraded") and health["checks"]["model"]["ok"]
    before = _samples(client.get("/metrics").text)
    answer = client.post("/v1/predict", files={"file": ("leaf.jpg", jpeg(), "image/jpeg")}).json()
    after = _samples(client.get("/metrics").text)
    moved = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}  # what one prediction recorded
    assert moved['plantdx_http_requests_total{method="POST",route="/v1/predict",status="200"}'] == 1
    assert moved[f'plantdx_predictions_total{{label="{answer["prediction"]}"}}'] == 1
    for counted in ("plantdx_model_inference_seconds_count", "plantdx_batch_size_count"):
        assert moved[counted] >= 1, counted  # micro-batching may have run it with others: at least one batch
    assert moved["plantdx_prediction_confidence_count"] == 1
    assert moved["plantdx_abstentions_total"] == (1 if answer["abstained"] else 0)
    assert after["plantdx_http_requests_active"] == 1  # the scrape itself
    assert after["plantdx_queue_depth"] == 0
    assert any(k.startswith("plantdx_model_info{") and answer["model_version"] in k for k in after)


def test_without_batching_the_answers_are_the_same(exported: ExportResult, clean_env: None) -> None:  # noqa: ARG001
    answers = []
    for batching in ("true", "false"):
        with TestClient(create_app(serve_settings(exported.bundle, f"serve.batching={batching}"))) as c:
            answers.append(c.post("/v1/predict", files={"file": ("l.jpg", jpeg(seed=5), "image/jpeg")}).json())
            c.post("/v1/predict?explain=true", files={"file": ("l.jpg", jpeg(seed=5), "image/jpeg")})
            # Both paths, and the heat-map one, are timed: the dashboards and alerts read this histogram.
            counted = [
                float(line.split()[-1])
                for line in c.get("/metrics").text.splitlines()
                if line.startswith("plantdx_model_inference_seconds_count")
            ]
            assert counted == [2.0], (batching, counted)
    assert answers[0]["probabilities"] == pytest.approx(answers[1]["probabilities"], abs=1e-6)


def test_batching_batches_a_burst_and_lets_a_lone_request_through(exported: ExportResult, clean_env: None) -> None:  # noqa: ARG001
    """With batching on, a request that finds a stream free and nobody waiting is decoded and inferred in one hop,
    without the batcher; a burst larger than the streams is batched."""
    settings = serve_settings(exported.bundle, "serve.batching=true", "serve.streams=2", "serve.max_wait_ms=50")
    with TestClient(create_app(settings)) as c:
        batcher = c.app.state.engine.runtime.batcher  # type: ignore[attr-defined]
        submitted: list[int] = []
        submit = batcher.submit

        async def counted(x: object, since: float | None = None) -> object:
            submitted.append(1)
            return await submit(x, since)

        batcher.submit = counted
        photo = {"file": ("l.jpg", jpeg(seed=5), "image/jpeg")}
        for _ in range(3):
            assert c.post("/v1/predict", files=photo).status_code == 200
        assert submitted == [], "a lone request went through the batcher"
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: c.post("/v1/predict", files=photo).status_code, range(8)))
        assert codes == [200] * 8
        assert submitted, "a burst of 8 on 2 streams never reached the batcher"
        samples = _samples(c.get("/metrics").text)
        assert samples["plantdx_batch_size_sum"] == 11  # every photo counted once, batched or alone
        assert samples["plantdx_batch_size_count"] < 11, "the burst was not batched"


def test_page_and_security_headers(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="photo"' in page.text and 'capture="environment"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").status_code == 200
    advice = client.get("/v1/advice").json()
    assert "Tomato___Early_blight" in advice["classes"]
    assert (
        "access-control-allow-origin" not in client.get("/v1/model", headers={"Origin": "https://evil.example"}).headers
    )


def test_an_unexpected_error_is_a_json_500_that_names_its_request(
    exported: ExportResult,
    clean_env: None,  # noqa: ARG001
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from plantdx.inference import Predictor

    with TestClient(create_app(serve_settings(exported.bundle))) as c:

        def broken(*_: object, **__: object) -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(Predictor, "postprocess", broken)  # a fault injected after the warm-up
        r = c.post("/v1/predict", files={"file": ("l.jpg", jpeg(), "image/jpeg")}, headers={"X-Request-ID": "bug-1"})
    assert r.status_code == 500 and r.json() == {
        "error": {"code": "internal_error", "message": "the service failed; the error is logged"}
    }
    assert r.headers["x-request-id"] == "bug-1" and r.headers["x-content-type-options"] == "nosniff"
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    errors = [x for x in logged if x["logger"] == "plantdx.serve" and "bug-1" in x["message"]]
    assert errors and "RuntimeError: a bug" in errors[0]["exception"]  # the log line names the request


def test_a_body_refused_before_routing_counts_under_its_route(client: TestClient) -> None:
    """/v1/feedback's own body limit answers before the router runs: the 413 must not read as an unknown path."""
    before = _samples(client.get("/metrics").text)
    r = client.post("/v1/feedback", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    after = _samples(client.get("/metrics").text)
    key = 'plantdx_http_requests_total{method="POST",route="/v1/feedback",status="413"}'
    assert after[key] - before.get(key, 0.0) == 1
    assert not any('route="unmatched"' in k for k in after)
