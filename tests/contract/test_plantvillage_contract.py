"""The real dataset's contract: what training and the tests assume about ../shared/data/plantvillage."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from plantdx.config import DatasetConfig
from plantdx.data.scan import scan_dataset
from plantdx.data.split import check_no_leakage, manifest_for, read_group_hints

pytestmark = pytest.mark.realdata

EXPECTED = {
    "Pepper_bell___Bacterial_spot": 400,
    "Pepper_bell___healthy": 400,
    "Potato___Early_blight": 400,
    "Potato___Late_blight": 400,
    "Potato___healthy": 114,
    "Tomato___Bacterial_spot": 400,
    "Tomato___Early_blight": 400,
    "Tomato___Late_blight": 400,
    "Tomato___Leaf_Mold": 400,
    "Tomato___Septoria_leaf_spot": 400,
    "Tomato___Spider_mites_Two-spotted_spider_mite": 400,
    "Tomato___Target_Spot": 400,
    "Tomato___Tomato_Yellow_Leaf_Curl_Virus": 400,
    "Tomato___Tomato_mosaic_virus": 250,
    "Tomato___healthy": 400,
}


@pytest.fixture(scope="module")
def report(real_data: Path):  # type: ignore[no-untyped-def]
    return scan_dataset(real_data, min_images_per_class=50)


def test_classes_and_counts(report) -> None:  # type: ignore[no-untyped-def]
    assert report.class_counts == EXPECTED


def test_every_image_decodes_and_none_repeats(report) -> None:  # type: ignore[no-untyped-def]
    assert report.issues == []


def test_hashes_match_the_metadata(report, real_data: Path) -> None:  # type: ignore[no-untyped-def]
    with (real_data / "metadata.csv").open(newline="") as fh:
        meta = {row["path"]: row["sha256"] for row in csv.DictReader(fh)}
    assert {r.path: r.sha256 for r in report.records} == meta


def test_split_keeps_leaves_together_and_every_class_everywhere(real_data: Path) -> None:
    cfg = DatasetConfig(root=real_data)
    manifest = manifest_for(cfg)
    assert check_no_leakage(manifest) == []
    hints = read_group_hints(real_data / "metadata.csv")
    splits_by_leaf: dict[str, set[str]] = {}
    for row in manifest.rows:
        splits_by_leaf.setdefault(f"{row.label}|{hints[row.path]}", set()).add(row.split)
    assert all(len(s) == 1 for s in splits_by_leaf.values())
    for label, counts in manifest.counts().items():
        total = sum(counts.values())
        assert counts["test"] >= 0.1 * total and counts["val"] >= 0.1 * total, (label, counts)
    assert manifest_for(cfg).digest == manifest.digest  # deterministic
