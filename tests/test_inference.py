"""The Predictor: a bundle, ONNX Runtime, numpy and PIL; no torch."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_leaf
from plantdx.bundle import write_card
from plantdx.export import ExportResult
from plantdx.inference import Predictor
from plantdx.scores import softmax


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys, plantdx.inference, plantdx.bundle, plantdx.images, plantdx.serve.app, plantdx.serve.tasks, "
        "plantdx.serve.prediction_log, plantdx.monitor.drift, plantdx.cli; "
        "heavy = [m for m in ('torch', 'lightning', 'timm', 'torchvision', 'albumentations', 'mlflow') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_predictions_are_well_formed(exported: ExportResult) -> None:
    predictor = Predictor(exported.bundle, top_k=2)
    image = make_leaf("Crop___Spot", 12345)
    buf = io.BytesIO()
    image.save(buf, format="JPEG")
    by_image, by_bytes = predictor.predict_one(image), predictor.predict_one(buf.getvalue())
    for p in (by_image, by_bytes):
        assert p.label in predictor.labels
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
        assert [lbl for lbl, _ in p.top_k][0] == p.label and len(p.top_k) == 2
        assert p.top_k[0][1] >= p.top_k[1][1]
        assert p.confidence == pytest.approx(p.probabilities[p.label])
    # Modes that are not RGB are converted, not refused.
    assert predictor.predict_one(image.convert("L")).label in predictor.labels
    assert predictor.predict_one(image.convert("RGBA")).label in predictor.labels
    assert predictor.predict([]) == []


@pytest.mark.slow
def test_temperature_and_abstention_come_from_the_bundle(exported: ExportResult, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(exported.bundle, tmp_path / "b"))
    card = json.loads((copy / "card.json").read_text())
    card.pop("files")
    (copy / "calibration.json").write_text(json.dumps({"temperature": 2.0, "abstain_threshold": 0.999}))
    write_card(copy, card)
    predictor = Predictor(copy)
    pred = predictor.predict_one(make_leaf("Crop___Blight", 7))
    assert pred.abstained and pred.reason is not None and "below the abstain threshold" in pred.reason
    expected = softmax(np.array([pred.logits]), 2.0)[0]
    assert pred.confidence == pytest.approx(float(expected.max()))


def test_softmax_rows_sum_to_one() -> None:
    p = softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]))
    assert np.allclose(p.sum(axis=1), 1.0) and np.allclose(p[1], 1 / 3)


def test_labels_that_do_not_fit_the_model_are_refused(exported: ExportResult, tmp_path: Path) -> None:
    """One label short: refused when loaded, so a service never reports ready and then fails every request."""
    from plantdx.bundle import BundleError

    copy = Path(shutil.copytree(exported.bundle, tmp_path / "b"))
    card = json.loads((copy / "card.json").read_text())
    card.pop("files")
    labels = json.loads((copy / "labels.json").read_text())
    (copy / "labels.json").write_text(json.dumps(labels[:-1]))
    write_card(copy, card)
    with pytest.raises(BundleError, match=f"gives {len(labels)} logits but labels.json names {len(labels) - 1}"):
        Predictor(copy)
