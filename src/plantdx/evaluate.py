"""Scores from logits: accuracy, macro-F1, per-class P/R/F1, confusion matrix, calibration.

The metrics are numpy over ``(logits, labels)``, so the same code scores a Lightning checkpoint, an ONNX bundle or
the live service's labelled feedback. Plotting imports matplotlib lazily.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from plantdx.errors import PlantdxError

if TYPE_CHECKING:
    from plantdx.config import Settings

DEFAULT_BINS = 15


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
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


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
    logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, n_bins: int = DEFAULT_BINS
) -> EvalReport:
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
    present = (support > 0) | (predicted > 0)  # as torchmetrics: a class only ever predicted wrongly counts as F1 0
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


def evaluate(
    settings: Settings,
    *,
    checkpoint: Path | None = None,
    run_id: str | None = None,
    split: str = "test",
    log_to_mlflow: bool = True,
    output_dir: Path | None = None,
) -> EvaluationResult:
    """Score a checkpoint (a file, or the best one of an MLflow run) on a split of the configured data.

    With a run id, the run's own manifest is used, so the test split is the one the run never trained on.
    """
    import torch

    from plantdx.data.datamodule import PlantDataModule
    from plantdx.train import load_trained, predict_logits

    if split not in ("train", "val", "test"):
        raise PlantdxError(f"split must be train, val or test, not {split!r}")
    trained = load_trained(settings, checkpoint=checkpoint, run_id=run_id)
    if trained.dataset.train_on_val and split == "val":
        raise PlantdxError(
            f"{run_id or checkpoint} was trained on the validation split too (dataset.train_on_val): "
            "its validation score would not be a held-out one; evaluate it on test"
        )
    module, manifest, checkpoint = trained.module, trained.manifest, trained.checkpoint
    datamodule = PlantDataModule(trained.dataset, manifest)
    loader = datamodule.eval_loader(split)  # type: ignore[arg-type]
    with torch.inference_mode():
        logits, labels = predict_logits(module, loader)
    report = compute_report(logits, labels, manifest.classes)
    out = output_dir or checkpoint.parent / f"evaluation-{split}"
    files = write_report_artifacts(report, logits, labels, out, prefix=split)
    eval_run_id = None
    if log_to_mlflow:
        eval_run_id = _log_evaluation(settings, report, files, split, checkpoint, run_id, manifest.digest)
    return EvaluationResult(report=report, checkpoint=checkpoint, artifacts=files, mlflow_run_id=eval_run_id)


def _log_evaluation(
    settings: Settings,
    report: EvalReport,
    files: list[Path],
    split: str,
    checkpoint: Path,
    source_run: str | None,
    data_hash: str,
) -> str:
    """An MLflow run of its own (kind=evaluation) that points back at the run it scored."""
    from mlflow import MlflowClient

    from plantdx.train import local_artifact_uri, metric_name

    client = MlflowClient(settings.tracking.uri)
    experiment = client.get_experiment_by_name(settings.tracking.experiment)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment(settings.tracking.experiment, local_artifact_uri(settings.tracking))
    )
    run = client.create_run(experiment_id, run_name=f"evaluate-{split}")
    run_id = str(run.info.run_id)
    for key, value in {
        "plantdx.kind": "evaluation",
        "plantdx.source_run": source_run or "",
        "plantdx.split": split,
    }.items():
        client.set_tag(run_id, key, value)
    client.log_param(run_id, "checkpoint", str(checkpoint))
    client.log_param(run_id, "data.manifest_sha256", data_hash)
    for name, score in report.metrics(f"{split}/").items():
        client.log_metric(run_id, metric_name(name), score)
    for path in files:
        client.log_artifact(run_id, str(path), "evaluation")
    client.set_terminated(run_id)
    return run_id


@dataclass(frozen=True)
class EvaluationResult:
    report: EvalReport
    checkpoint: Path
    artifacts: list[Path]
    mlflow_run_id: str | None
