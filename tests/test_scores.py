from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
)

from plantdx.scores import compute_report, expected_calibration_error, softmax, write_report_artifacts

CLASSES = ["a", "b", "c"]


def one_hot_logits(preds: list[int], k: int = 3, scale: float = 10.0) -> np.ndarray:
    return np.eye(k)[preds] * scale


def test_known_predictions_give_known_scores() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    preds = [0, 0, 0, 1, 1, 1, 2, 0]
    report = compute_report(one_hot_logits(preds), labels, CLASSES)
    assert report.accuracy == pytest.approx(6 / 8)
    assert report.confusion == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    a, b, c = (report.per_class[x] for x in CLASSES)
    assert (a.precision, a.recall, a.support) == (pytest.approx(3 / 4), pytest.approx(3 / 4), 4)
    assert (b.precision, b.recall) == (pytest.approx(2 / 3), pytest.approx(1.0))
    assert (c.precision, c.recall) == (pytest.approx(1.0), pytest.approx(0.5))
    assert b.f1 == pytest.approx(0.8)
    assert report.f1_macro == pytest.approx((0.75 + 0.8 + 2 / 3) / 3)


def test_scores_agree_with_torchmetrics_on_random_logits() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (500, 5))
    labels = rng.integers(0, 5, 500)
    report = compute_report(logits, labels, list("abcde"))
    t_logits, t_labels = torch.tensor(logits), torch.tensor(labels)
    assert report.accuracy == pytest.approx(float(multiclass_accuracy(t_logits, t_labels, 5, average="micro")))
    assert report.f1_macro == pytest.approx(float(multiclass_f1_score(t_logits, t_labels, 5, average="macro")))
    ece = float(multiclass_calibration_error(t_logits.softmax(1), t_labels, 5, n_bins=15, norm="l1"))
    assert report.ece == pytest.approx(ece, abs=1e-6)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident() -> None:
    # 10 predictions at confidence 0.8, 8 right: calibrated.
    probs = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    overconfident = np.tile([0.99, 0.01], (10, 1))
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.19)


def test_softmax_with_temperature() -> None:
    p = softmax(np.array([[2.0, 0.0]]), temperature=2.0)
    assert p[0, 0] == pytest.approx(np.exp(1) / (np.exp(1) + 1))
    assert np.allclose(softmax(np.array([[1000.0, 0.0]])).sum(), 1.0)


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        compute_report(np.zeros((4, 3)), np.zeros(5, dtype=int), CLASSES)


def test_artifacts_are_written(tmp_path: Path) -> None:
    labels = np.array([0, 1, 2, 2])
    logits = one_hot_logits([0, 1, 2, 1])
    report = compute_report(logits, labels, CLASSES)
    files = write_report_artifacts(report, logits, labels, tmp_path, prefix="test")
    names = {p.name for p in files}
    assert {"test_confusion_matrix.png", "test_reliability.png", "test_per_class.json"} <= names
    assert all(p.stat().st_size > 0 for p in files)
    assert (tmp_path / "test_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    per_class = json.loads((tmp_path / "test_per_class.json").read_text())
    assert per_class["c"]["recall"] == 0.5
    assert "macro F1" in (tmp_path / "test_classification_report.txt").read_text()
