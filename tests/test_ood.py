"""The Mahalanobis out-of-distribution score: the vectorised form the service runs equals the textbook one."""

from __future__ import annotations

import numpy as np

from plantdx.ood import fit_ood, ood_scores


def test_scores_are_the_distance_to_the_nearest_class_mean() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    train = rng.normal(size=(120, 8)) + labels[:, None] * 3.0
    ood = fit_ood(train, labels, rng.normal(size=(30, 8)), quantile=0.9)
    x = rng.normal(size=(5, 8)) * 4
    mean, means, precision = (np.asarray(ood[k]) for k in ("mean", "class_means", "precision"))
    z = x - mean
    expected = np.array([min((r - m) @ precision @ (r - m) for m in means) for r in z])
    np.testing.assert_allclose(ood_scores(x, ood), expected, rtol=1e-9)
    # the service keeps the matrices as arrays (plantdx.inference.Predictor): same answer
    arrays = {k: np.asarray(v) if isinstance(v, list) else v for k, v in ood.items()}
    np.testing.assert_allclose(ood_scores(x, arrays), expected, rtol=1e-9)
    assert ood_scores(x, ood).shape == (5,)
