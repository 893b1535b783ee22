from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_leaf, write_tiny_dataset
from plantdx.cli import app
from plantdx.data.scan import scan_dataset
from plantdx.errors import DataError


@pytest.fixture
def broken_dataset(tmp_path: Path) -> Path:
    """A tiny dataset with one of each problem `data check` must name."""
    root = write_tiny_dataset(tmp_path / "broken", per_class=6)
    good = root / "Crop___Blight" / "img_001.jpg"
    (root / "Crop___Blight" / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (root / "Crop___Spot" / "notes.jpg").write_text("this is a text file with an image name")
    (root / "Crop___Empty").mkdir()
    shutil.copy(good, root / "Crop___Spot" / "copy_of_blight.jpg")
    make_leaf("Crop___Spot", 99).save(root / "Crop___Spot" / "anim.gif")
    make_leaf("Crop___Spot", 98).save(root / "Crop___Spot" / "really_png.jpg", format="PNG")
    (root / "stray.txt").write_text("x")
    return root


def test_clean_dataset_has_no_issues(tiny_dataset: Path) -> None:
    report = scan_dataset(tiny_dataset, min_images_per_class=3)
    assert report.ok, report.issues
    assert report.class_counts == {"Crop___Blight": 12, "Crop___Spot": 12, "Crop___healthy": 12}
    assert all(len(r.sha256) == 64 for r in report.records)


def test_every_problem_is_named(broken_dataset: Path) -> None:
    report = scan_dataset(broken_dataset, min_images_per_class=3)
    kinds = {(i.kind, i.path) for i in report.issues}
    assert ("corrupt", "Crop___Blight/truncated.jpg") in kinds
    assert ("not_an_image", "Crop___Spot/notes.jpg") in kinds
    assert ("empty_class", "Crop___Empty") in kinds
    assert ("unsupported_format", "Crop___Spot/anim.gif") in kinds
    assert ("format_mismatch", "Crop___Spot/really_png.jpg") in kinds
    assert ("stray_file", "stray.txt") in kinds
    dup = [i for i in report.issues if i.kind == "duplicate"]
    assert len(dup) == 1 and "different classes" in dup[0].detail
    # Unusable files are left out of the records; a mislabelled format is still usable.
    paths = {r.path for r in report.records}
    assert "Crop___Blight/truncated.jpg" not in paths and "Crop___Spot/notes.jpg" not in paths
    assert "Crop___Spot/really_png.jpg" in paths


def test_tiny_class_is_reported(tiny_dataset: Path) -> None:
    report = scan_dataset(tiny_dataset, min_images_per_class=20)
    assert {i.path for i in report.issues if i.kind == "tiny_class"} == set(report.class_counts)


def test_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    make_leaf("x", 1).save(tmp_path / "flat" / "a.jpg")
    with pytest.raises(DataError, match="no class folders"):
        scan_dataset(tmp_path / "flat")


def test_cli_check_names_each_problem_and_strict_fails(broken_dataset: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(broken_dataset), "--set", "dataset.min_images_per_class=3"])
    assert result.exit_code == 0, result.output
    for needle in (
        "truncated.jpg",
        "notes.jpg",
        "Crop___Empty",
        "duplicate",
        "anim.gif",
        "corrupt",
        "not_an_image",
    ):
        assert needle in result.output, needle
    strict = runner.invoke(app, ["data", "check", str(broken_dataset), "--strict"])
    assert strict.exit_code == 1


def test_cli_check_clean_and_strict_passes(tiny_dataset: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "check", str(tiny_dataset), "--strict", "--set", "dataset.min_images_per_class=3"]
    )
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.output
