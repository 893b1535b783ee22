"""The farms' shares: every scheme keeps leaf groups whole, deals out training photos only, and repeats."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from plantdx.data.split import Manifest, ManifestRow
from plantdx.errors import DataError
from plantdx.federate.partition import SCHEMES, crop_of, make_partition, read_partition, write_partition

CLASSES = ("Pepper___healthy", "Potato___Blight", "Potato___healthy", "Tomato___Spot", "Tomato___Mold")


def synthetic_manifest() -> tuple[Manifest, dict[tuple[str, str], str]]:
    """5 classes over 3 crops, leaves of 3 photos, two photo series a class, some field photos; val and test too."""
    rows, series = [], {}
    for c, label in enumerate(CLASSES):
        for leaf in range(12):
            split = "val" if leaf == 10 else "test" if leaf == 11 else "train"
            for shot in range(3):
                path = f"{label}/leaf{leaf}_{shot}.jpg"
                rows.append(ManifestRow(path, label, split, f"{c}{leaf}{shot}", f"g{c}-{leaf}", "lab", "lab"))
                series[("lab", path)] = f"S{c}-{leaf % 2}"
        for leaf in range(3):  # field photos: no series
            rows.append(
                ManifestRow(f"{label}/field{leaf}.jpg", label, "train", f"f{c}{leaf}", f"f{c}-{leaf}", "field", "field")
            )
    return Manifest(tuple(rows)), series


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_deals_each_training_photo_once_and_keeps_groups_whole(scheme: str) -> None:
    manifest, series = synthetic_manifest()
    part = make_partition(manifest, scheme, 3, seed=7, alpha=0.5, series=series)
    dealt = [r for farm in part.farms for r in farm.rows]
    assert Counter(dealt) == Counter(manifest.split("train"))  # each once, nothing from val or test
    owner = {}
    for farm in part.farms:
        assert farm.rows, f"{farm.name} is empty"
        for row in farm.rows:
            assert owner.setdefault(row.group, farm.name) == farm.name, f"group {row.group} cut between farms"
    again = make_partition(manifest, scheme, 3, seed=7, alpha=0.5, series=series)
    assert again == part


def test_crop_farms_hold_one_crop_each() -> None:
    manifest, _ = synthetic_manifest()
    part = make_partition(manifest, "crop", 3)
    crops = [{crop_of(r.label) for r in farm.rows} for farm in part.farms]
    assert sorted(c for cs in crops for c in cs) == ["Pepper", "Potato", "Tomato"]
    assert all(len(c) == 1 for c in crops)
    assert sorted(f.description for f in part.farms) == ["Pepper", "Potato", "Tomato"]


def test_more_farms_than_crops_share_a_crop_and_fewer_farms_hold_several() -> None:
    manifest, _ = synthetic_manifest()
    many = make_partition(manifest, "crop", 5)
    assert all(len({crop_of(r.label) for r in f.rows}) == 1 for f in many.farms)
    assert Counter(f.description for f in many.farms)["Tomato"] >= 2  # the largest crop is shared
    two = make_partition(manifest, "crop", 2)
    assert sorted(len({crop_of(r.label) for r in f.rows}) for f in two.farms) == [1, 2]


def test_source_gives_one_farm_the_field_photos() -> None:
    manifest, _ = synthetic_manifest()
    part = make_partition(manifest, "source", 3)
    assert {r.domain for r in part.farms[0].rows} == {"field"}
    assert all({r.domain for r in f.rows} == {"lab"} for f in part.farms[1:])
    lab_only = Manifest(tuple(r for r in manifest.rows if r.domain == "lab"))
    with pytest.raises(DataError, match="field photos"):
        make_partition(lab_only, "source", 3)


def test_series_are_never_split_between_farms() -> None:
    manifest, series = synthetic_manifest()
    part = make_partition(manifest, "series", 3, series=series)
    owner: dict[str, str] = {}
    for farm in part.farms:
        for row in farm.rows:
            if (row.root, row.path) in series:
                assert owner.setdefault(series[(row.root, row.path)], farm.name) == farm.name
    with pytest.raises(DataError, match="photo series"):
        make_partition(manifest, "series", 3, series={})


def test_iid_gives_every_farm_every_class_and_small_alpha_skews_labels() -> None:
    manifest, _ = synthetic_manifest()
    iid = make_partition(manifest, "iid", 3)
    assert all(set(f.counts()) == set(CLASSES) for f in iid.farms)

    def skew(alpha: float) -> float:  # mean share of a class held by its largest farm
        part = make_partition(manifest, "dirichlet", 3, alpha=alpha, seed=1)
        top = [
            max(f.counts().get(c, 0) for f in part.farms) / sum(f.counts().get(c, 0) for f in part.farms)
            for c in CLASSES
        ]
        return sum(top) / len(top)

    assert skew(0.1) > skew(100.0)


def test_a_partition_is_written_as_manifests_and_read_back(tmp_path: Path) -> None:
    manifest, _ = synthetic_manifest()
    part = make_partition(manifest, "crop", 3)
    write_partition(part, tmp_path, manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["farm-1.csv", "farm-2.csv", "farm-3.csv", "partition.json"]
    back = read_partition(tmp_path)
    assert [(f.name, f.description, set(f.rows)) for f in back.farms] == [
        (f.name, f.description, set(f.rows)) for f in part.farms
    ]


def test_too_many_farms_for_the_photos_is_refused() -> None:
    manifest, _ = synthetic_manifest()
    with pytest.raises(DataError, match="without photos"):
        make_partition(manifest, "iid", 500)
