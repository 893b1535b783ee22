"""Rate limits (the `limits` library, the design's 10/minute) and the admin reload behind its bearer token."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import jpeg, serve_settings
from plantdx.export import ExportResult
from plantdx.serve import create_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]


def test_ten_per_minute_then_429_with_retry_after(exported: ExportResult) -> None:
    settings = serve_settings(exported.bundle, "serve.rate_limit=10/minute", 'serve.api_keys=["team-a"]')
    with TestClient(create_app(settings)) as c:
        files = {"file": ("a.jpg", jpeg(), "image/jpeg")}
        answers = [c.post("/v1/predict", files=files) for _ in range(9)]
        answers.append(c.post("/v1/jobs", files=files))
        assert [r.status_code for r in answers] == [200] * 9 + [202]
        assert all("retry-after" not in r.headers for r in answers)  # it means nothing on a success
        assert answers[0].headers["x-ratelimit-limit"] == "10"
        assert [int(r.headers["x-ratelimit-remaining"]) for r in answers] == list(range(9, -1, -1))
        # predict, batch and jobs draw on one budget: the other routes are not a fresh one
        assert c.post("/v1/predict/batch", files={"files": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 429
        assert c.post("/v1/jobs", files=files).status_code == 429
        over = c.post("/v1/predict", files=files)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "rate_limited"
        assert int(over.headers["retry-after"]) > 0
        # A configured API key has its own budget; a made-up one does not buy a fresh budget.
        assert c.post("/v1/predict", files=files, headers={"X-API-Key": "team-a"}).status_code == 200
        assert c.post("/v1/predict", files=files, headers={"X-API-Key": "made-up"}).status_code == 429
        assert c.get("/v1/model").status_code == 200  # reads are not limited
        # A forged X-Forwarded-For does not buy a fresh budget (no trusted proxy is configured).
        assert c.post("/v1/predict", files=files, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 429


def test_a_batch_of_k_photos_costs_k(exported: ExportResult) -> None:
    """A client must not multiply its budget by sending batches: 10/minute is ten photos, however they come."""
    settings = serve_settings(exported.bundle, "serve.rate_limit=10/minute")
    with TestClient(create_app(settings)) as c:
        four = {"files": [("files", (f"{i}.jpg", jpeg(seed=i), "image/jpeg")) for i in range(4)]}
        first = c.post("/v1/predict/batch", **four)  # type: ignore[arg-type]
        assert first.status_code == 200 and len(first.json()["predictions"]) == 4
        assert c.post("/v1/predict/batch", **four).status_code == 200  # type: ignore[arg-type]  # 8 of 10
        over = c.post("/v1/predict/batch", **four)  # type: ignore[arg-type]  # 12 > 10: refused whole
        assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited"
        assert "a batch of 4 photos costs 4" in over.json()["error"]["message"]
        assert int(over.headers["retry-after"]) > 0
        # What is left after the refusal (the refused batch took 1): one more photo goes through, then none.
        files = {"file": ("a.jpg", jpeg(), "image/jpeg")}
        assert [c.post("/v1/predict", files=files).status_code for _ in range(2)] == [200, 429]


def test_admin_routes_absent_without_a_token(client: TestClient) -> None:
    assert client.post("/v1/admin/reload").status_code == 404
    assert "/v1/admin/reload" not in client.get("/openapi.json").json()["paths"]


def test_admin_reload_needs_the_token_and_swaps_the_model(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTDX_ADMIN_TOKEN", "s3cret-token")
    with TestClient(create_app(serve_settings(exported.bundle))) as c:
        assert c.post("/v1/admin/reload").status_code == 401
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.post("/v1/admin/reload", headers={"Authorization": "Basic s3cret-token"}).status_code == 403
        engine = c.app.state.engine  # type: ignore[attr-defined]
        before = engine.runtime
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == r.json()["previous_version"]
        assert engine.runtime is not before  # a fresh runtime took over
        assert c.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 200


def test_a_failed_reload_keeps_the_current_model(
    exported: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTDX_ADMIN_TOKEN", "s3cret-token")
    copy = Path(shutil.copytree(exported.bundle, tmp_path / "b"))
    with TestClient(create_app(serve_settings(copy))) as c:
        (copy / "labels.json").write_text('["tampered", "with"]')
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert "does not match its card" in r.json()["error"]["message"]
        assert c.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 200
