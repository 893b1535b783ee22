"""``train(settings) -> TrainResult``: one Lightning run, tracked in MLflow, scored on the held-out split."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import MLFlowLogger

from plantdx.config import Settings, TrackingConfig, TrainConfig
from plantdx.data.datamodule import PlantDataModule
from plantdx.data.split import Manifest, manifest_for, read_manifest, write_manifest
from plantdx.data.transforms import preprocess_spec
from plantdx.errors import PlantdxError, TrackingError
from plantdx.evaluate import EvalReport, compute_report, write_report_artifacts
from plantdx.model import BackboneFreeze, PlantClassifier

MONITOR = "val/f1_macro"
_STAMP_ENV = "PLANTDX_RUN_STAMP"  # shared by the processes of one DDP run so they agree on the run folder


@dataclass
class TrainResult:
    run_id: str | None
    tracking_uri: str
    run_dir: Path
    best_checkpoint: Path
    classes: list[str]
    data_hash: str
    wall_time_s: float
    test: EvalReport | None
    metrics: dict[str, float] = field(default_factory=dict)


def metric_name(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / `` and space: PlantVillage's ``Corn_(maize)`` or
    ``Pepper,_bell`` do not pass as they are."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def resolve_precision(cfg: TrainConfig) -> str:
    """``auto``: fp32 on CPU (bf16-mixed measured slower than fp32 on the 2-core CPU this was built on, which has
    AVX-512 BF16 but no AMX), 16-mixed on CUDA."""
    if cfg.precision != "auto":
        return cfg.precision
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if on_gpu else "32-true"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def local_artifact_uri(tracking: TrackingConfig) -> str | None:
    """Artifact root for new experiments on an embedded store; a server chooses its own."""
    if tracking.artifact_location is None or tracking.uri.startswith(("http://", "https://", "databricks")):
        return None
    if "://" in tracking.artifact_location:
        return tracking.artifact_location
    return Path(tracking.artifact_location).resolve().as_uri()


def create_logger(settings: Settings, run_name: str) -> MLFlowLogger:
    tracking = settings.tracking
    return MLFlowLogger(
        experiment_name=tracking.experiment,
        run_name=tracking.run_name or run_name,
        tracking_uri=tracking.uri,
        artifact_location=local_artifact_uri(tracking),
        log_model=False,
    )


def _callbacks(settings: Settings, ckpt_dir: Path) -> tuple[ModelCheckpoint, list[Callback]]:
    cfg = settings.train
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1, save_last=True
    )
    callbacks: list[Callback] = [
        checkpoint,
        EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.early_stopping_patience),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if cfg.progress_bar:
        callbacks.append(RichProgressBar())
    if settings.model.freeze_backbone_epochs > 0:
        callbacks.append(BackboneFreeze(unfreeze_at_epoch=settings.model.freeze_backbone_epochs))
    return checkpoint, callbacks


def predict_logits(
    module: PlantClassifier, loader: torch.utils.data.DataLoader[tuple[torch.Tensor, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Plain single-process inference: exact test scores, no distributed-sampler padding."""
    module.eval()
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in loader:
            logits.append(module(x.to(module.device)).float().cpu().numpy())
            labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


@dataclass(frozen=True)
class TrainedModel:
    module: PlantClassifier
    manifest: Manifest
    checkpoint: Path
    run_id: str | None


def load_trained(settings: Settings, *, checkpoint: Path | None = None, run_id: str | None = None) -> TrainedModel:
    """A checkpoint and the split it was trained on: from an MLflow run (its own manifest) or a file.

    With a bare checkpoint file the split comes from the settings, so ``dataset.seed`` must match the run's.
    """
    if (checkpoint is None) == (run_id is None):
        raise PlantdxError("give exactly one of a checkpoint path or an MLflow run id")
    manifest = None
    if run_id is not None:
        import mlflow

        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=settings.tracking.uri))
        except Exception as exc:
            raise TrackingError(
                f"cannot fetch the artifacts of run {run_id} from {settings.tracking.uri}: {exc}"
            ) from None
        found = sorted((folder / "checkpoints").glob("*.ckpt"))
        if not found:
            raise TrackingError(f"run {run_id} logged no checkpoint")
        checkpoint = next((p for p in found if p.name == "best.ckpt"), found[0])
        if (folder / "manifest.csv").is_file():
            manifest = read_manifest(folder / "manifest.csv")
    assert checkpoint is not None
    if not checkpoint.is_file():
        raise PlantdxError(f"checkpoint not found: {checkpoint}")
    module = PlantClassifier.load_from_checkpoint(
        checkpoint, map_location="cpu", pretrained=False, pretrained_path=None
    )
    if manifest is None:
        manifest = manifest_for(settings.dataset)
        trained_on = module.hparams.get("data_hash")
        if trained_on and trained_on != manifest.digest:
            raise PlantdxError(
                f"{checkpoint} was trained on split {trained_on[:12]} but the settings give split "
                f"{manifest.digest[:12]}: its test scores would include training images. Use --run-id, or the "
                "run's dataset settings (seed, fractions, max_per_class)"
            )
    if manifest.classes != module.class_names:
        raise PlantdxError(
            f"the checkpoint knows {len(module.class_names)} classes and the data has {len(manifest.classes)}; "
            "they must be the same, in the same order"
        )
    return TrainedModel(module.eval(), manifest, checkpoint, run_id)


def train(settings: Settings) -> TrainResult:
    """Split (or read the manifest), fit, keep the best checkpoint by val macro-F1, score it on the test split."""
    cfg = settings.train
    started = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)

    if "LOCAL_RANK" in os.environ and _STAMP_ENV in os.environ:  # a DDP child: use the launcher's run folder
        stamp = os.environ[_STAMP_ENV]
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        os.environ[_STAMP_ENV] = stamp  # inherited by the DDP processes Lightning launches
    run_name = f"{settings.model.name}-{stamp}"
    run_dir = (cfg.output_dir / run_name).resolve()

    manifest = manifest_for(settings.dataset)
    datamodule = PlantDataModule(settings.dataset, manifest)
    weights = datamodule.train_class_weights().tolist() if settings.dataset.balance == "class_weights" else None
    module = PlantClassifier(
        model_name=settings.model.name,
        class_names=manifest.classes,
        image_size=settings.dataset.image_size,
        pretrained=settings.model.pretrained,
        pretrained_path=str(settings.model.pretrained_path) if settings.model.pretrained_path else None,
        dropout=settings.model.dropout,
        width=settings.model.width,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        scheduler=cfg.scheduler,
        warmup_epochs=cfg.warmup_epochs,
        class_weights=weights,
        data_hash=manifest.digest,
    )

    logger = create_logger(settings, run_name)
    checkpoint, callbacks = _callbacks(settings, run_dir / "checkpoints")
    accelerator_is_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    trainer = L.Trainer(
        max_epochs=cfg.max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        deterministic="warn" if (cfg.deterministic and accelerator_is_gpu) else cfg.deterministic,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=run_dir,
        log_every_n_steps=cfg.log_every_n_steps,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=cfg.progress_bar,
    )
    n_params = sum(p.numel() for p in module.model.parameters())
    logger.log_hyperparams(
        {
            **settings.flat(),
            "params.total": n_params,
            "params.trainable": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
            "data.manifest_sha256": manifest.digest,
            "data.images": len(manifest.rows),
            "data.train_images": len(manifest.split("train")),
            "git.commit": git_commit(),
            "precision.resolved": resolve_precision(cfg),
        }
    )
    trainer.fit(module, datamodule=datamodule)

    best = Path(checkpoint.best_model_path or checkpoint.last_model_path)
    # The best weights go back into the module that trained: rebuilding it would fetch pretrained weights again
    # and log different hyper-parameters to the same MLflow run (which MLflow refuses).
    state = torch.load(best, map_location=module.device, weights_only=False)["state_dict"]
    module.load_state_dict(state)
    best_module = module
    trainer.test(best_module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    report: EvalReport | None = None
    if trainer.is_global_zero:
        logits, labels = predict_logits(best_module, datamodule.test_dataloader())
        report = compute_report(logits, labels, manifest.classes)
        _log_run_artifacts(settings, logger, run_dir, best, manifest, report, logits, labels)
    wall = time.perf_counter() - started
    if trainer.is_global_zero and logger.run_id is not None:
        logger.experiment.log_metric(logger.run_id, "train/wall_time_s", wall)
    return TrainResult(
        run_id=logger.run_id,
        tracking_uri=settings.tracking.uri,
        run_dir=run_dir,
        best_checkpoint=best,
        classes=manifest.classes,
        data_hash=manifest.digest,
        wall_time_s=wall,
        test=report,
        metrics=metrics,
    )


def _log_run_artifacts(
    settings: Settings,
    logger: MLFlowLogger,
    run_dir: Path,
    best: Path,
    manifest: Any,
    report: EvalReport,
    logits: np.ndarray,
    labels: np.ndarray,
) -> None:
    client, run_id = logger.experiment, logger.run_id
    for name, value in report.metrics(prefix="test/").items():
        if name.startswith(("test/f1/", "test/ece", "test/nll")):  # precision/recall per class come from torchmetrics
            client.log_metric(run_id, metric_name(name), value)
    out = run_dir / "artifacts"
    eval_files = write_report_artifacts(report, logits, labels, out / "evaluation", prefix="test")
    for path in eval_files:
        client.log_artifact(run_id, str(path), "evaluation")
    (out / "labels.json").write_text(json.dumps(manifest.classes))
    (out / "preprocess.json").write_text(json.dumps(preprocess_spec(settings.dataset), indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    write_manifest(manifest, out / "manifest.csv")
    for name in ("labels.json", "preprocess.json", "config.yaml", "manifest.csv"):
        client.log_artifact(run_id, str(out / name))
    client.log_artifact(run_id, str(best), "checkpoints")
