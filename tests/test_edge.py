"""The edge model (``model.edge.onnx``): the service's answer, from the centre crop, inside one ONNX graph.

Checked photo by photo against ``Predictor`` (what the service runs): the whole test split of the bundled model,
photos that are not leaves, blank photos, and a bundle with a "not a leaf" class, so every abstain reason is met."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from plantdx.bundle import EDGE_FILE, load_bundle, write_card
from plantdx.config import DatasetConfig
from plantdx.edge import (
    REASONS,
    EdgeError,
    build_edge_graph,
    dataset_of,
    edge_parity,
    run_edge,
    split_crops,
    write_edge_model,
)
from plantdx.export import ExportResult
from plantdx.images import load_rgb, model_view
from plantdx.inference import Predictor, create_session, default_bundle_path


def odd_crops(size: int, n: int = 24, seed: int = 0) -> np.ndarray:
    """Blank, dark, bright and noisy crops: what makes a model abstain for each of its reasons."""
    rng = np.random.default_rng(seed)
    crops = [np.full((size, size, 3), v, np.uint8) for v in (0, 128, 255)]
    crops += [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n - 3)]
    return np.stack(crops)


@pytest.mark.realdata
@pytest.mark.slow
def test_the_bundled_edge_model_answers_as_the_service_on_every_test_photo(
    real_data: Path, bundled_split: tuple[DatasetConfig, Any]
) -> None:
    bundle = load_bundle(default_bundle_path())
    assert bundle.edge_path is not None, "plantdx export --edge-only src/plantdx/default_bundle"
    crops, truth = split_crops(bundle, dataset_of(bundle, bundled_split[0]))
    parity = edge_parity(bundle, bundle.edge_path, crops, truth)
    assert parity.n == len(crops) >= 200
    # fp32 weights agree on every photo; fp16 or int8 ones (a larger model) as far as export demanded
    exact = bundle.card["edge"]["weights"] == "fp32"
    assert parity.top1_agreement >= (1.0 if exact else 0.995) and parity.abstain_agreement >= (1.0 if exact else 0.99)
    assert parity.max_abs_dp < (1e-5 if exact else 0.05)
    assert parity.accuracy is not None and abs(parity.accuracy - (parity.service_accuracy or 0)) <= 0.01
    # photos that are not leaves and blank ones: the out-of-distribution and contrast reasons, as the service says
    nonleaf = sorted(p for p in (real_data.parent / "nonleaf").rglob("*.jpg"))[::25][:40]
    resize = int(bundle.preprocess["resize"])
    others = [model_view(load_rgb(p, resize), bundle.preprocess) for p in nonleaf]
    crop = int(bundle.preprocess["crop"])
    others_parity = edge_parity(bundle, bundle.edge_path, np.concatenate([np.stack(others), odd_crops(crop)]))
    assert others_parity.abstain_agreement >= (1.0 if exact else 0.99)
    answers = run_edge(create_session(bundle.edge_path), odd_crops(crop)[:3])
    assert [REASONS[a.reason] for a in answers] == ["uniform"] * 3


@pytest.mark.slow
def test_the_bundled_edge_model_is_the_one_this_code_builds() -> None:
    """model.edge.onnx in the package is rebuilt from model.onnx and calibration.json byte for byte: a change to
    either, or to plantdx.edge, without `plantdx export --edge-only src/plantdx/default_bundle` fails here."""
    bundle = load_bundle(default_bundle_path())
    weights = bundle.card["edge"]["weights"]
    assert build_edge_graph(bundle, weights).SerializeToString() == bundle.edge_path.read_bytes()  # type: ignore[union-attr]


@pytest.mark.slow
def test_every_weight_format_keeps_the_tiny_model_s_answers(exported: ExportResult) -> None:
    bundle = load_bundle(exported.bundle)
    assert bundle.edge_path is not None and bundle.card["edge"]["parity_with_service"]["top1_agreement"] == 1.0
    crops = odd_crops(int(bundle.preprocess["crop"]))
    for weights in ("fp32", "fp16", "int8"):
        path = exported.bundle.parent / f"edge-{weights}.onnx"
        onnx.save(build_edge_graph(bundle, weights), str(path))
        parity = edge_parity(bundle, path, crops)
        assert parity.top1_agreement == 1.0 and parity.reason_agreement == 1.0, (weights, parity)
        assert parity.max_abs_dp < {"fp32": 1e-5, "fp16": 0.01, "int8": 0.05}[weights], (weights, parity)


@pytest.mark.slow
def test_a_not_a_leaf_class_is_a_reason_and_never_the_answer(exported: ExportResult, tmp_path: Path) -> None:
    """A bundle whose model learnt "not a leaf" as a class: the edge graph abstains on it and answers the most
    likely other class, as Predictor does."""
    folder = tmp_path / "reject"
    shutil.copytree(exported.bundle, folder)
    calibration = json.loads((folder / "calibration.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    calibration |= {"reject_label": labels[0], "reject_threshold": 0.3}
    (folder / "calibration.json").write_text(json.dumps(calibration))
    write_card(folder, {k: v for k, v in exported.card.items() if k != "files"})
    bundle = load_bundle(folder)
    onnx.save(build_edge_graph(bundle), str(tmp_path / "edge.onnx"))
    plain = [np.asarray(Image.new("RGB", (32, 32), c)) for c in ((150, 90, 40), (60, 140, 60), (40, 170, 90))]
    crops = np.concatenate([odd_crops(32, 40, seed=1), np.stack(plain)])
    parity = edge_parity(bundle, tmp_path / "edge.onnx", crops)
    assert parity.top1_agreement == 1.0 and parity.reason_agreement == 1.0
    answers = run_edge(create_session(tmp_path / "edge.onnx"), crops)
    assert all(a.label != 0 for a in answers)
    assert {REASONS[a.reason] for a in answers} >= {"not_a_leaf", "uniform"}
    served = Predictor(bundle).predict([Image.fromarray(c) for c in crops])
    assert [d.label for d in served] == [bundle.labels[a.label] for a in answers]


@pytest.mark.slow
def test_over_budget_the_smallest_agreeing_model_is_kept_and_the_card_says_so(
    exported: ExportResult, tmp_path: Path
) -> None:
    folder = tmp_path / "bundle"
    shutil.copytree(exported.bundle, folder)
    crops = odd_crops(32)
    result = write_edge_model(folder, budget_bytes=1, test_crops=lambda _: (crops, [None] * len(crops)))
    card = load_bundle(folder).card
    tried = card["edge"]["tried"]
    assert [t["weights"] for t in tried] == ["fp32", "fp16", "int8"] and card["edge"]["within_budget"] is False
    chosen = next(t for t in tried if t["weights"] == result.weights)
    assert chosen["agrees"] is True
    assert all(t["agrees"] is False for t in tried if t["gzip_bytes"] < chosen["gzip_bytes"])  # smaller ones do not
    assert card["files"][EDGE_FILE]  # listed, so the bundle still verifies
    with pytest.raises(EdgeError, match="weights must be one of"):
        build_edge_graph(load_bundle(folder), "int4")


@pytest.mark.slow
def test_a_test_split_other_than_the_card_s_is_refused(exported: ExportResult, tiny_dataset: Path) -> None:
    bundle = load_bundle(exported.bundle)
    other = DatasetConfig(root=tiny_dataset, seed=7, max_per_class=None, min_images_per_class=3)
    with pytest.raises(EdgeError, match="not the one the bundle was scored on"):
        split_crops(bundle, other)
