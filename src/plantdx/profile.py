"""The drift reference profile that travels in every bundle, and the image features it is made of.

numpy only: the service computes the same features on every photo it serves, off the request path, and compares
a window of them with ``reference.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from plantdx.images import LUMA

PROFILE_VERSION = 1
IMAGE_FEATURES = (
    "mean_r",
    "mean_g",
    "mean_b",
    "std_r",
    "std_g",
    "std_b",
    "brightness",
    "contrast",
    "saturation",
    "sharpness",
)
EMBEDDING_COMPONENTS = 8


def image_features(image: np.ndarray) -> dict[str, float]:
    """Colour, brightness, contrast, saturation and sharpness of an HWC RGB image (uint8, or float on 0..1).

    Sharpness is the variance of a 4-neighbour Laplacian of the luma: blur lowers it, noise raises it.
    """
    rgb = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    return _plane_features(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _plane_features(planes: np.ndarray) -> dict[str, float]:
    """``image_features`` of a CHW float32 image on 0..1: whole planes, no per-pixel reductions over 3 channels
    (a third of the time, on every photo served)."""
    r, g, b = planes
    luma = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    lap = -4 * luma[1:-1, 1:-1] + luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]
    flat = planes.reshape(3, -1)
    means, stds = flat.mean(axis=1), flat.std(axis=1)
    return {
        "mean_r": float(means[0]),
        "mean_g": float(means[1]),
        "mean_b": float(means[2]),
        "std_r": float(stds[0]),
        "std_g": float(stds[1]),
        "std_b": float(stds[2]),
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "sharpness": float(lap.var()),
    }


def features_from_input(x: np.ndarray, spec: dict[str, Any]) -> dict[str, float]:
    """The features of a preprocessed CHW model input: undo the normalisation rather than keep the decoded image.

    The reference profile measured the same resized image as uint8, so the two agree to float rounding.
    """
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    return _plane_features(np.clip(x * std + mean, 0.0, 1.0))


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p5": float(q[0]),
        "p50": float(q[1]),
        "p95": float(q[2]),
    }


def fit_embedding_projection(embeddings: np.ndarray, k: int = EMBEDDING_COMPONENTS) -> dict[str, Any]:
    """PCA of the reference embeddings: a few columns a drift test can compare instead of hundreds."""
    mean = embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(embeddings - mean, full_matrices=False)
    return {"dim": int(embeddings.shape[1]), "mean": mean.tolist(), "components": vt[: min(k, len(vt))].tolist()}


def project_embeddings(embeddings: np.ndarray, projection: dict[str, Any]) -> np.ndarray:
    return np.asarray((embeddings - np.asarray(projection["mean"])) @ np.asarray(projection["components"]).T)


def reference_profile(
    features: Sequence[dict[str, float]],
    probabilities: np.ndarray,
    classes: Sequence[str],
    data_hash: str,
    embeddings: np.ndarray | None = None,
    source: str = "validation split",
) -> dict[str, Any]:
    """What "normal" looks like, from held-out images: per-image rows (for Evidently) and their summaries.

    Rows hold the image features, the calibrated confidence and predicted class, and when the model exposes an
    embedding, its first principal components; ``embedding.mean``/``components`` project served embeddings
    the same way.
    """
    columns = list(IMAGE_FEATURES)
    table = np.array([[f[name] for name in IMAGE_FEATURES] for f in features], dtype=np.float64)
    confidence = probabilities.max(axis=1)
    predicted = probabilities.argmax(axis=1)
    embedding: dict[str, Any] | None = None
    if embeddings is not None:
        embedding = fit_embedding_projection(embeddings)
        projected = project_embeddings(embeddings, embedding)
        columns += [f"emb_{i}" for i in range(projected.shape[1])]
        table = np.hstack([table, projected])
    columns.append("confidence")
    table = np.hstack([table, confidence[:, None]])
    counts = np.bincount(predicted, minlength=len(classes))
    return {
        "version": PROFILE_VERSION,
        "source": source,
        "images": int(len(table)),
        "data_hash": data_hash,
        "columns": columns,
        "rows": np.round(table, 6).tolist(),
        "predicted_class": [classes[i] for i in predicted],
        "summary": {name: _summary(table[:, i]) for i, name in enumerate(columns)},
        "class_distribution": {c: float(n / max(1, len(predicted))) for c, n in zip(classes, counts, strict=True)},
        "embedding": embedding,
    }
