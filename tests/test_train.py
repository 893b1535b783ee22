"""Training end to end: real images through Lightning into MLflow, and the determinism promise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from mlflow import MlflowClient

from conftest import SMOKE
from plantdx.checkpoints import load_trained
from plantdx.config import Settings, load_settings
from plantdx.data.datamodule import training_rows
from plantdx.errors import PlantdxError
from plantdx.evaluate import evaluate
from plantdx.model import create_model
from plantdx.train import train

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


@pytest.mark.realdata
def test_one_epoch_on_real_images_is_tracked_in_mlflow(real_data: Path, tracking: list[str]) -> None:
    settings = load_settings(SMOKE, [f"dataset.root={real_data}", "dataset.max_per_class=12", *tracking])
    result = train(settings)

    assert result.run_id is not None and result.test is not None
    assert len(result.classes) == 15
    client = MlflowClient(settings.tracking.uri)
    run = client.get_run(result.run_id)
    metrics = run.data.metrics
    for key in (
        "train/loss_epoch",
        "train/acc",
        "val/loss",
        "val/acc",
        "val/f1_macro",
        "test/acc",
        "test/f1_macro",
        "test/ece",
        "train/wall_time_s",
    ):
        assert key in metrics, key
    for name in result.classes:
        assert f"test/precision/{name}" in metrics and f"test/recall/{name}" in metrics
        assert f"test/f1/{name}" in metrics
    assert metrics["test/acc"] == pytest.approx(result.test.accuracy, abs=1e-6)
    assert client.get_metric_history(result.run_id, "val/acc")  # a learning curve, one point per epoch

    params = run.data.params
    assert params["data.manifest_sha256"] == result.data_hash
    assert params["model.name"] == "plant_cnn" and params["train.max_epochs"] == "1"
    assert "git.commit" in params and int(params["params.total"]) > 0

    artifacts = artifact_paths(client, result.run_id)
    assert {
        "evaluation/test_confusion_matrix.png",
        "evaluation/test_per_class.json",
        "evaluation/test_classification_report.txt",
        "evaluation/test_reliability.png",
        "labels.json",
        "preprocess.json",
        "config.yaml",
        "manifest.csv",
        "checkpoints/best.ckpt",
    } <= artifacts
    local = Path(client.download_artifacts(result.run_id, "labels.json"))
    assert json.loads(local.read_text()) == result.classes
    per_class = json.loads(Path(client.download_artifacts(result.run_id, "evaluation/test_per_class.json")).read_text())
    assert set(per_class) == set(result.classes)

    # `evaluate` on the run re-scores the same checkpoint on the run's own test split.
    scored = evaluate(settings, run_id=result.run_id, output_dir=Path(settings.train.output_dir) / "eval")
    assert scored.report.accuracy == pytest.approx(result.test.accuracy)
    assert scored.mlflow_run_id is not None
    assert "test/ece" in client.get_run(scored.mlflow_run_id).data.metrics


def _fit_twice_settings(smoke_settings: Settings, tmp_path: Path, name: str) -> Settings:
    return smoke_settings.model_copy(
        update={
            "train": smoke_settings.train.model_copy(update={"max_epochs": 2, "output_dir": tmp_path / name}),
            "tracking": smoke_settings.tracking.model_copy(update={"run_name": name}),
        }
    )


def test_same_config_gives_same_metrics_on_cpu(
    smoke_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = []
    for name in ("first", "second"):
        monkeypatch.delenv("PLANTDX_RUN_STAMP", raising=False)
        results.append(train(_fit_twice_settings(smoke_settings, tmp_path, name)))
    a, b = results
    assert a.data_hash == b.data_hash
    assert a.test is not None and b.test is not None
    assert a.test.confusion == b.test.confusion
    assert a.metrics["test/loss"] == pytest.approx(b.metrics["test/loss"], abs=1e-6)
    assert a.test.nll == pytest.approx(b.test.nll, abs=1e-6)
    assert a.run_id != b.run_id


def test_tiny_dataset_is_learnable(smoke_settings: Settings) -> None:
    """Three easily told-apart classes: a few epochs must beat chance by far (a broken loop would not)."""
    settings = smoke_settings.model_copy(
        update={"train": smoke_settings.train.model_copy(update={"max_epochs": 8, "lr": 0.01})}
    )
    result = train(settings)
    assert result.test is not None
    assert result.test.accuracy >= 0.8, result.test.classification_report()


def test_evaluate_needs_exactly_one_source(smoke_settings: Settings) -> None:
    from plantdx.errors import PlantdxError

    with pytest.raises(PlantdxError, match="exactly one"):
        evaluate(smoke_settings)
    with pytest.raises(PlantdxError, match="not found"):
        evaluate(smoke_settings, checkpoint=Path("/nonexistent.ckpt"))


def test_warm_start_from_a_previous_run(smoke_settings: Settings, tmp_path: Path) -> None:
    """``model.pretrained`` with a local checkpoint: the run starts from those weights, and says so."""
    first = train(smoke_settings)
    warm = smoke_settings.model_copy(
        update={
            "model": smoke_settings.model.model_copy(
                update={"pretrained": True, "pretrained_path": first.best_checkpoint}
            ),
            # A rate of ~0, so the weights the run ends with are the ones it started from (batch-norm statistics
            # still move; they are not parameters).
            "train": smoke_settings.train.model_copy(update={"output_dir": tmp_path / "warm", "lr": 1e-9}),
        }
    )
    result = train(warm)
    assert result.test is not None and result.run_id != first.run_id
    assert MlflowClient(warm.tracking.uri).get_run(result.run_id).data.params["model.pretrained"] == "True"

    def parameters(checkpoint: Path) -> dict[str, torch.Tensor]:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        return {k: v for k, v in state.items() if k.startswith("model.") and not k.endswith(buffers)}

    started_from = parameters(first.best_checkpoint)
    ended_with = parameters(result.run_dir / "checkpoints" / "last.ckpt")
    assert started_from.keys() == ended_with.keys()
    assert all(torch.allclose(ended_with[k], v, atol=1e-6) for k, v in started_from.items())
    classes = started_from["model.classifier.2.bias"].numel()
    fresh = {f"model.{k}": v for k, v in create_model("plant_cnn", classes, width=0.25).state_dict().items()}
    assert not all(torch.allclose(fresh[k], v, atol=1e-6) for k, v in started_from.items())  # a cold start differs


def test_with_ema_the_best_checkpoint_holds_the_averaged_weights(smoke_settings: Settings, tmp_path: Path) -> None:
    """``train.ema_decay``: validation, best.ckpt and so ``load_trained`` (export's source) see the average."""
    settings = smoke_settings.model_copy(
        update={
            "train": smoke_settings.train.model_copy(
                update={"max_epochs": 2, "ema_decay": 0.5, "output_dir": tmp_path / "ema"}
            )
        }
    )
    result = train(settings)
    last = torch.load(result.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {"current_model_state", "averaging_state"} <= last.keys()
    averaged, current = last["state_dict"], last["current_model_state"]
    assert any(not torch.equal(averaged[k], current[k]) for k in averaged if averaged[k].is_floating_point())
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)
    loaded = load_trained(settings, checkpoint=result.best_checkpoint).module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in best["state_dict"].items())
    # The checkpoint's weights are the EMA, not the raw ones that it keeps beside them.
    raw = best["current_model_state"]
    assert any(not torch.equal(v, raw[k]) for k, v in best["state_dict"].items() if v.is_floating_point())


def test_a_refit_keeps_its_last_epoch_and_cannot_be_exported(smoke_settings: Settings, tmp_path: Path) -> None:
    """``dataset.train_on_val``: validation was trained on, so neither checkpoint choice nor calibration may use it."""
    from plantdx.export import ExportError, export

    settings = smoke_settings.model_copy(
        update={
            "dataset": smoke_settings.dataset.model_copy(update={"train_on_val": True}),
            "train": smoke_settings.train.model_copy(update={"max_epochs": 2, "output_dir": tmp_path / "refit"}),
        }
    )
    result = train(settings)
    assert result.best_checkpoint == result.run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(result.best_checkpoint, map_location="cpu", weights_only=False)["epoch"] == 1
    assert not (result.run_dir / "checkpoints" / "best.ckpt").exists()  # nothing chose by validation
    manifest = load_trained(settings, run_id=result.run_id).manifest
    params = MlflowClient(settings.tracking.uri).get_run(result.run_id).data.params
    assert params["data.train_images"] == str(len(manifest.split("train")) + len(manifest.split("val")))
    # Evaluation on the test split (never trained on) works; export refuses, whether named by run or by file,
    # even with settings that no longer say train_on_val.
    scored = evaluate(settings, run_id=result.run_id, log_to_mlflow=False, output_dir=tmp_path / "eval")
    assert scored.report.n == len(manifest.split("test"))
    with pytest.raises(PlantdxError, match="not be a held-out one"):
        evaluate(settings, run_id=result.run_id, split="val", log_to_mlflow=False)
    fitted = evaluate(settings, run_id=result.run_id, split="train", log_to_mlflow=False, output_dir=tmp_path / "e2")
    assert fitted.report.n == len(manifest.split("train")) + len(manifest.split("val"))
    plain = smoke_settings.model_copy(update={"train": settings.train})
    moved = shutil.copy(result.best_checkpoint, tmp_path / "elsewhere.ckpt")  # no run.json beside it: the file says
    for source in ({"run_id": result.run_id}, {"checkpoint": result.best_checkpoint}, {"checkpoint": moved}):
        with pytest.raises(ExportError, match="validation split too"):
            export(plain, tmp_path / "bundle", **source)  # type: ignore[arg-type]
    assert not (tmp_path / "bundle").exists()


def test_a_learning_curve_run_is_scored_on_the_images_it_learnt_from(smoke_settings: Settings, tmp_path: Path) -> None:
    """``dataset.train_fraction``: MLflow counts what it learnt from, and ``evaluate --split train`` scores those
    images, whatever the settings say when it is evaluated."""
    settings = smoke_settings.model_copy(
        update={
            "dataset": smoke_settings.dataset.model_copy(update={"train_fraction": 0.5}),
            "train": smoke_settings.train.model_copy(update={"output_dir": tmp_path / "half"}),
        }
    )
    result = train(settings)
    manifest = load_trained(settings, run_id=result.run_id).manifest
    half = len(training_rows(settings.dataset, manifest))
    assert half < len(manifest.split("train"))
    params = MlflowClient(settings.tracking.uri).get_run(result.run_id).data.params
    assert params["data.train_images"] == str(half)
    moved = shutil.copy(result.best_checkpoint, tmp_path / "elsewhere.ckpt")  # no run.json beside it: the file says
    for source in ({"run_id": result.run_id}, {"checkpoint": result.best_checkpoint}, {"checkpoint": moved}):
        scored = evaluate(smoke_settings, **source, split="train", log_to_mlflow=False, output_dir=tmp_path / "e")  # type: ignore[arg-type]
        assert scored.report.n == half, source
    # The commit that trained it reaches export (and so the registry) by run id and by checkpoint alike.
    commit = params["git.commit"]
    assert load_trained(smoke_settings, run_id=result.run_id).git_commit == (commit if commit != "unknown" else None)
    assert load_trained(smoke_settings, checkpoint=result.best_checkpoint).git_commit == (
        commit if commit != "unknown" else None
    )


class _Interrupt(Callback):
    """Stands in for a killed process: fails as the third epoch starts, after two epochs were checkpointed."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: ARG002
        if trainer.current_epoch == 2:
            raise RuntimeError("interrupted")


def test_an_interrupted_run_resumes_into_the_same_folder_and_mlflow_run(
    smoke_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plantdx.train as training

    settings = smoke_settings.model_copy(
        update={"train": smoke_settings.train.model_copy(update={"max_epochs": 4, "output_dir": tmp_path / "runs"})}
    )
    real_callbacks = training._callbacks

    def with_interrupt(s: Settings, ckpt_dir: Path) -> tuple[Any, list[Callback]]:
        checkpoint, callbacks = real_callbacks(s, ckpt_dir)
        return checkpoint, [*callbacks, _Interrupt()]

    monkeypatch.setattr(training, "_callbacks", with_interrupt)
    with pytest.raises(RuntimeError, match="interrupted"):
        train(settings)
    monkeypatch.setattr(training, "_callbacks", real_callbacks)
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / training.RUN_FILE).read_text())
    assert record["trained_s"] > 0

    with pytest.raises(PlantdxError, match=r"different settings \(train.max_epochs: 4 -> 6"):
        train(settings.model_copy(update={"train": settings.train.model_copy(update={"max_epochs": 6})}), run_dir)
    with pytest.raises(PlantdxError, match="nothing to resume"):
        train(settings, resume=run_dir / "checkpoints" / "missing.ckpt")
    # A run recorded before a setting existed resumes while it holds its default, and is refused otherwise.
    record["settings"] = {k: v for k, v in record["settings"].items() if k != "train.ema_decay"}
    (run_dir / training.RUN_FILE).write_text(json.dumps(record))
    with pytest.raises(PlantdxError, match=r"train.ema_decay: None -> 0.9"):
        train(settings.model_copy(update={"train": settings.train.model_copy(update={"ema_decay": 0.9})}), run_dir)

    monkeypatch.delenv("PLANTDX_RUN_STAMP", raising=False)
    (root,) = settings.dataset.root
    moved = shutil.copytree(root.path, tmp_path / "moved" / root.path.name)  # same root elsewhere: same data hash
    elsewhere = [root.model_copy(update={"path": moved})]
    result = train(
        settings.model_copy(update={"dataset": settings.dataset.model_copy(update={"root": elsewhere})}),
        resume=run_dir,
    )
    assert result.run_dir == run_dir
    assert result.run_id == record["run_id"]
    assert result.test is not None
    assert result.wall_time_s > record["trained_s"]
    client = MlflowClient(settings.tracking.uri)
    steps = [m.step for m in client.get_metric_history(result.run_id, "val/loss")]
    assert steps == [1, 3, 5, 7], steps  # epochs 0-1 before the interruption, 2-3 after it, none trained twice
    assert client.get_run(result.run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(result.run_id).info.experiment_id])) == 1
