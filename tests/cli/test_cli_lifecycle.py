"""The documented lifecycle, through the CLI: train -> export -> register -> promote -> rollback -> serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import SMOKE
from plantdx.cli import app
from plantdx.config import TrackingConfig
from plantdx.registry import CHAMPION, Registry

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]


def test_train_export_register_promote_rollback(tiny_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    common = [
        "-c", str(SMOKE),
        "--set", f"dataset.root={tiny_dataset}", "--set", "dataset.max_per_class=null",
        "--set", "dataset.image_size=32", "--set", f"train.output_dir={tmp_path / 'runs'}",
        "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set", f"tracking.artifact_location={tmp_path / 'art'}",
        "--set", "export.reference_images=20", "--set", "export.int8_calibration_images=10",
    ]  # fmt: skip
    versions = []
    for epochs in (1, 4):
        result_json = tmp_path / f"train-{epochs}.json"
        r = runner.invoke(
            app, ["train", *common, "--set", f"train.max_epochs={epochs}", "--result-json", str(result_json)]
        )
        assert r.exit_code == 0, r.output
        trained = json.loads(result_json.read_text())
        assert trained["run_id"] and trained["command"].startswith("plantdx train")
        bundle = tmp_path / f"bundle-{epochs}"
        r = runner.invoke(app, ["export", *common, "--train-result", str(result_json), "-o", str(bundle), "--register"])
        assert r.exit_code == 0, r.output
        assert "registered plantdx v" in r.output
        card = json.loads((bundle / "card.json").read_text())
        assert card["training"]["run_id"] == trained["run_id"] and card["run_id"] == trained["run_id"]
        versions.append(card)

    registry = Registry(TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"))
    r = runner.invoke(app, ["promote", *common, "--version", "1"])
    assert r.exit_code == 0, r.output
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]
    challenger = registry.by_alias("challenger")
    assert challenger is not None and challenger.version == "2"
    # The gate decides: a margin no model can meet is refused, with the reason; a lenient gate lets v2 in.
    r = runner.invoke(app, ["promote", *common, "--set", "gate.margin=1.0"])
    assert r.exit_code != 0 and "not promoted" in str(r.exception) and "margin 1.0" in str(r.exception)
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]
    lenient = ["--set", "gate.margin=-1.0", "--set", "gate.max_class_drop=1.0"]
    r = runner.invoke(app, ["promote", *common, *lenient])  # the challenger: v2, trained longer
    assert r.exit_code == 0, r.output
    assert registry.by_alias(CHAMPION).version == "2"  # type: ignore[union-attr]
    r = runner.invoke(app, ["rollback", *common])
    assert r.exit_code == 0, r.output
    assert registry.by_alias(CHAMPION).version == "1"  # type: ignore[union-attr]
    # --force overrides the gate, and says so.
    r = runner.invoke(app, ["promote", *common, "--version", "2", "--set", "gate.margin=1.0", "--force"])
    assert r.exit_code == 0 and "forced" in r.output, r.output
    assert registry.by_alias(CHAMPION).version == "2"  # type: ignore[union-attr]
