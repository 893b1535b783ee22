"""The bundle that ships in the package: complete, small, and right on real leaves it never trained on."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_leaf
from plantdx.bundle import load_bundle
from plantdx.cli import app
from plantdx.config import DatasetConfig
from plantdx.data.split import manifest_for
from plantdx.errors import PlantdxError
from plantdx.images import load_rgb, model_view
from plantdx.inference import Predictor, default_bundle_path, input_contrast

BUNDLE = default_bundle_path()


def test_default_bundle_is_complete_verified_and_small() -> None:
    bundle = load_bundle(BUNDLE)  # every file present and matching its sha256 in card.json
    size = sum(p.stat().st_size for p in BUNDLE.iterdir())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"
    card = bundle.card
    for key in ("architecture", "metrics", "data", "parity", "int8", "created_at", "plantdx_version", "training"):
        assert key in card, key
    assert card["parity"]["onnx"]["passed"] is True
    assert len(bundle.labels) == 16 and bundle.labels[-1] == "not_a_leaf" and card["class_activation_map"] is True
    assert bundle.calibration["reject_label"] == "not_a_leaf"


@pytest.mark.realdata
@pytest.mark.slow
def test_default_bundle_scores_its_card_on_the_held_out_split(bundled_split: tuple[DatasetConfig, Any]) -> None:
    """The card's figures, lab and field, are what the shipped graph gives on its own test split today."""
    dataset, manifest = bundled_split
    predictor = Predictor(BUNDLE, threads=2)
    card = predictor.bundle.card
    assert manifest.digest == card["data"]["manifest_sha256"], "the bundle was scored on another split"
    rows = manifest.split("test")
    index = {c: i for i, c in enumerate(predictor.labels)}
    batch = np.stack([predictor.preprocess(load_rgb(dataset.locate(r.root, r.path))) for r in rows])
    predicted = np.concatenate([predictor.logits(batch[i : i + 64]) for i in range(0, len(batch), 64)]).argmax(1)
    right = predicted == np.array([index[r.label] for r in rows])
    domains = np.array([r.domain for r in rows])
    # The card was measured through this same path; allow two flipped images for another CPU or thread count.
    assert right.mean() == pytest.approx(card["metrics"]["test_accuracy"], abs=2 / len(rows))
    for domain in ("lab", "field"):
        mine = domains == domain
        assert right[mine].mean() == pytest.approx(card["metrics"][f"test_{domain}_accuracy"], abs=2 / mine.sum())
    # What was shipped, as regression floors (the targets, and by how much they are missed: docs/model.md)
    assert right[domains == "lab"].mean() >= 0.93 and right[domains == "field"].mean() >= 0.35
    # No real leaf is too flat to judge: the floor sits below every leaf photo of the held-out split.
    floor = predictor.min_contrast
    leaves = domains != "nonleaf"
    assert floor is not None and min(input_contrast(x, predictor.spec) for x in batch[leaves]) > floor


@pytest.mark.realdata
def test_cli_predict_names_real_leaves(bundled_split: tuple[DatasetConfig, Any]) -> None:
    """Three held-out lab photos of every class through `plantdx predict --json`: most are named right."""
    dataset, manifest = bundled_split
    rows = [r for r in manifest.split("test") if r.domain == "lab"]
    picks = [r for label in sorted({r.label for r in rows}) for r in [x for x in rows if x.label == label][:3]]
    result = CliRunner().invoke(app, ["predict", "--json", *(str(dataset.locate(r.root, r.path)) for r in picks)])
    assert result.exit_code == 0, result.output
    answers = json.loads(result.output)
    correct = sum(a["prediction"] == r.label for a, r in zip(answers, picks, strict=True))
    assert correct >= 0.85 * len(picks), [(a["prediction"], r.label) for a, r in zip(answers, picks, strict=True)]


def test_cli_predict_refuses_a_missing_or_broken_file(tmp_path: Path) -> None:
    missing, bad = tmp_path / "none.jpg", tmp_path / "bad.jpg"
    bad.write_text("not an image")
    result = CliRunner().invoke(app, ["predict", str(missing)])
    assert isinstance(result.exception, PlantdxError) and result.exit_code != 0
    assert str(result.exception) == f"image not found: {missing}"
    result = CliRunner().invoke(app, ["predict", str(bad)])
    assert isinstance(result.exception, PlantdxError) and result.exit_code != 0
    assert str(result.exception).startswith(f"cannot read {bad} as an image")


@pytest.mark.realdata
@pytest.mark.slow
def test_training_and_serving_preprocessing_agree_on_real_images(real_data: Path) -> None:
    """The albumentations eval transform (training) and the bundle's numpy+PIL path (serving) give the same
    tensors on real photos, and the shipped graph gives the same answers on both (PyTorch against ONNX Runtime is
    the export's parity check, in the card)."""
    import torch

    from plantdx.data.datamodule import PlantDataModule

    predictor = Predictor(BUNDLE, threads=2)
    spec = predictor.spec
    cfg = DatasetConfig(
        root=real_data,
        image_size=spec["crop"],
        resize=spec["resize"],
        interpolation=spec["interpolation"],
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
        cache_images=False,
    )
    manifest = manifest_for(cfg)
    rows = manifest.split("test")[::12]  # ~70 images, every class
    dataset = PlantDataModule(cfg, manifest).dataset("test")
    positions = {r.path: i for i, r in enumerate(manifest.split("test"))}
    training = torch.stack([dataset[positions[r.path]][0] for r in rows]).numpy()
    serving = np.stack([predictor.preprocess(load_rgb(real_data / r.path)) for r in rows])
    np.testing.assert_allclose(training, serving, atol=1e-5)

    onnx_logits = predictor.logits(serving)
    assert (predictor.logits(training).argmax(1) == onnx_logits.argmax(1)).all()


def test_cli_explain_lays_the_map_over_the_model_view(tmp_path: Path) -> None:
    photo = tmp_path / "leaf.png"
    make_leaf("Tomato___Early_blight", 7, size=300).save(photo)
    out = tmp_path / "heat.png"
    result = CliRunner().invoke(app, ["explain", str(photo), "-o", str(out)])
    assert result.exit_code == 0, result.output
    predictor = Predictor(default_bundle_path())
    prediction, png = predictor.explain(photo)
    assert prediction.label in result.output
    base = Image.fromarray(model_view(load_rgb(photo), predictor.spec)).convert("RGBA")
    expected = Image.alpha_composite(base, Image.open(io.BytesIO(png))).convert("RGB")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected))
