"""What a person sees when a command cannot do what was asked: one line on stderr and a non-zero exit, never a
traceback. Run through the console entry point (``main``), in a subprocess, as a shell would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOKE, jpeg
from plantdx.bundle import load_bundle
from plantdx.export import ExportResult
from plantdx.inference import default_bundle_path
from plantdx.train import TrainResult

pytestmark = pytest.mark.slow


def plantdx(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")} | {"DO_NOT_TRACK": "1"}
    return subprocess.run(
        [sys.executable, "-c", "from plantdx.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean | (env or {}),
        timeout=300,
    )


def one_line_error(r: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr[-2000:]
    said = " ".join(r.stderr.split())  # rich wraps long lines
    assert said.startswith("error:"), r.stderr[-2000:]
    for part in expected:
        assert part in said, said


def test_unreadable_or_foreign_checkpoints(tmp_path: Path, exported: ExportResult) -> None:
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 1000)  # a torch zip cut short
    for bad in ("text.ckpt", "cut.ckpt"):
        one_line_error(
            plantdx("bench", str(exported.bundle), "--checkpoint", bad, "--runs", "10", cwd=tmp_path),
            f"cannot load {bad} as a plantdx checkpoint",
        )
    one_line_error(plantdx("export", "--checkpoint", "cut.ckpt", "-o", "b", cwd=tmp_path), "as a plantdx checkpoint")


def test_bench_refuses_a_checkpoint_of_another_model(tmp_path: Path, trained_tiny: tuple[object, TrainResult]) -> None:
    """The tiny model's checkpoint is not the default bundle's network: its latency would land in that table."""
    _, result = trained_tiny
    r = plantdx("bench", "--checkpoint", str(result.best_checkpoint), "--runs", "10", "-o", "out", cwd=tmp_path)
    card = load_bundle(default_bundle_path()).card
    one_line_error(r, "is not this bundle's model", f"parameters against the card's {card['parameters']:,}")


def test_an_unusable_tracking_uri(tmp_path: Path) -> None:
    env = {"PLANTDX_TRACKING__URI": "foo://bar"}
    for command in (["rollback"], ["promote"]):
        one_line_error(plantdx(*command, cwd=tmp_path, env=env), "MLflow:", "foo://bar")


def test_a_folder_where_a_file_is_wanted(tmp_path: Path, tiny_dataset: Path) -> None:
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "leaf.jpg").write_bytes(jpeg())
    data = ["--set", f"dataset.root={tiny_dataset}", "--set", "dataset.min_images_per_class=3"]
    one_line_error(plantdx("data", "split", *data, "-o", "a-folder", cwd=tmp_path), "Is a directory", "a-folder")
    one_line_error(plantdx("explain", "leaf.jpg", "-o", "a-folder", cwd=tmp_path), "cannot write a-folder")
    # refused before training starts, not after (the run would be done and its report lost)
    r = plantdx("train", "-c", str(SMOKE), *data, "--result-json", "a-folder", cwd=tmp_path)
    one_line_error(r, "cannot write --result-json a-folder: it is a folder")
    assert not (tmp_path / "runs").exists()
