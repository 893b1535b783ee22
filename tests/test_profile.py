"""The drift reference profile and its image features: what export writes into a bundle and monitoring compares."""

from __future__ import annotations

import numpy as np
import pytest

from plantdx.images import preprocess, to_rgb
from plantdx.profile import (
    IMAGE_FEATURES,
    features_from_input,
    fit_embedding_projection,
    image_features,
    project_embeddings,
    reference_profile,
)

SPEC = {
    "resize": 32,
    "crop": 32,
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def test_features_of_a_flat_and_a_striped_image() -> None:
    flat = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
    f = image_features(flat)
    assert set(f) == set(IMAGE_FEATURES)
    assert f["mean_r"] == pytest.approx(200 / 255, abs=1e-5) and f["std_g"] == pytest.approx(0, abs=1e-5)
    assert f["brightness"] == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-6)
    assert f["contrast"] == pytest.approx(0, abs=1e-5) and f["sharpness"] == pytest.approx(0, abs=1e-8)
    assert f["saturation"] == pytest.approx((200 - 50) / 200, abs=1e-5)
    stripes = np.zeros((16, 16, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    g = image_features(stripes)
    assert g["contrast"] == pytest.approx(0.5, abs=1e-5) and g["sharpness"] > 1 and g["saturation"] == 0


def test_features_of_a_model_input_match_those_of_its_image() -> None:
    """The service features what it served from the normalised input; the reference featured the uint8 image."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    from PIL import Image

    x = preprocess(to_rgb(Image.fromarray(image)), SPEC)
    direct, undone = image_features(image), features_from_input(x, SPEC)
    for name in IMAGE_FEATURES:
        assert undone[name] == pytest.approx(direct[name], rel=1e-4, abs=1e-5), name


def test_embedding_projection_keeps_the_largest_variance_first() -> None:
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((200, 12)) * np.array([10.0, 5.0, *([0.1] * 10)])
    projection = fit_embedding_projection(emb, k=3)
    assert projection["dim"] == 12 and len(projection["components"]) == 3
    projected = project_embeddings(emb, projection)
    assert projected.shape == (200, 3)
    variances = projected.var(axis=0)
    assert variances[0] > variances[1] > variances[2] and variances[0] == pytest.approx(100, rel=0.25)


def test_reference_profile_rows_summaries_and_classes() -> None:
    rng = np.random.default_rng(2)
    features = [image_features(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(20)]
    probs = np.tile([[0.7, 0.2, 0.1]], (20, 1))
    probs[:5] = [0.1, 0.8, 0.1]
    profile = reference_profile(features, probs, ["a", "b", "c"], "hash", embeddings=rng.standard_normal((20, 16)))
    assert profile["images"] == 20 and profile["data_hash"] == "hash"
    assert profile["columns"] == [*IMAGE_FEATURES, *(f"emb_{i}" for i in range(8)), "confidence"]
    assert len(profile["rows"]) == 20 and all(len(r) == len(profile["columns"]) for r in profile["rows"])
    assert profile["class_distribution"] == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert profile["summary"]["confidence"]["p50"] == pytest.approx(0.7)
    assert profile["predicted_class"][:5] == ["b"] * 5
