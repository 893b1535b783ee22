"""Two-process DDP on CPU (gloo), launched the way a user launches it: the CLI with devices=2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import SMOKE, free_port_below_ephemeral

pytestmark = pytest.mark.slow


def test_two_process_ddp_on_cpu(tiny_dataset: Path, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    env["MASTER_PORT"] = str(free_port_below_ephemeral())  # Lightning's own pick is an ephemeral port
    cmd = [
        sys.executable,
        "-m",
        "plantdx.cli",
        "train",
        "-c",
        str(SMOKE),
        "--set",
        f"dataset.root={tiny_dataset}",
        "--set",
        "dataset.max_per_class=null",
        "--set",
        "train.accelerator=cpu",
        "--set",
        "train.devices=2",
        "--set",
        "train.strategy=ddp",
        "--set",
        "train.threads=1",
        "--set",
        "train.max_epochs=2",
        "--set",
        f"train.output_dir={tmp_path / 'runs'}",
        "--set",
        f"tracking.uri=sqlite:///{db}",
        "--set",
        f"tracking.artifact_location={tmp_path / 'mlartifacts'}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:  # show how far the ranks got
        out = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        pytest.fail(f"DDP training did not finish in 300 s:\n{out[-6000:]}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Initializing distributed: GLOBAL_RANK: 0, MEMBER: 1/2" in log
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("plantdx").experiment_id])
    assert len(runs) == 1  # rank 1 logs nothing of its own
    metrics = runs[0].data.metrics
    assert {"val/acc", "test/acc", "test/f1_macro"} <= set(metrics)
    assert runs[0].data.params["train.devices"] == "2"
    assert len(client.get_metric_history(runs[0].info.run_id, "val/acc")) == 2
