from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_leaf
from plantdx.config import DatasetConfig
from plantdx.data.transforms import create_eval_transform, create_train_transform, preprocess_spec
from plantdx.images import resize_shorter


@pytest.fixture
def cfg(tmp_path: Path) -> DatasetConfig:
    return DatasetConfig(root=tmp_path, image_size=64)


@pytest.mark.parametrize("augment", ["none", "light", "standard"])
def test_train_transform_gives_normalised_chw_float(cfg: DatasetConfig, augment: str) -> None:
    cfg.augment = augment  # type: ignore[assignment]
    image = resize_shorter(make_leaf("Crop___Spot", 1, size=96), cfg.resize_to)
    out = create_train_transform(cfg)(image=image)["image"]
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert -5 < out.min() and out.max() < 5  # normalised, not 0..255


def test_eval_transform_is_deterministic_and_matches_the_spec(cfg: DatasetConfig) -> None:
    image = resize_shorter(make_leaf("Crop___Blight", 2, size=100), cfg.resize_to)
    transform = create_eval_transform(cfg)
    a, b = transform(image=image)["image"], transform(image=image)["image"]
    assert torch.equal(a, b)
    # The bundle's contract, done by hand with numpy: centre crop, /255, normalise, CHW.
    spec = preprocess_spec(cfg)
    top = (image.shape[0] - spec["crop"]) // 2
    left = (image.shape[1] - spec["crop"]) // 2
    crop = image[top : top + spec["crop"], left : left + spec["crop"]].astype(np.float32) / 255.0
    manual = ((crop - np.array(spec["mean"])) / np.array(spec["std"])).transpose(2, 0, 1)
    np.testing.assert_allclose(a.numpy(), manual, atol=1e-5)


def test_preprocess_spec_has_the_bundle_keys(cfg: DatasetConfig) -> None:
    spec = preprocess_spec(cfg)
    assert spec == {
        "resize": 73,
        "crop": 64,
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "layout": "NCHW",
        "input_name": "image",
        "output_name": "logits",
    }
