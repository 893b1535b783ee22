"""The feedback -> retrain loop end to end with a tiny model: serve, label through /v1/feedback, `plantdx monitor`,
`plantdx retrain` (train a challenger on data + feedback, register it, promote only through the gate)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from conftest import SMOKE, TINY_CLASSES, make_leaf, serve_settings
from plantdx.bundle import load_bundle
from plantdx.cli import app
from plantdx.config import Settings
from plantdx.export import ExportResult
from plantdx.inference import default_bundle_path
from plantdx.registry import CHALLENGER, CHAMPION, Registry
from plantdx.serve import create_app
from plantdx.train import TrainResult

pytestmark = pytest.mark.slow


def _jpeg(label: str, seed: int) -> bytes:
    buf = io.BytesIO()
    make_leaf(label, seed).save(buf, format="JPEG")
    return buf.getvalue()


def test_feedback_monitor_and_retrain_close_the_loop(
    trained_tiny: tuple[Settings, TrainResult],
    exported: ExportResult,
    tiny_dataset: Path,
    tmp_path: Path,
    clean_env: None,  # noqa: ARG001
) -> None:
    settings, _ = trained_tiny
    log_url = f"sqlite:///{tmp_path}/predictions.db"
    overrides = [
        f"dataset.root={tiny_dataset}", "dataset.max_per_class=null", "dataset.image_size=32",
        "train.max_epochs=2", "train.lr=0.01", f"train.output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
        "export.reference_images=20", "export.int8=false", "export.torchscript=false", "export.threads=1",
        f"monitor.log_url={log_url}", "monitor.min_window=10", f"monitor.report_dir={tmp_path / 'reports'}",
        "gate.margin=-1", "gate.max_class_drop=1",  # a 2-epoch tiny model: the loop is tested, not the model
    ]  # fmt: skip
    registry = Registry(
        settings.tracking.model_copy(
            update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": str(tmp_path / "mlartifacts")}
        ),
        settings.gate,
    )
    champion = registry.register(exported.bundle)
    registry.promote(champion.version)

    # serve the champion; growers send photos and label them
    served = serve_settings(exported.bundle, f"monitor.log_url={log_url}", "monitor.verdict_poll_s=0")
    dataset_photo = (tiny_dataset / TINY_CLASSES[0] / "img_001.jpg").read_bytes()  # already in the dataset
    with TestClient(create_app(served)) as client:
        photos = [(label, _jpeg(label, 50_000 + 10 * i + k)) for k, label in enumerate(TINY_CLASSES) for i in range(4)]
        photos.append((TINY_CLASSES[0], dataset_photo))
        for label, data in photos:
            r = client.post("/v1/predict", files={"file": ("p.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            fb = client.post("/v1/feedback", json={"request_id": r.json()["request_id"], "label": label})
            assert fb.status_code == 200 and fb.json()["image_kept"] is True, fb.text

    runner = CliRunner()
    settings_args = ["-c", str(SMOKE), *sum((["--set", o] for o in overrides), [])]
    # The bundled model made none of these predictions: its reference cannot judge them.
    other = runner.invoke(app, ["monitor", *settings_args])
    bundled_version = load_bundle(default_bundle_path()).version
    said = str(other.exception) + other.output
    assert other.exit_code == 1 and f"0 logged predictions of model {bundled_version}" in said, said
    report = runner.invoke(app, ["monitor", "--model", str(exported.bundle), *settings_args])
    assert report.exit_code == 0, report.output
    assert "live accuracy" in report.output and "over 13 labelled" in report.output
    summary = json.loads((tmp_path / "reports" / "drift_summary.json").read_text())
    assert summary["window"]["size"] == 13 and summary["labelled"] == 13
    assert (tmp_path / "reports" / "drift_report.html").stat().st_size > 100_000

    result = runner.invoke(app, ["retrain", *settings_args])
    assert result.exit_code == 0, result.output
    assert "+ 12 feedback photos (skipped: 1 already in the dataset)" in result.output
    versions = {v.version: v for v in registry.versions()}
    challenger = registry.by_alias(CHALLENGER)
    assert challenger is not None and challenger.version != champion.version and len(versions) == 2
    assert registry.by_alias(CHAMPION).version == challenger.version  # type: ignore[union-attr]
    assert "gate accepted" in result.output

    (manifest_path,) = (tmp_path / "runs").glob("retrain-*/manifest.csv")
    rows = list(csv.DictReader(manifest_path.open()))
    feedback = [r for r in rows if r["group"].startswith("feedback:")]
    assert len(feedback) == 12 and {r["split"] for r in feedback} == {"train"}
    assert all(Path(r["path"]).is_file() for r in feedback)


def _retrain_on_an_empty_log(tmp_path: Path, tiny_dataset: Path, *overrides: str) -> Result:
    """``plantdx retrain`` on the tiny dataset with a prediction log that holds no feedback."""
    settings = [f"dataset.root={tiny_dataset}", f"monitor.log_url=sqlite:///{tmp_path}/empty.db",
                f"train.output_dir={tmp_path}", *overrides]  # fmt: skip
    return CliRunner().invoke(app, ["retrain", "-c", str(SMOKE), *sum((["--set", o] for o in settings), [])])


def test_retrain_without_feedback_says_so(tmp_path: Path, tiny_dataset: Path, clean_env: None) -> None:  # noqa: ARG001
    result = _retrain_on_an_empty_log(tmp_path, tiny_dataset, "dataset.max_per_class=null")
    assert result.exit_code == 1
    assert "0 usable labelled feedback photos" in str(result.exception) + result.output


def test_retrain_refuses_a_refit_before_training(tmp_path: Path, tiny_dataset: Path, clean_env: None) -> None:  # noqa: ARG001
    result = _retrain_on_an_empty_log(tmp_path, tiny_dataset, "dataset.train_on_val=true")
    assert result.exit_code == 1
    assert "a refit cannot be calibrated" in str(result.exception) + result.output
    assert not list(tmp_path.glob("retrain-*"))
