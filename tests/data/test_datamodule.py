from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from plantdx.config import DatasetConfig
from plantdx.data.datamodule import PlantDataModule, class_weights, training_rows
from plantdx.data.split import manifest_for


def test_loaders_yield_batches_of_the_configured_size(tiny_dataset: Path) -> None:
    cfg = DatasetConfig(root=tiny_dataset, image_size=32, batch_size=4, num_workers=0, min_images_per_class=3)
    dm = PlantDataModule(cfg, manifest_for(cfg))
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
    assert dm.classes == ["Crop___Blight", "Crop___Spot", "Crop___healthy"]
    assert len(dm.cache) == len(dm.manifest.split("train")) + len(dm.manifest.split("val"))
    val_x, _ = next(iter(dm.val_dataloader()))
    again, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(val_x, again)  # eval batches are deterministic


def test_uncached_loading_gives_the_same_eval_tensors(tiny_dataset: Path) -> None:
    cfg = DatasetConfig(root=tiny_dataset, image_size=32, batch_size=8, num_workers=0, min_images_per_class=3)
    manifest = manifest_for(cfg)
    cached = PlantDataModule(cfg, manifest)
    plain = PlantDataModule(cfg.model_copy(update={"cache_images": False}), manifest)
    a, _ = next(iter(cached.test_dataloader()))
    b, _ = next(iter(plain.test_dataloader()))
    assert torch.equal(a, b)
    assert len(plain.cache) == 0


def test_class_weights_balance_a_small_class() -> None:
    w = class_weights([0] * 400 + [1] * 100, 2)
    assert torch.allclose(w, torch.tensor([0.625, 2.5]))
    assert torch.isclose((w * torch.tensor([400.0, 100.0])).sum(), torch.tensor(500.0))


def test_weighted_sampler_draws_the_small_class_more(tiny_dataset: Path) -> None:
    cfg = DatasetConfig(
        root=tiny_dataset,
        image_size=32,
        batch_size=64,
        num_workers=0,
        balance="sampler",
        min_images_per_class=3,
    )
    manifest = manifest_for(cfg)
    # Drop most of one class from training to make it rare.
    rows = [r for r in manifest.rows if not (r.label == "Crop___Spot" and r.split == "train")][:]
    rare = [r for r in manifest.rows if r.label == "Crop___Spot" and r.split == "train"][:2]
    dm = PlantDataModule(cfg, type(manifest)(tuple(rows + rare)))
    counts = torch.zeros(3)
    for _ in range(20):
        _, y = next(iter(dm.train_dataloader()))
        counts += torch.bincount(y, minlength=3)
    share = counts / counts.sum()
    assert share[1] > 0.2  # 2 of ~18 training images, drawn about a third of the time


def test_a_refit_trains_on_the_validation_images_too(tiny_dataset: Path) -> None:
    cfg = DatasetConfig(root=tiny_dataset, image_size=32, batch_size=4, num_workers=0, min_images_per_class=3)
    manifest = manifest_for(cfg)
    plain = PlantDataModule(cfg, manifest)
    refit = PlantDataModule(cfg.model_copy(update={"train_on_val": True}), manifest)
    train, val, test = (manifest.split(s) for s in ("train", "val", "test"))  # type: ignore[arg-type]
    assert val and {r.path for r in refit.dataset("train").rows} == {r.path for r in train + val}
    assert [r.path for r in plain.dataset("train").rows] == [r.path for r in train]
    # Validation and test still feed the same images: only what the model learns from grows.
    assert [r.path for r in refit.dataset("val").rows] == [r.path for r in val]
    assert [r.path for r in refit.dataset("test").rows] == [r.path for r in test]
    assert len(refit.eval_loader("train").dataset) == len(train) + len(val)  # type: ignore[arg-type]


def test_a_learning_curve_learns_from_a_fixed_share_of_each_class(tiny_dataset: Path) -> None:
    cfg = DatasetConfig(root=tiny_dataset, image_size=32, batch_size=4, num_workers=0, min_images_per_class=3)
    manifest = manifest_for(cfg)
    train = manifest.split("train")
    half = training_rows(cfg.model_copy(update={"train_fraction": 0.5}), manifest)
    third = training_rows(cfg.model_copy(update={"train_fraction": 0.34}), manifest)
    for label in manifest.classes:
        n = sum(r.label == label for r in train)
        assert sum(r.label == label for r in half) == round(n / 2)  # stratified: every class keeps its share
    assert {r.path for r in third} < {r.path for r in half} < {r.path for r in train}  # nested, so comparable
    assert half == training_rows(cfg.model_copy(update={"train_fraction": 0.5}), manifest)  # deterministic
    assert half != training_rows(cfg.model_copy(update={"train_fraction": 0.5, "seed": 7}), manifest)
    module = PlantDataModule(cfg.model_copy(update={"train_fraction": 0.5}), manifest)
    assert [r.path for r in module.dataset("train").rows] == [r.path for r in half]
    # What the model is judged on does not shrink.
    for split in ("val", "test"):
        assert [r.path for r in module.dataset(split).rows] == [r.path for r in manifest.split(split)]  # type: ignore[arg-type]
    refit_half = training_rows(cfg.model_copy(update={"train_fraction": 0.5, "train_on_val": True}), manifest)
    assert len(half) < len(refit_half) < len(train) + len(manifest.split("val"))


def test_a_train_fraction_outside_0_1_is_refused() -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ValidationError, match="train_fraction"):
            DatasetConfig(train_fraction=bad)
