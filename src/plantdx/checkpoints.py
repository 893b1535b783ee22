"""A trained checkpoint with the split it was trained on, as evaluation and export need it; and its logits.

``load_trained`` finds the checkpoint (a file, or the best one of an MLflow run), the run's own manifest and the
preprocessing it trained with, so what is scored or exported is what was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from plantdx.config import DatasetConfig, Settings, describe_validation_error
from plantdx.data.split import Manifest, manifest_for, read_manifest
from plantdx.errors import PlantdxError, TrackingError
from plantdx.model import PlantClassifier, load_checkpoint

RUN_FILE = "run.json"  # in the run folder: the MLflow run id, the settings and the time trained, for --resume


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
    # The settings' dataset, with the preprocessing the model was trained with, whether it was a refit
    # (``train_on_val``: its validation images are no longer unseen) and the share of training images it saw.
    dataset: DatasetConfig
    git_commit: str | None = None  # the commit that trained it, where the run recorded one


def _recorded_settings(checkpoint: Path, run_params: dict[str, str] | None) -> dict[str, str] | None:
    """The settings the run behind a checkpoint was started with: its MLflow params, else its run.json (whose
    commit is given as ``git.commit``, the MLflow param's name)."""
    if run_params is not None:
        return run_params
    record = checkpoint.resolve().parent.parent / RUN_FILE
    if record.is_file():
        info = json.loads(record.read_text())
        return dict(info.get("settings", {})) | ({"git.commit": info["git_commit"]} if "git_commit" in info else {})
    return None


def _as_trained(settings: Settings, module: PlantClassifier, recorded: dict[str, str] | None) -> dict[str, Any]:
    """What decides which images the run learnt from: a refit (the checkpoint says so since it was recorded
    there, else the run's settings; a run from before refits existed was not one) and its share of each class."""
    if module.hparams.get("trained_on_val") is not None:
        on_val = bool(module.hparams["trained_on_val"])
    elif recorded is not None:
        on_val = recorded.get("dataset.train_on_val") == "True"
    else:
        on_val = settings.dataset.train_on_val
    out: dict[str, Any] = {"train_on_val": on_val}
    if module.hparams.get("domain_train_fraction"):
        out["domain_train_fraction"] = dict(module.hparams["domain_train_fraction"])
    if module.hparams.get("train_fraction") is not None:
        out["train_fraction"] = float(module.hparams["train_fraction"])
        out["seed"] = int(module.hparams["data_seed"])  # the fraction's draw depends on it
    elif recorded is not None:  # a run from before train_fraction existed learnt from all of them
        out["train_fraction"] = float(recorded.get("dataset.train_fraction", 1.0))
        if "dataset.seed" in recorded:
            out["seed"] = int(recorded["dataset.seed"])
    return out


def load_trained(settings: Settings, *, checkpoint: Path | None = None, run_id: str | None = None) -> TrainedModel:
    """A checkpoint and the split it was trained on: from an MLflow run (its own manifest) or a file.

    With a bare checkpoint file the split comes from the settings, so ``dataset.seed`` must match the run's.
    """
    if (checkpoint is None) == (run_id is None):
        raise PlantdxError("give exactly one of a checkpoint path or an MLflow run id")
    manifest = None
    trained_preprocess: dict[str, Any] | None = None
    run_params: dict[str, str] | None = None
    if run_id is not None:
        import mlflow

        try:
            folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=settings.tracking.uri))
        except Exception as exc:
            raise TrackingError(
                f"cannot fetch the artifacts of run {run_id} from {settings.tracking.uri}: {exc}"
            ) from None
        run_params = dict(mlflow.MlflowClient(settings.tracking.uri).get_run(run_id).data.params)
        found = sorted((folder / "checkpoints").glob("*.ckpt"))
        if not found:
            raise TrackingError(f"run {run_id} logged no checkpoint")
        checkpoint = next((p for p in found if p.name == "best.ckpt"), found[0])
        if (folder / "manifest.csv").is_file():
            manifest = read_manifest(folder / "manifest.csv")
        if (folder / "preprocess.json").is_file():
            trained_preprocess = json.loads((folder / "preprocess.json").read_text())
    assert checkpoint is not None
    module = load_checkpoint(checkpoint)
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
    # Export and evaluation must see images as training did, whatever -c/--set say now: the run's own
    # preprocess.json decides resize, interpolation and normalisation; a bare checkpoint keeps the settings'.
    recorded = _recorded_settings(checkpoint, run_params)
    update: dict[str, Any] = {"image_size": int(module.hparams["image_size"])} | _as_trained(settings, module, recorded)
    if trained_preprocess is not None:
        update |= {k: trained_preprocess[k] for k in ("resize", "interpolation") if k in trained_preprocess}
        update |= {k: tuple(trained_preprocess[k]) for k in ("mean", "std") if k in trained_preprocess}
    try:
        dataset = DatasetConfig.model_validate(settings.dataset.model_dump() | update)
    except ValidationError as exc:  # e.g. the settings' dataset.resize is below the checkpoint's image size
        raise PlantdxError(
            f"the checkpoint's preprocessing does not fit the settings: {describe_validation_error(exc)}"
        ) from None
    commit = (recorded or {}).get("git.commit")
    return TrainedModel(module.eval(), manifest, checkpoint, run_id, dataset, commit if commit != "unknown" else None)
