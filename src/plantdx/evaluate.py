"""``evaluate``: score a trained checkpoint on a split of its own manifest, and record it as an MLflow run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from plantdx.errors import PlantdxError
from plantdx.scores import EvalReport, compute_report, domain_reports, write_report_artifacts

if TYPE_CHECKING:
    from plantdx.config import Settings


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

    from plantdx.checkpoints import load_trained, predict_logits
    from plantdx.data.datamodule import PlantDataModule

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
    domains = [r.domain for r in datamodule.rows(split)]  # type: ignore[arg-type]
    by_domain = domain_reports(logits, labels, domains, manifest.classes) if len(set(domains)) > 1 else {}
    out = output_dir or checkpoint.parent / f"evaluation-{split}"
    files = write_report_artifacts(report, logits, labels, out, prefix=split)
    domain_of = np.asarray(domains)
    for domain, scored in by_domain.items():
        mask = domain_of == domain
        files += write_report_artifacts(scored, logits[mask], labels[mask], out, prefix=f"{split}_{domain}")
    eval_run_id = None
    if log_to_mlflow:
        metrics = report.metrics(f"{split}/")
        for domain, scored in by_domain.items():
            metrics |= scored.metrics(f"{split}/{domain}/")
        eval_run_id = _log_evaluation(settings, metrics, files, split, checkpoint, run_id, manifest.digest)
    return EvaluationResult(
        report=report, checkpoint=checkpoint, artifacts=files, mlflow_run_id=eval_run_id, by_domain=by_domain
    )


def _log_evaluation(
    settings: Settings,
    metrics: dict[str, float],
    files: list[Path],
    split: str,
    checkpoint: Path,
    source_run: str | None,
    data_hash: str,
) -> str:
    """An MLflow run of its own (kind=evaluation) that points back at the run it scored."""
    from mlflow import MlflowClient

    from plantdx.tracking import experiment_id, metric_name

    client = MlflowClient(settings.tracking.uri)
    run = client.create_run(experiment_id(client, settings.tracking), run_name=f"evaluate-{split}")
    run_id = str(run.info.run_id)
    for key, value in {
        "plantdx.kind": "evaluation",
        "plantdx.source_run": source_run or "",
        "plantdx.split": split,
    }.items():
        client.set_tag(run_id, key, value)
    client.log_param(run_id, "checkpoint", str(checkpoint))
    client.log_param(run_id, "data.manifest_sha256", data_hash)
    for name, score in metrics.items():
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
    by_domain: dict[str, EvalReport] = field(default_factory=dict)  # lab, field, ... when the split has several
