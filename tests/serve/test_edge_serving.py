"""What the service gives the offline page: the edge model under its sha256, /v1/model's ``edge``, the service
worker, the manifest and the vendored runtime (compressed)."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import serve_settings
from plantdx.bundle import EDGE_FILE, write_card
from plantdx.export import ExportResult
from plantdx.serve import create_app

pytestmark = pytest.mark.slow
VENDOR = Path(__file__).resolve().parents[2] / "src" / "plantdx" / "serve" / "static" / "vendor" / "onnxruntime-web"


def test_the_edge_model_is_served_immutable_under_its_sha256(client: TestClient, exported: ExportResult) -> None:
    edge = client.get("/v1/model").json()["edge"]
    body = (exported.bundle / EDGE_FILE).read_bytes()
    assert edge["sha256"] == hashlib.sha256(body).hexdigest() and edge["size"] == len(body)
    assert edge["url"] == f"/edge/model-{edge['sha256']}.onnx" and edge["weights"] in ("fp32", "fp16", "int8")
    plain = client.get(edge["url"], headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and plain.content == body
    assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "content-encoding" not in plain.headers
    # gzip when accepted: read the raw bytes as they travel, then unpack them
    with client.stream("GET", edge["url"], headers={"Accept-Encoding": "gzip"}) as r:
        wire = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(wire) == body and len(wire) < len(body)
    wrong = client.get("/edge/model-" + "0" * 64 + ".onnx")
    assert wrong.status_code == 404 and "/v1/model" in wrong.json()["error"]["message"]


def test_a_bundle_without_an_edge_model_says_so(exported: ExportResult, tmp_path: Path, clean_env: None) -> None:  # noqa: ARG001
    folder = tmp_path / "bundle"
    shutil.copytree(exported.bundle, folder)
    (folder / EDGE_FILE).unlink()
    write_card(folder, {k: v for k, v in exported.card.items() if k not in ("files", "edge")})
    with TestClient(create_app(serve_settings(folder))) as c:
        assert c.get("/v1/model").json()["edge"] is None
        r = c.get(f"/edge/model-{exported.card['files'][EDGE_FILE]}.onnx")
        assert r.status_code == 404 and "--edge-only" in r.json()["error"]["message"]


def test_the_page_is_installable_and_its_worker_and_runtime_are_served(client: TestClient) -> None:
    manifest = client.get("/manifest.webmanifest")
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    data = manifest.json()
    assert data["start_url"] == "/" and data["display"] == "standalone"
    for icon in data["icons"]:
        assert client.get(icon["src"]).headers["content-type"] == "image/png"
    worker = client.get("/sw.js")
    assert (
        worker.headers["content-type"].startswith("text/javascript") and worker.headers["cache-control"] == "no-cache"
    )
    # every file the worker keeps for offline use exists
    block = worker.text.split("var SHELL = [", 1)[1].split("];", 1)[0]
    vendor = re.search(r'var VENDOR = "([^"]+)"', worker.text).group(1)  # type: ignore[union-attr]
    shell = [("" if item.startswith("/") else vendor) + item for item in re.findall(r'"([^"]+)"', block)]
    assert "/" in shell and any(path.endswith(".wasm") for path in shell)
    for path in shell:
        assert client.get(path).status_code == 200, path
    assert client.get("/static/edge/engine.mjs").headers["content-type"].startswith("text/javascript")


def test_the_runtime_is_vendored_from_the_lock_file_and_sent_compressed(client: TestClient) -> None:
    if not (VENDOR / "version.json").is_file():  # fail, not skip: make install builds it
        pytest.fail(f"{VENDOR} is empty: run `make web` (npm ci from package-lock.json, then scripts/build_web.mjs)")
    about = json.loads((VENDOR / "version.json").read_text())
    lock = json.loads((Path(__file__).resolve().parents[2] / "package-lock.json").read_text())
    assert about["version"] == lock["packages"]["node_modules/onnxruntime-web"]["version"]
    url = "/static/vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm"
    with client.stream("GET", url, headers={"Accept-Encoding": "br, gzip"}) as r:
        size = sum(len(chunk) for chunk in r.iter_raw())
        assert r.headers["content-encoding"] == "br" and r.headers["content-type"] == "application/wasm"
    assert size == (VENDOR / "ort-wasm-simd-threaded.wasm.br").stat().st_size < 4_000_000
    plain = client.get(url, headers={"Accept-Encoding": "identity"})
    assert plain.content[:4] == b"\0asm" and "content-encoding" not in plain.headers
