"""Upload bytes -> a logged answer: the one diagnosis path of the service, its job queue and its job workers.

``diagnose`` runs every step for every caller: the upload checks, decode, preprocessing, inference, the heat map,
abstention, the Prometheus metrics and the prediction-log record. Where the CPU-heavy steps run is the caller's
choice, through a ``Runner``: the service's runtime decodes and infers in one hop to an inference stream (or, with
batching on, decodes in a thread pool and batches inference across requests); a job worker runs them inline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from plantdx.inference import Diagnosis, Predictor
from plantdx.serve.metrics import Metrics
from plantdx.serve.uploads import UploadLimits, decode_upload

T = TypeVar("T")
# request id, model version, answer, model input, predictor, upload bytes, content type -> the prediction log
Recorder = Callable[[str, str, Diagnosis, np.ndarray, Predictor, bytes, str | None], None]


class Runner(Protocol):
    """Where the steps of a diagnosis run."""

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        """CPU work on the upload (decode, preprocess)."""
        ...

    async def infer(self, prepare: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The preprocessed input that ``prepare`` makes of the upload, and its row of ``Predictor.forward``."""
        ...

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """An inference of its own (a heat map)."""
        ...


class Inline:
    """Every step in the calling thread: a job worker holds its own model and does one job at a time."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def infer(self, prepare: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = prepare()
        return x, np.asarray(self.predictor.forward(x[None])[0])

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)


@dataclass(frozen=True)
class Answer:
    diagnosis: Diagnosis
    heatmap: bytes | None  # RGBA PNG, when asked for and the model can draw one
    model_version: str
    elapsed_ms: float  # decode, inference and post-processing: the photo's time in the service, less the upload


async def diagnose(
    data: bytes,
    content_type: str | None,
    *,
    predictor: Predictor,
    version: str,
    runner: Runner,
    limits: UploadLimits,
    request_id: str,
    top_k: int | None = None,
    explain: bool = False,
    metrics: Metrics | None = None,
    record: Recorder | None = None,
) -> Answer:
    """Untrusted bytes -> an answer, observed in ``metrics`` and handed to ``record`` (the prediction log).

    A bad upload raises the ``ServiceError`` that says what is wrong with it (a 4xx), before any inference.
    """

    def prepare() -> np.ndarray:
        return predictor.preprocess(decode_upload(data, content_type, limits, predictor.resize))

    heatmap = None
    started = time.perf_counter()
    if explain and predictor.can_explain:
        x = await runner.decode(prepare)
        diagnosis, heatmap = await runner.run(predictor.explain_input, x, top_k)
    else:
        x, out = await runner.infer(prepare)
        diagnosis = predictor.answer(out[None], x[None], top_k)[0]
    elapsed_ms = (time.perf_counter() - started) * 1000
    if metrics is not None:
        metrics.observe_prediction(diagnosis.label, diagnosis.confidence, diagnosis.abstained)
    if record is not None:
        record(request_id, version, diagnosis, x, predictor, data, content_type)
    return Answer(diagnosis, heatmap, version, elapsed_ms)
