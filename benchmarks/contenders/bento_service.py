"""Contender: BentoML, as its docs set up an image model. Not part of plantdx; do not deploy it.

Run in its own venv (``benchmarks/serve.py`` makes it) with ``bentoml serve bento_service:Leaves`` from this folder.
One worker process; sync API methods run in BentoML's threadpool of ``BENCH_THREADS`` threads sharing one ONNX
Runtime session (1 intra-op thread). ``BENCH_BATCHING=1``: adaptive batching (BentoML's CorkDispatcher) of up to
``BENCH_MAX_BATCH`` requests within ``BENCH_MAX_LATENCY_MS``. ``/predict`` takes a multipart ``file``, which BentoML
writes to a temporary file and hands over as a ``Path`` (its way for files); a raw JPEG body would be read as JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from pipeline import Pipeline

BUNDLE = Path(os.environ["BENCH_BUNDLE"])
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
BATCHING = os.environ.get("BENCH_BATCHING", "0") == "1"
MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "16"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "1000"))


@bentoml.service(workers=1, threads=THREADS, logging={"access": {"enabled": False}})
class Leaves:
    def __init__(self) -> None:
        self.pipe = Pipeline(BUNDLE)
        self.pipe.warm_up(MAX_BATCH if BATCHING else 1)

    def _read(self, file: Path) -> np.ndarray:
        try:
            return self.pipe.prepare(file.read_bytes(), "image/jpeg")
        finally:
            file.unlink(missing_ok=True)  # BentoML's temporary copy of the upload

    if BATCHING:

        @bentoml.api(route="/predict", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
        def predict(self, file: list[Path]) -> list[dict[str, Any]]:
            xs = np.stack([self._read(f) for f in file])
            return [self.pipe.answer(out, x) for out, x in zip(self.pipe.forward(xs), xs, strict=True)]

    else:

        @bentoml.api(route="/predict")
        def predict(self, file: Path) -> dict[str, Any]:
            x = self._read(file)
            return self.pipe.answer(self.pipe.forward(x[None])[0], x)
