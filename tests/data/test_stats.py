"""``data stats``: a dataset described from image headers alone."""

from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_CLASSES, make_leaf
from plantdx.cli import app
from plantdx.data.stats import dataset_stats


def test_counts_formats_sizes_and_imbalance(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(6):
        (root / "Crop___A").mkdir(parents=True, exist_ok=True)
        make_leaf("Crop___A", i, size=40).save(root / "Crop___A" / f"{i}.jpg")
    for i in range(2):
        (root / "Crop___B").mkdir(exist_ok=True)
        make_leaf("Crop___B", i, size=64).save(root / "Crop___B" / f"{i}.png")
    Image.new("RGB", (30, 20)).save(root / "Crop___B" / "wide.webp")
    stats = dataset_stats(root)
    assert stats.class_counts == {"Crop___A": 6, "Crop___B": 3} and stats.images == 9
    assert stats.formats == {"JPEG": 6, "PNG": 2, "WEBP": 1}
    assert stats.sizes == {"40x40": 6, "64x64": 2, "30x20": 1}
    assert stats.imbalance_ratio == 2.0
    assert stats.total_bytes == sum(p.stat().st_size for p in root.rglob("*.*"))
    assert stats.unreadable == 0 and stats.other_files == 0


def test_cli_stats(tiny_dataset: Path) -> None:
    result = CliRunner().invoke(app, ["data", "stats", str(tiny_dataset)])
    assert result.exit_code == 0, result.output
    assert "36 images in 3 classes" in result.output
    assert "imbalance (largest / smallest class): 1.00" in result.output
    assert "not counted" not in result.output


def test_cli_stats_says_what_it_did_not_count(tiny_dataset: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_dataset, tmp_path / "data"))
    (root / TINY_CLASSES[0] / "bad.jpg").write_bytes(b"not a jpeg")
    (root / TINY_CLASSES[0] / "notes.txt").write_text("field notes")
    result = CliRunner().invoke(app, ["data", "stats", str(root)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "36 images in 3 classes" in said
    assert "not counted: 1 unreadable images, 1 files that are not images" in said
