"""The per-photo work every contender does: plantdx's own upload checks, decode, preprocessing, ONNX Runtime and
post-processing, so that the servers of ``benchmarks/serve.py`` differ only in how the bytes get in and the answer
gets out. Not part of plantdx.

It imports ``plantdx.inference`` and ``plantdx.serve.uploads`` from the source tree (``PYTHONPATH``): the first needs
numpy, Pillow and onnxruntime; the second also pydantic-settings, PyYAML and FastAPI (through ``plantdx.config`` and
``plantdx.serve.errors``), which is why each contender's venv has them too.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from plantdx.config import ServeConfig
from plantdx.inference import Diagnosis, Predictor
from plantdx.serve.uploads import UploadLimits, decode_upload


class Pipeline:
    """One ONNX Runtime session (1 intra-op thread by default) shared by the server's threads, as in plantdx serve."""

    def __init__(self, bundle: Path | str, threads: int = 1) -> None:
        self.predictor = Predictor(Path(bundle), threads=threads)
        self.limits = UploadLimits.of(ServeConfig())  # plantdx's default upload limits

    def prepare(self, data: bytes, content_type: str | None) -> np.ndarray:
        """Upload bytes -> the model's CHW input (the checks and decode ``plantdx serve`` runs)."""
        image = decode_upload(data, content_type, self.limits, self.predictor.resize)
        return self.predictor.preprocess(image)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """NCHW inputs -> ``Predictor.forward`` rows (logits, and the embedding that OOD scoring needs)."""
        return self.predictor.forward(batch)

    def diagnose(self, out: np.ndarray, x: np.ndarray) -> Diagnosis:
        """One row of ``forward`` and its input -> the answer, one at a time as ``plantdx serve`` makes it."""
        return self.predictor.answer(out[None], x[None])[0]

    def answer(self, out: np.ndarray, x: np.ndarray) -> dict[str, Any]:
        """``diagnose`` as the JSON body plantdx returns (less its request id, model version and timing)."""
        d = self.diagnose(out, x)
        return {
            "prediction": d.label,
            "confidence": d.confidence,
            "probabilities": d.probabilities,
            "top_k": [{"label": label, "probability": p} for label, p in d.top_k],
            "abstained": d.abstained,
            "reason": d.reason,
        }

    def __call__(self, data: bytes, content_type: str | None) -> dict[str, Any]:
        """The whole path for one photo, in the calling thread."""
        x = self.prepare(data, content_type)
        return self.answer(self.forward(x[None])[0], x)

    def warm_up(self, batch: int = 1) -> None:
        """A synthetic leaf-green JPEG through the whole path (ONNX Runtime's first runs are slow), then a batch."""
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (60, 140, 60)).save(buf, format="JPEG")
        x = self.prepare(buf.getvalue(), "image/jpeg")
        for _ in range(3):
            self.answer(self.forward(x[None])[0], x)
        if batch > 1:
            self.forward(np.stack([x] * batch))
