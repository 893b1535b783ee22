"""The edge model as the page downloads it: ``GET /edge/model-<sha256>.onnx``, immutable, gzip when accepted.

The URL names the file's sha256, so a cache may keep it forever and the page checks the bytes it got against the
name before it swaps models. Only the served bundle's edge model is answered: after a reload, the old one is gone
and a page that asks for it is told so (404) and looks at ``/v1/model`` again.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request, Response

from plantdx.bundle import Bundle
from plantdx.serve.deps import EngineDep
from plantdx.serve.errors import NotFoundError
from plantdx.serve.schemas import EdgeInfo, ErrorBody

IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass
class EdgeModel:
    """One bundle's edge model: read and hashed once; gzipped on first demand (a second or so for 5 MB)."""

    path: Path
    body: bytes
    sha256: str
    weights: str | None
    _gzipped: bytes | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"/edge/model-{self.sha256}.onnx"

    def info(self) -> EdgeInfo:
        return EdgeInfo(sha256=self.sha256, size=len(self.body), url=self.url, weights=self.weights)

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.body, compresslevel=9, mtime=0)
            return self._gzipped


_models: dict[Path, EdgeModel] = {}
_models_lock = threading.Lock()


def edge_model(bundle: Bundle) -> EdgeModel | None:
    """The bundle's ``model.edge.onnx`` (None without one), kept per file for the life of the process."""
    path = bundle.edge_path
    if path is None:
        return None
    recorded = bundle.card.get("files", {}).get(path.name)
    with _models_lock:
        known = _models.get(path)
        if known is not None and known.sha256 == recorded:
            return known
        body = path.read_bytes()
        digest = hashlib.sha256(body).hexdigest()
        weights = bundle.card.get("edge", {}).get("weights")
        _models[path] = EdgeModel(path, body, digest, weights)
        return _models[path]


def create_edge_router() -> APIRouter:
    router = APIRouter(tags=["model"])

    @router.get(
        "/edge/model-{sha256}.onnx",
        response_class=Response,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the edge ONNX model"},
            404: {"model": ErrorBody, "description": "not the served model's edge model (or it has none)"},
        },
    )
    def edge_file(sha256: str, request: Request, engine: EngineDep) -> Response:
        """The served model's in-browser model (immutable; the page checks its sha256)."""
        model = edge_model(engine.current().predictor.bundle)
        if model is None or model.sha256 != sha256:
            raise NotFoundError(
                "no such edge model: the served model's is named in /v1/model (edge.url)"
                if model is not None
                else "the served model has no edge model (plantdx export --edge-only BUNDLE makes one)"
            )
        headers = {"Cache-Control": IMMUTABLE, "ETag": f'"{model.sha256}"', "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return Response(model.gzipped(), media_type="application/octet-stream", headers=headers)
        return Response(model.body, media_type="application/octet-stream", headers=headers)

    return router
