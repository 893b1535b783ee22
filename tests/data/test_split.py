from __future__ import annotations

import hashlib
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plantdx.cli import app
from plantdx.config import DatasetConfig
from plantdx.data.scan import ImageRecord
from plantdx.data.split import (
    check_no_leakage,
    make_manifest,
    manifest_for,
    read_group_hints,
    read_manifest,
    split_record,
    write_manifest,
)
from plantdx.errors import DataError


def records(per_class: dict[str, int]) -> list[ImageRecord]:
    out = []
    for label, n in per_class.items():
        for i in range(n):
            out.append(ImageRecord(f"{label}/{i:04d}.jpg", label, hashlib.sha256(f"{label}{i}".encode()).hexdigest()))
    return out


def test_same_seed_same_split_whatever_the_input_order() -> None:
    recs = records({"A___x": 100, "B___y": 40, "C___z": 11})
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    assert make_manifest(recs, seed=3) == make_manifest(shuffled, seed=3)
    assert make_manifest(recs, seed=3).digest != make_manifest(recs, seed=4).digest


def test_stratified_fractions_and_every_class_in_every_split() -> None:
    manifest = make_manifest(records({"A___x": 400, "B___y": 114, "C___z": 20}), seed=0)
    for label, counts in manifest.counts().items():
        total = sum(counts.values())
        assert all(counts[s] >= 1 for s in ("train", "val", "test")), label
        assert abs(counts["test"] / total - 0.15) < 0.05, (label, counts)
        assert abs(counts["val"] / total - 0.15) < 0.05, (label, counts)


def test_a_class_of_one_or_two_leaves_still_gets_training_images() -> None:
    """Left to the fractions, 1 image went to test and 2 to val + test: a class the model could never learn."""
    manifest = make_manifest(records({"A___x": 100, "B___one": 1, "C___two": 2}), seed=0)
    counts = manifest.counts()
    assert counts["B___one"]["train"] == 1 and counts["C___two"]["train"] >= 1
    assert sum(counts["C___two"].values()) == 2
    # Classes with enough leaves split as before.
    assert make_manifest(records({"A___x": 100}), seed=0).rows == tuple(r for r in manifest.rows if r.label == "A___x")


def test_identical_bytes_and_leaf_groups_never_straddle_splits() -> None:
    recs = records({"A___x": 60, "B___y": 60})
    dup_hash = recs[0].sha256
    recs += [ImageRecord(f"A___x/dup{i}.jpg", "A___x", dup_hash) for i in range(5)]
    # Photos of one leaf: blocks of 6 consecutive images.
    hints = {r.path: f"series|leaf{i // 6}" for i, r in enumerate(recs[:120])}
    manifest = make_manifest(recs, seed=7, group_hints=hints)
    assert check_no_leakage(manifest) == []
    dup_splits = {r.split for r in manifest.rows if r.sha256 == dup_hash}
    assert len(dup_splits) == 1
    by_leaf: dict[str, set[str]] = {}
    for row in manifest.rows:
        if row.path in hints:
            by_leaf.setdefault(f"{row.label}|{hints[row.path]}", set()).add(row.split)
    assert all(len(splits) == 1 for splits in by_leaf.values())


def test_leakage_check_catches_a_straddling_group() -> None:
    manifest = make_manifest(records({"A___x": 30}), seed=0)
    rows = list(manifest.rows)
    train = next(r for r in rows if r.split == "train")
    test = next(r for r in rows if r.split == "test")
    rows[rows.index(test)] = type(test)(test.path, test.label, "test", train.sha256, test.group)
    assert check_no_leakage(type(manifest)(tuple(rows)))


def test_max_per_class_takes_a_stratified_slice() -> None:
    manifest = make_manifest(records({"A___x": 100, "B___y": 50}), seed=0, max_per_class=10)
    assert Counter(r.label for r in manifest.rows) == {"A___x": 10, "B___y": 10}


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = make_manifest(records({"A___x": 20, "B___y": 20}), seed=0)
    path = write_manifest(manifest, tmp_path / "m.csv")
    again = read_manifest(path)
    assert again == manifest and again.digest == manifest.digest
    assert again.classes == ["A___x", "B___y"]


def test_bad_manifests_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "cols.csv").write_text("path,label\na,b\n")
    with pytest.raises(DataError, match="lacks the columns"):
        read_manifest(tmp_path / "cols.csv")
    (tmp_path / "split.csv").write_text("path,label,split,sha256,group\na,b,holdout,c,d\n")
    with pytest.raises(DataError, match="holdout"):
        read_manifest(tmp_path / "split.csv")
    with pytest.raises(DataError, match="no usable images"):
        make_manifest([])


def test_group_hints_need_their_columns(tmp_path: Path) -> None:
    (tmp_path / "meta.csv").write_text("path,class\na,b\n")
    with pytest.raises(DataError, match="leaf_group_hint"):
        read_group_hints(tmp_path / "meta.csv")


def test_cli_split_writes_a_deterministic_manifest(tiny_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for out in (first, second):
        result = runner.invoke(
            app,
            ["data", "split", str(tiny_dataset), "-o", str(out), "--set", "dataset.min_images_per_class=3"],
        )
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()
    assert len(read_manifest(first).rows) == 36


def test_a_manifest_refuses_split_settings_it_would_override(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """dataset.manifest is read as it is: other split settings beside it would be silently ignored."""
    cfg = DatasetConfig(root=tiny_dataset, manifest=tmp_path / "m.csv", min_images_per_class=3)
    first = manifest_for(cfg)
    assert manifest_for(cfg) == first  # read back, same settings
    for change in ({"test_fraction": 0.3}, {"max_per_class": 5}, {"min_images_per_class": 4}):
        with pytest.raises(DataError, match=f"{next(iter(change))}: .* -> "):
            manifest_for(cfg.model_copy(update=change))
    # Another seed keeps the split (said in a warning): it still draws train_fraction's share and the sampling.
    with caplog.at_level(logging.WARNING, logger="plantdx.data"):
        assert manifest_for(cfg.model_copy(update={"seed": 7})) == first
    assert "keeps the split of seed 42; seed 7 applies to the rest" in caplog.text
    # A manifest made by hand (no record of how) is taken as given.
    split_record(tmp_path / "m.csv").unlink()
    assert manifest_for(cfg.model_copy(update={"test_fraction": 0.3})) == first
