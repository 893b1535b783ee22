"""``train(settings) -> TrainResult``: one Lightning run, tracked in MLflow, scored on the held-out split."""

from __future__ import annotations

import json
import os
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
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import MLFlowLogger

from plantdx.checkpoints import RUN_FILE, predict_logits
from plantdx.config import Settings, TrainConfig
from plantdx.data.datamodule import PlantDataModule, training_rows
from plantdx.data.split import Manifest, manifest_for, write_manifest
from plantdx.data.transforms import preprocess_spec
from plantdx.errors import PlantdxError
from plantdx.model import BackboneFreeze, PlantClassifier
from plantdx.scores import EvalReport, compute_report, domain_reports, write_report_artifacts
from plantdx.tracking import git_commit, local_artifact_uri, metric_name

MONITOR = "val/f1_macro"
_STAMP_ENV = "PLANTDX_RUN_STAMP"  # shared by the processes of one DDP run so they agree on the run folder
# Settings that may differ on resume: they change how fast a run goes, not what it learns; or, for the data's
# location, are checked by content instead (the checkpoint's data hash must match the manifest's).
_RESUME_FREE = frozenset(
    {
        "train.progress_bar",
        "train.threads",
        "train.log_every_n_steps",
        "dataset.num_workers",
        "dataset.cache_images",
        "dataset.root",
        "dataset.manifest",
    }
)


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
    test_by_domain: dict[str, EvalReport] = field(default_factory=dict)  # when the test split has several domains


def resolve_precision(cfg: TrainConfig) -> str:
    """``auto``: fp32 on CPU (bf16-mixed measured slower than fp32 on the 2-core CPU this was built on, which has
    AVX-512 BF16 but no AMX), 16-mixed on CUDA."""
    if cfg.precision != "auto":
        return cfg.precision
    on_gpu = cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())
    return "16-mixed" if on_gpu else "32-true"


def create_logger(settings: Settings, run_name: str, run_id: str | None = None) -> MLFlowLogger:
    tracking = settings.tracking
    return MLFlowLogger(
        experiment_name=tracking.experiment,
        run_name=tracking.run_name or run_name,
        tracking_uri=tracking.uri,
        artifact_location=local_artifact_uri(tracking),
        log_model=False,
        run_id=run_id,
    )


@dataclass(frozen=True)
class ResumePoint:
    run_dir: Path
    checkpoint: Path
    run_id: str
    trained_s: float
    data_hash: str | None  # None in run.json files written before it was recorded


def _learning_settings(settings: Settings) -> dict[str, str]:
    flat = settings.flat()
    return {
        k: str(v) for k, v in flat.items() if k.startswith(("dataset.", "model.", "train.")) and k not in _RESUME_FREE
    }


def resume_point(path: Path, settings: Settings) -> ResumePoint:
    """Where an interrupted run stopped: its folder (``last.ckpt``) or one checkpoint in it.

    Refuses when the settings that shape learning differ from the interrupted run's: a one-cycle schedule resumed
    with another ``max_epochs``, or another image size, would silently train something else.
    """
    checkpoint = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
    if not checkpoint.is_file():
        raise PlantdxError(f"nothing to resume: {checkpoint} does not exist")
    run_dir = checkpoint.resolve().parent.parent
    info_path = run_dir / RUN_FILE
    if not info_path.is_file():
        raise PlantdxError(f"{run_dir} has no {RUN_FILE}, so it was not started by this version of plantdx train")
    info = json.loads(info_path.read_text())
    now = _learning_settings(settings)
    # A setting added to plantdx after the run started (train.ema_decay, ...) did what its default does now.
    saved: dict[str, str] = info.get("settings", {})
    defaults = {
        k: v for k, v in _learning_settings(Settings()).items() if not any(s.startswith(k + ".") for s in saved)
    }
    recorded = defaults | saved
    then = {k: v for k, v in recorded.items() if k not in _RESUME_FREE}
    changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {then.get(k)} -> {now.get(k)}" for k in changed[:6])
        raise PlantdxError(f"cannot resume {run_dir.name} with different settings ({diffs}); use the run's config")
    return ResumePoint(
        run_dir, checkpoint, str(info["run_id"]), float(info.get("trained_s", 0.0)), info.get("data_hash")
    )


class RunRecord(Callback):
    """Keeps ``run.json`` current after every epoch, so a resumed run knows how long the earlier part took."""

    def __init__(self, path: Path, record: dict[str, Any], trained_before_s: float, started: float) -> None:
        self.path, self.record, self.before, self.started = path, record, trained_before_s, started

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.started

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**self.record, "trained_s": round(self.elapsed(), 1)}, indent=2))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: ARG002
        if trainer.is_global_zero:
            self.write()


def _callbacks(settings: Settings, ckpt_dir: Path) -> tuple[ModelCheckpoint, list[Callback]]:
    """The checkpoint that will be kept, and every callback. A refit (``dataset.train_on_val``) has trained on the
    validation images, so nothing may choose or stop by them: it runs its schedule out and keeps the last epoch."""
    cfg = settings.train
    # last.ckpt after every epoch, for --resume: ``save_last=True`` only copies when a new best is saved, which
    # left a run killed at epoch 69 with a last.ckpt from epoch 41.
    latest = ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )
    callbacks: list[Callback] = [latest, LearningRateMonitor(logging_interval="epoch")]
    checkpoint = latest
    if not settings.dataset.train_on_val:
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1)
        callbacks += [checkpoint, EarlyStopping(monitor=MONITOR, mode="max", patience=cfg.early_stopping_patience)]
    if cfg.ema_decay is not None:
        # Validation, and so best.ckpt and the exported model, see the averaged weights; last.ckpt keeps both.
        callbacks.append(EMAWeightAveraging(decay=cfg.ema_decay))
    if cfg.progress_bar:
        callbacks.append(RichProgressBar())
    if settings.model.freeze_backbone_epochs > 0:
        callbacks.append(BackboneFreeze(unfreeze_at_epoch=settings.model.freeze_backbone_epochs))
    return checkpoint, callbacks


def train(settings: Settings, resume: Path | None = None) -> TrainResult:
    """Split (or read the manifest), fit, keep the best checkpoint by val macro-F1, score it on the test split.

    ``resume``: a run folder (or a checkpoint in one) of an interrupted run; training goes on from its
    ``last.ckpt`` with the optimiser, schedule and callbacks as they were, into the same folder and MLflow run.
    """
    cfg = settings.train
    started = time.perf_counter()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)

    point = resume_point(resume, settings) if resume is not None else None
    if point is not None:
        stamp = point.run_dir.name.removeprefix(f"{settings.model.name}-")
    elif "LOCAL_RANK" in os.environ and _STAMP_ENV in os.environ:  # a DDP child: use the launcher's run folder
        stamp = os.environ[_STAMP_ENV]
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
    os.environ[_STAMP_ENV] = stamp  # inherited by the DDP processes Lightning launches
    run_name = f"{settings.model.name}-{stamp}"
    run_dir = point.run_dir if point is not None else (cfg.output_dir / run_name).resolve()

    manifest = manifest_for(settings.dataset)
    if point is not None and point.data_hash not in (None, manifest.digest):
        raise PlantdxError(f"cannot resume {run_name}: it was trained on other data (manifest {point.data_hash})")
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
        mixup_alpha=cfg.mixup_alpha,
        cutmix_alpha=cfg.cutmix_alpha,
        mix_prob=cfg.mix_prob,
        scheduler=cfg.scheduler,
        warmup_epochs=cfg.warmup_epochs,
        class_weights=weights,
        data_hash=manifest.digest,
        trained_on_val=settings.dataset.train_on_val,
        train_fraction=settings.dataset.train_fraction,
        domain_train_fraction=settings.dataset.domain_train_fraction or None,
        data_seed=settings.dataset.seed,
    )

    logger = create_logger(settings, run_name, run_id=point.run_id if point else None)
    checkpoint, callbacks = _callbacks(settings, run_dir / "checkpoints")
    record = RunRecord(
        run_dir / RUN_FILE,
        {
            "run_id": logger.run_id,
            "run_name": run_name,
            "data_hash": manifest.digest,
            "git_commit": git_commit(),
            "settings": _learning_settings(settings),
        },
        point.trained_s if point else 0.0,
        started,
    )
    callbacks.append(record)
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
    if point is None:
        if trainer.is_global_zero:
            record.write()
        _log_hyperparams(logger, settings, manifest, n_params, module)
    trainer.fit(module, datamodule=datamodule, ckpt_path=point.checkpoint if point else None)

    last = run_dir / "checkpoints" / "last.ckpt"
    best = Path(checkpoint.best_model_path or last)  # a refit's ``checkpoint`` is the last one (see _callbacks)
    # The best weights go back into the module that trained: rebuilding it would fetch pretrained weights again
    # and log different hyper-parameters to the same MLflow run (which MLflow refuses).
    state = torch.load(best, map_location=module.device, weights_only=False)["state_dict"]
    module.load_state_dict(state)
    best_module = module
    trainer.test(best_module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    report: EvalReport | None = None
    by_domain: dict[str, EvalReport] = {}
    if trainer.is_global_zero:
        logits, labels = predict_logits(best_module, datamodule.test_dataloader())
        report = compute_report(logits, labels, manifest.classes)
        domains = [r.domain for r in datamodule.rows("test")]
        by_domain = domain_reports(logits, labels, domains, manifest.classes) if len(set(domains)) > 1 else {}
        _log_run_artifacts(settings, logger, run_dir, best, manifest, report, logits, labels)
        for domain, scored in by_domain.items():  # lab and field apart: together they hide the field's errors
            for name in ("acc", "f1_macro"):
                value = scored.metrics(prefix=f"test/{domain}/")[f"test/{domain}/{name}"]
                logger.experiment.log_metric(logger.run_id, metric_name(f"test/{domain}/{name}"), value)
    wall = record.elapsed()
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
        test_by_domain=by_domain,
    )


def _log_hyperparams(
    logger: MLFlowLogger, settings: Settings, manifest: Manifest, n_params: int, module: PlantClassifier
) -> None:
    logger.log_hyperparams(
        {
            **settings.flat(),
            "params.total": n_params,
            "params.trainable": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
            "data.manifest_sha256": manifest.digest,
            "data.images": len(manifest.rows),
            "data.train_images": len(training_rows(settings.dataset, manifest)),
            "git.commit": git_commit(),
            "precision.resolved": resolve_precision(settings.train),
        }
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
