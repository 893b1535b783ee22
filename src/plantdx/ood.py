"""Out-of-distribution detection: "this does not look like a leaf I know".

A softmax is confident on anything, photos of cats and rockets included (measured on the bundled model: it abstained
on only 62% of scikit-image's sample photos by confidence alone). The class-conditional Mahalanobis distance of the
embedding (Lee et al., 2018: the distance to the nearest class mean under one shared covariance, fitted on the
training split) separates them far better; its threshold is a quantile of the held-out validation scores, so the
share of real leaves it turns away is chosen, not discovered. numpy only: it runs in the service.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fit_ood(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    val_embeddings: np.ndarray,
    *,
    quantile: float = 0.975,
    ridge: float = 1e-3,
    dims: int = 64,
) -> dict[str, Any]:
    """Class means, the shared precision matrix, and the threshold at ``quantile`` of the validation scores.

    An embedding wider than ``dims`` (EfficientNet-Lite0's has 1,280) is first projected on its ``dims`` principal
    components: a full precision matrix would be 1.6 M numbers (20 MB of calibration.json) and a product of that
    size per request, for a distance that the leading components carry.
    """
    mean = train_embeddings.mean(axis=0)
    components = None
    if train_embeddings.shape[1] > dims:
        _, _, vt = np.linalg.svd(train_embeddings - mean, full_matrices=False)
        components = vt[:dims]
    z = _project(train_embeddings, mean, components)
    classes = np.unique(train_labels)
    means = np.zeros((int(train_labels.max()) + 1, z.shape[1]))
    for c in classes:
        means[c] = z[train_labels == c].mean(axis=0)
    centred = z - means[train_labels]
    cov = centred.T @ centred / len(z) + ridge * np.eye(z.shape[1])
    ood = {
        "method": "mahalanobis",
        "mean": mean.tolist(),
        **({"components": components.tolist()} if components is not None else {}),
        "class_means": means.tolist(),
        "precision": np.linalg.inv(cov).tolist(),
        "quantile": quantile,
        "threshold": 0.0,
    }
    ood["threshold"] = float(np.quantile(ood_scores(val_embeddings, ood), quantile))
    return ood


def fit_detector(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    val_embeddings: np.ndarray,
    test_embeddings: np.ndarray | None = None,
    *,
    quantile: float = 0.975,
) -> dict[str, Any]:
    """``fit_ood`` as stored in ``calibration.json``: rounded, with what it was fitted on and, given test
    embeddings, the share of test leaves it would turn away."""
    ood = round_floats(fit_ood(train_embeddings, train_labels, val_embeddings, quantile=quantile))
    ood["fitted_on"] = {"train": len(train_embeddings), "val": len(val_embeddings)}
    if test_embeddings is not None:
        ood["test_flagged_rate"] = float((ood_scores(test_embeddings, ood) > ood["threshold"]).mean())
    return ood


def ood_scores(embeddings: np.ndarray, ood: dict[str, Any]) -> np.ndarray:
    """Squared Mahalanobis distance to the nearest class mean, one per row."""
    components = ood.get("components")
    z = _project(np.asarray(embeddings, dtype=np.float64), np.asarray(ood["mean"]), components)
    means = np.asarray(ood["class_means"])
    precision = np.asarray(ood["precision"])
    # (z - m) P (z - m)^T = zPz - 2 zPm + mPm for every class mean m at once. einsum, not @: these products are
    # a few rows by 256, and OpenBLAS's threads made them cost ~15 ms a request on a busy 2-core server.
    zp = np.einsum("bi,ij->bj", z, precision)
    mpm = (np.einsum("ci,ij->cj", means, precision) * means).sum(axis=1)
    d = (zp * z).sum(axis=1)[:, None] - 2 * np.einsum("bj,cj->bc", zp, means) + mpm[None, :]
    return np.asarray(d.min(axis=1))


def _project(embeddings: np.ndarray, mean: np.ndarray, components: Any) -> np.ndarray:
    """Centred, and on the principal components when the detector has them."""
    z = embeddings - mean
    return z if components is None else np.asarray(np.einsum("bi,ki->bk", z, np.asarray(components)))


def round_floats(ood: dict[str, Any], digits: int = 6) -> dict[str, Any]:
    """Shorter JSON (``digits`` significant digits): the precision matrix is the bulk of ``calibration.json``."""

    def r(x: Any) -> Any:
        if not isinstance(x, list):
            return x
        return np.vectorize(lambda v: float(f"{v:.{digits}g}"))(np.asarray(x, dtype=np.float64)).tolist()

    return {k: r(v) for k, v in ood.items()}
