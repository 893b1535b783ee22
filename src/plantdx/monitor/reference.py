"""Scoring images into monitor rows with a bundle alone (no torch), and rebuilding a bundle's reference profile.

The service's log rows (``monitor_row``) and the real-image drift tests (``score_images``) are made the same way as
the reference's.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from plantdx.bundle import load_bundle, write_card
from plantdx.config import MonitorConfig
from plantdx.inference import Prediction, Predictor, softmax
from plantdx.monitor.log import PredictionRecord
from plantdx.monitor.profile import features_from_input, project_embeddings, reference_profile
from plantdx.ood import fit_detector


def score_inputs(predictor: Predictor, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Calibrated probabilities and (when the graph has one) embeddings of preprocessed inputs."""
    n = len(predictor.labels)
    run = predictor.logits_and_embedding if predictor.has_embedding else predictor.logits
    out = np.concatenate([run(x[i : i + batch]) for i in range(0, len(x), batch)])
    embeddings = out[:, n:] if predictor.has_embedding else None
    return softmax(out[:, :n], predictor.temperature), embeddings


def score_images(predictor: Predictor, images: Sequence[Image.Image | Path | bytes]) -> list[dict[str, Any]]:
    """Log-shaped rows (features, projected embedding, confidence, predicted, abstained) for images scored offline,
    made exactly as the service makes them."""
    x = np.stack([predictor.preprocess(im) for im in images])
    out = np.concatenate([predictor.forward(x[i : i + 64]) for i in range(0, len(x), 64)])
    logits, embeddings = predictor.split(out)
    predictions = predictor.postprocess(logits, 1, embeddings, x)
    return [monitor_row(p, xi, predictor) for p, xi in zip(predictions, x, strict=True)]


def monitor_row(prediction: Prediction, x: np.ndarray, predictor: Predictor) -> dict[str, Any]:
    """The monitored columns of one prediction: image features of its model input, projected embedding, outcome."""
    row: dict[str, Any] = features_from_input(x, predictor.spec)
    projection = predictor.bundle.reference.get("embedding")
    if prediction.embedding is not None and projection:
        projected = project_embeddings(prediction.embedding[None], projection)[0]
        row.update({f"emb_{j}": float(v) for j, v in enumerate(projected)})
    row.update(confidence=prediction.confidence, predicted=prediction.label, abstained=prediction.abstained)
    return row


def sampled_record(
    cfg: MonitorConfig,
    rng: random.Random,
    request_id: str,
    model_version: str,
    prediction: Prediction,
    x: np.ndarray,
    predictor: Predictor,
    data: bytes,
    content_type: str | None,
) -> PredictionRecord | None:
    """The log record of one served prediction, or None when sampling leaves it out; its features are computed
    later, by the log writer's thread (``prepare``), so the request path only builds this object."""
    if cfg.sample_rate < 1 and rng.random() >= cfg.sample_rate:
        return None
    keep_image = cfg.image_store_mb > 0 and (cfg.image_sample_rate >= 1 or rng.random() < cfg.image_sample_rate)
    return PredictionRecord(
        request_id=request_id,
        model_version=model_version,
        predicted=prediction.label,
        confidence=prediction.confidence,
        abstained=prediction.abstained,
        image=data if keep_image else None,
        content_type=content_type,
        prepare=lambda: monitor_row(prediction, x, predictor),
        held_bytes=x.nbytes + (len(data) if keep_image else 0),
    )


def _resign(bundle_dir: Path) -> None:
    """Re-hash the bundle's files into its card after one was rewritten, and verify it as serving will."""
    card = json.loads((bundle_dir / "card.json").read_text())
    card.pop("files", None)
    write_card(bundle_dir, card)
    load_bundle(bundle_dir)


def embed_paths(predictor: Predictor, paths: Sequence[Path], chunk: int = 256) -> np.ndarray:
    """Embeddings of image files, a chunk at a time so a big split never sits in memory as float tensors."""
    out = []
    for i in range(0, len(paths), chunk):
        x = np.stack([predictor.preprocess(p) for p in paths[i : i + chunk]])
        embeddings = score_inputs(predictor, x)[1]
        assert embeddings is not None  # callers check has_embedding
        out.append(embeddings)
    return np.concatenate(out)


def fit_bundle_ood(
    bundle_dir: Path,
    train: Sequence[tuple[Path, str]],
    val: Sequence[Path],
    test: Sequence[Path] = (),
    *,
    quantile: float = 0.975,
) -> dict[str, Any]:
    """Fit the out-of-distribution detector of an existing bundle into its ``calibration.json`` and re-sign it."""
    predictor = Predictor(bundle_dir)
    if not predictor.has_embedding:
        raise ValueError(f"{bundle_dir}: the model has no embedding output")
    index = {c: i for i, c in enumerate(predictor.labels)}
    ood = fit_detector(
        embed_paths(predictor, [p for p, _ in train]),
        np.array([index[c] for _, c in train]),
        embed_paths(predictor, val),
        embed_paths(predictor, test) if test else None,
        quantile=quantile,
    )
    calibration = json.loads((bundle_dir / "calibration.json").read_text())
    calibration["ood"] = ood
    (bundle_dir / "calibration.json").write_text(json.dumps(calibration) + "\n")
    _resign(bundle_dir)
    return ood


def rebuild_reference(bundle_dir: Path, images: Sequence[Path], *, data_hash: str, source: str) -> dict[str, Any]:
    """Recompute ``reference.json`` of an existing bundle from the given held-out images and re-sign its card."""
    predictor = Predictor(bundle_dir)
    x = np.stack([predictor.preprocess(p) for p in images])
    probs, embeddings = score_inputs(predictor, x)
    profile = reference_profile(
        [features_from_input(xi, predictor.spec) for xi in x],
        probs,
        predictor.labels,
        data_hash,
        embeddings=embeddings,
        source=source,
    )
    (bundle_dir / "reference.json").write_text(json.dumps(profile) + "\n")
    _resign(bundle_dir)
    return profile
