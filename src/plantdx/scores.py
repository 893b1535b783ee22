"""Scores from logits: accuracy, macro-F1, per-class P/R/F1, confusion matrix, calibration, and the files a person
opens first.

numpy over ``(logits, labels)``, so the same code scores a Lightning checkpoint during training, an ONNX bundle at
export, or the live service's labelled feedback. Plotting imports matplotlib lazily.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BINS = 15


def domain_order(domain: str) -> tuple[int, str]:
    """Lab, field, a user's own domains by name, then the photos that are not leaves: how reports list them."""
    return {"lab": 0, "field": 1, "nonleaf": 3}.get(domain, 2), domain


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class EvalReport:
    classes: list[str]
    n: int
    accuracy: float
    f1_macro: float
    ece: float
    nll: float
    per_class: dict[str, ClassScores]
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def metrics(self, prefix: str = "test/") -> dict[str, float]:
        """Flat metrics for MLflow: overall and ``<prefix><kind>/<class>``."""
        out = {
            f"{prefix}acc": self.accuracy,
            f"{prefix}f1_macro": self.f1_macro,
            f"{prefix}ece": self.ece,
            f"{prefix}nll": self.nll,
        }
        for name, scores in self.per_class.items():
            for kind in ("precision", "recall", "f1"):
                out[f"{prefix}{kind}/{name}"] = getattr(scores, kind)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def classification_report(self) -> str:
        width = max(12, *(len(c) for c in self.classes))
        lines = [f"{'class':<{width}}  precision  recall     f1  support"]
        for name, s in self.per_class.items():
            lines.append(f"{name:<{width}}  {s.precision:9.4f}  {s.recall:6.4f}  {s.f1:5.4f}  {s.support:7d}")
        lines.append("")
        lines.append(f"{'accuracy':<{width}}  {self.accuracy:.4f} on {self.n} images")
        lines.append(f"{'macro F1':<{width}}  {self.f1_macro:.4f}")
        lines.append(f"{'ECE':<{width}}  {self.ece:.4f}")
        return "\n".join(lines)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64 (the last axis is the class axis)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE with equal-width confidence bins (the torchmetrics ``l1`` definition)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def compute_report(
    logits: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    n_bins: int = DEFAULT_BINS,
    macro_over: str = "seen",
) -> EvalReport:
    """``macro_over``: "seen" averages F1 over every class with support or predictions (as torchmetrics does: a
    class only ever predicted wrongly counts as 0); "truth" over the classes the labels hold, as a domain that has
    12 of the 15 classes is scored."""
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != len(classes):
        raise ValueError(f"logits {logits.shape} do not match {labels.shape[0]} labels and {len(classes)} classes")
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    cm = confusion_matrix(labels, preds, len(classes))
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0) if macro_over == "seen" else support > 0
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    return EvalReport(
        classes=list(classes),
        n=int(labels.shape[0]),
        accuracy=float(tp.sum() / max(1, labels.shape[0])),
        f1_macro=float(f1[present].mean()) if present.any() else 0.0,
        ece=expected_calibration_error(probs, labels, n_bins),
        nll=nll,
        per_class={
            c: ClassScores(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, c in enumerate(classes)
        },
        confusion=cm.tolist(),
    )


def domain_reports(
    logits: np.ndarray, labels: np.ndarray, domains: Sequence[str], classes: Sequence[str]
) -> dict[str, EvalReport]:
    """One report per domain (lab, field, nonleaf, ...), macro-F1 over the classes each one holds."""
    domain_of = np.asarray(domains)
    return {
        d: compute_report(logits[domain_of == d], labels[domain_of == d], classes, macro_over="truth")
        for d in sorted(set(domains), key=domain_order)
    }


def plot_confusion(report: EvalReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report.confusion)
    k = len(report.classes)
    fig, ax = plt.subplots(figsize=(2 + 0.6 * k, 1.5 + 0.6 * k))
    row_sums = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(cm / row_sums, cmap="Greens", vmin=0, vmax=1)
    ax.set_xticks(range(k), report.classes, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), report.classes, fontsize=7)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                color = "white" if cm[i, j] / row_sums[i, 0] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report.accuracy:.2%}, macro F1 {report.f1_macro:.3f} (n={report.n})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(logits: np.ndarray, labels: np.ndarray, path: Path, n_bins: int = DEFAULT_BINS) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = softmax(logits)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    acc = [correct[bins == b].mean() if (bins == b).any() else np.nan for b in range(n_bins)]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.bar(edges[:-1], acc, width=1 / n_bins, align="edge", edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {expected_calibration_error(probs, labels, n_bins):.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report_artifacts(
    report: EvalReport, logits: np.ndarray, labels: np.ndarray, folder: Path, prefix: str = "test"
) -> list[Path]:
    """Confusion matrix PNG, reliability PNG, per-class JSON and the text report: what a person opens first."""
    folder.mkdir(parents=True, exist_ok=True)
    per_class = folder / f"{prefix}_per_class.json"
    per_class.write_text(json.dumps({c: asdict(s) for c, s in report.per_class.items()}, indent=2))
    summary = folder / f"{prefix}_report.json"
    summary.write_text(json.dumps(report.to_json(), indent=2))
    text = folder / f"{prefix}_classification_report.txt"
    text.write_text(report.classification_report() + "\n")
    return [
        plot_confusion(report, folder / f"{prefix}_confusion_matrix.png"),
        plot_reliability(logits, labels, folder / f"{prefix}_reliability.png"),
        per_class,
        summary,
        text,
    ]
