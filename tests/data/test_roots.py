"""Several roots as one dataset: lab, field and not-a-leaf photos, split without leaking a leaf, a web photo, a
photo session or a non-leaf category across splits."""

from __future__ import annotations

import csv
import itertools
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_leaf
from plantdx.cli import app
from plantdx.config import DatasetConfig
from plantdx.data.datamodule import sample_weights
from plantdx.data.scan import NOT_A_LEAF
from plantdx.data.split import check_no_leakage, manifest_for, read_manifest, write_manifest

LAB = ("Crop___Blight", "Crop___Spot", "Crop___healthy")


def _lab_root(root: Path, offset: int, shared_leaf: bool) -> Path:
    """Per class 3 series of 12 photos, photo numbers in runs of 4 per leaf; metadata as the shared folders have."""
    rows = []
    for c, label in enumerate(LAB):
        (root / label).mkdir(parents=True)
        for series in range(3):
            for n in range(12):
                photo_no = 1000 * series + n + offset
                name = f"{label}/s{series}_{photo_no}.jpg"
                make_leaf(label, seed=10_000 * c + photo_no).save(root / name)
                leaf = f"S{series}|n{photo_no // 4}"
                rows.append((name, label, f"S{series}", str(photo_no), leaf))
    if shared_leaf:  # a leaf photographed into both roots, under the same hint (consecutive numbers)
        name = f"{LAB[0]}/s0_3_again.jpg"
        make_leaf(LAB[0], seed=999_999).save(root / name)
        rows.append((name, LAB[0], "S0", "3", "S0|n0"))
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("path", "class", "series", "photo_no", "leaf_group_hint"))
        w.writerows((name, label, s, no, hint) for name, label, s, no, hint in rows)
    return root


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("roots")
    lab_a = _lab_root(base / "lab-a", 0, shared_leaf=False)
    lab_b = _lab_root(base / "lab-b", 500, shared_leaf=True)
    shutil.copy(lab_a / LAB[1] / "s1_1001.jpg", lab_b / LAB[1] / "copy.jpg")  # identical bytes in two roots
    field = base / "field"
    rows = []
    for c, label in enumerate(LAB[:2]):  # the field root lacks a class
        (field / label).mkdir(parents=True)
        for i in range(16):
            name = f"{label}/f{i}.jpg"
            make_leaf(label, seed=50_000 + 100 * c + i, size=64).save(field / name)
            rows.append((name, label, f"g{c}-{i // 2}"))  # pairs of near-duplicates
    with (field / "metadata.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "class", "near_duplicate_group"), *rows])
    other = base / "other"
    for k, category in enumerate(("cats", "pianos", "rooms", "bicycles", "boats", "cups")):
        (other / category).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 30), (40 * k, 200 - 30 * i, 90)).save(other / category / f"{i}.jpg")
    return {"lab-a": lab_a, "lab-b": lab_b, "field": field, "other": other}


def _config(roots: dict[str, Path], **extra: object) -> DatasetConfig:
    return DatasetConfig(
        root=[str(roots["lab-a"]), str(roots["lab-b"]), f"field={roots['field']}", f"nonleaf={roots['other']}"],
        min_images_per_class=3,
        **extra,  # type: ignore[arg-type]
    )


def test_classes_are_the_union_and_rows_know_their_root(roots: dict[str, Path], tmp_path: Path) -> None:
    manifest = manifest_for(_config(roots))
    assert manifest.classes == [*LAB, NOT_A_LEAF]
    assert manifest.domains == ["lab", "field", "nonleaf"]
    by_root = Counter(r.root for r in manifest.rows)
    assert by_root == {"lab-a": 108, "lab-b": 110, "field": 32, "other": 30}
    field = {r.label for r in manifest.rows if r.root == "field"}
    assert field == set(LAB[:2])  # a root may lack classes
    assert {r.label for r in manifest.rows if r.domain == "nonleaf"} == {NOT_A_LEAF}
    assert not check_no_leakage(manifest)
    # the manifest records each image's root and domain, and reads back the same
    again = read_manifest(write_manifest(manifest, tmp_path / "m.csv"))
    assert again == manifest and again.digest == manifest.digest


def test_leaves_copies_web_photos_and_categories_stay_whole_across_roots(roots: dict[str, Path]) -> None:
    manifest = manifest_for(_config(roots, val_fraction=0.2, test_fraction=0.3))
    split = {(r.root, r.path): r.split for r in manifest.rows}
    # one leaf in two roots (the same hint): one split
    assert split[("lab-b", f"{LAB[0]}/s0_3_again.jpg")] == split[("lab-a", f"{LAB[0]}/s0_3.jpg")]
    # identical bytes in two roots: one split
    assert split[("lab-b", f"{LAB[1]}/copy.jpg")] == split[("lab-a", f"{LAB[1]}/s1_1001.jpg")]
    # near-duplicates of one web photo: one split
    for label in LAB[:2]:
        for i in range(0, 16, 2):
            assert split[("field", f"{label}/f{i}.jpg")] == split[("field", f"{label}/f{i + 1}.jpg")]
    # a non-leaf category is held out whole, and test holds categories training never saw
    categories: dict[str, set[str]] = defaultdict(set)
    for r in manifest.rows:
        if r.domain == "nonleaf":
            categories[r.path.split("/")[0]].add(r.split)
    assert all(len(s) == 1 for s in categories.values())
    assert {"train", "test"} <= {s for v in categories.values() for s in v}
    # every domain is split with the fractions: field and lab each have all three splits
    for domain in ("lab", "field"):
        assert {r.split for r in manifest.rows if r.domain == domain} == {"train", "val", "test"}


def test_the_series_split_holds_out_whole_runs_of_a_photo_session(roots: dict[str, Path]) -> None:
    """With split_by=series, a (class, series) read in photo-number order changes split only where one of its
    `series_blocks` runs ends: a test photo comes from a stretch of the session no training photo does. The leaf
    split changes far more often."""

    def changes(split_by: str) -> list[int]:
        cfg = _config(roots, split_by=split_by, series_blocks=3, val_fraction=0.2, test_fraction=0.3)
        by_series: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for r in manifest_for(cfg).rows:
            if r.domain == "lab" and Path(r.path).stem.startswith("s"):
                series, number = Path(r.path).stem.split("_")[:2]
                by_series[(r.label, series)].append((int(number), r.split))
        return [sum(a[1] != b[1] for a, b in itertools.pairwise(sorted(v))) for v in by_series.values()]

    series = changes("series")
    assert max(series) <= 2 and sum(series) > 0  # three runs: at most two changes, and the runs do differ
    assert sum(changes("leaf")) > 2 * sum(series)


def test_a_root_can_have_its_own_test_share(roots: dict[str, Path]) -> None:
    cfg = DatasetConfig(
        root=[str(roots["lab-a"]), {"path": roots["field"], "domain": "field", "test_fraction": 0.5}],
        min_images_per_class=3,
    )
    manifest = manifest_for(cfg)
    field = Counter(r.split for r in manifest.rows if r.domain == "field")
    lab = Counter(r.split for r in manifest.rows if r.domain == "lab")
    assert field["test"] / sum(field.values()) == pytest.approx(0.5, abs=0.07)
    assert lab["test"] / sum(lab.values()) == pytest.approx(0.15, abs=0.08)  # whole leaves of 4 photos


def test_domain_shares_of_the_sampler(roots: dict[str, Path]) -> None:
    rows = manifest_for(_config(roots)).split("train")
    weights = sample_weights(rows, {"lab": 0.5, "field": 0.3, "nonleaf": 0.2})
    share: Counter[str] = Counter()
    per_class: Counter[tuple[str, str]] = Counter()
    for r, w in zip(rows, weights, strict=True):
        share[r.domain] += w
        per_class[(r.domain, r.label)] += w
    assert share["lab"] == pytest.approx(0.5) and share["field"] == pytest.approx(0.3)
    assert share["nonleaf"] == pytest.approx(0.2)
    assert per_class[("field", LAB[0])] == pytest.approx(per_class[("field", LAB[1])])  # balanced within
    plain = sample_weights(rows, None)
    assert sum(w for r, w in zip(rows, plain, strict=True) if r.domain == "field") == pytest.approx(
        sum(r.domain == "field" for r in rows) / len(rows)
    )


def test_data_check_and_stats_report_each_root_and_the_total(roots: dict[str, Path]) -> None:
    args = [str(roots["lab-a"]), f"field={roots['field']}", f"nonleaf={roots['other']}"]
    runner = CliRunner()
    check = runner.invoke(app, ["data", "check", *args, "--set", "dataset.min_images_per_class=3"])
    assert check.exit_code == 0, check.output
    said = " ".join(check.output.split())
    assert "lab-a (lab), field (field), other (nonleaf)" in said
    assert "not_a_leaf" in said and "no problems found" in said
    stats = runner.invoke(app, ["data", "stats", *args])
    assert stats.exit_code == 0, stats.output
    said = " ".join(stats.output.split())
    assert "170 images in 4 classes" in said  # 108 + 32 + 30
    assert "lab-a: 108 images" in said and "field: 32 images" in said and "other: 30 images" in said
