"""The farms' shares of the training split: realistic partitions, leaf groups kept whole, written as manifests.

Validation and test stay central (the server scores every round on them); only training photos are dealt out. A
split group (one leaf's photos, one web photo's copies) always goes to one farm, as it goes to one split, so no farm
trains on a leaf another farm also has. Every scheme is deterministic under the seed, and what it made is written
as one manifest per farm plus ``partition.json``, so a run can be repeated and a farm's data audited.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from plantdx.config import DatasetConfig
from plantdx.data.split import Manifest, ManifestRow, read_manifest, read_metadata, write_manifest
from plantdx.errors import DataError

SCHEMES = ("iid", "crop", "series", "source", "dirichlet")
PARTITION_FILE = "partition.json"


@dataclass(frozen=True)
class Farm:
    name: str
    description: str
    rows: tuple[ManifestRow, ...]

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.rows).items()))


@dataclass(frozen=True)
class Partition:
    scheme: str
    seed: int
    farms: tuple[Farm, ...]
    alpha: float | None = None

    def farm(self, name: str) -> Farm:
        for farm in self.farms:
            if farm.name == name:
                return farm
        raise DataError(f"the partition has no farm {name!r} ({', '.join(f.name for f in self.farms)})")


def crop_of(label: str) -> str | None:
    """``Tomato___Early_blight`` -> ``Tomato``; a label without the PlantVillage form (not a leaf) has none."""
    crop, sep, _ = label.partition("___")
    return crop if sep else None


def _groups(rows: Iterable[ManifestRow]) -> list[list[ManifestRow]]:
    """The split's groups (``group`` column), in a fixed order: what may never be cut between farms."""
    by_group: dict[str, list[ManifestRow]] = defaultdict(list)
    for row in rows:
        by_group[f"{row.root}|{row.group}"].append(row)
    return [sorted(m, key=lambda r: (r.root, r.path)) for _, m in sorted(by_group.items())]


def _label(group: Sequence[ManifestRow]) -> str:
    return Counter(r.label for r in group).most_common(1)[0][0]


def _deal(groups: Sequence[list[ManifestRow]], farms: Sequence[int], bins: list[list[ManifestRow]], seed: str) -> None:
    """IID: each class's groups, shuffled, go one by one to the farm holding fewest of that class (then fewest in all),
    so every farm gets about the same share of every class."""
    by_label: dict[str, list[list[ManifestRow]]] = defaultdict(list)
    for group in groups:
        by_label[_label(group)].append(group)
    for label in sorted(by_label):
        members = by_label[label]
        random.Random(f"{seed}:{label}").shuffle(members)
        held = dict.fromkeys(farms, 0)
        for group in members:
            farm = min(farms, key=lambda f: (held[f], len(bins[f]), f))
            held[farm] += len(group)
            bins[farm].extend(group)


def _whole_units(units: Mapping[str, list[list[ManifestRow]]], n: int, bins: list[list[ManifestRow]]) -> list[set[str]]:
    """Whole units (crops, series), largest first, each to the farm with fewest photos so far."""
    held: list[set[str]] = [set() for _ in range(n)]
    for unit in sorted(units, key=lambda u: (-sum(len(g) for g in units[u]), u)):
        farm = min(range(n), key=lambda f: (len(bins[f]), f))
        held[farm].add(unit)
        for group in units[unit]:
            bins[farm].extend(group)
    return held


def _apportion(sizes: Mapping[str, int], n: int) -> dict[str, int]:
    """Farms per unit, proportional to its photos, at least one each (largest remainder)."""
    total = sum(sizes.values())
    quota = {u: n * s / total for u, s in sizes.items()}
    share = {u: max(1, int(q)) for u, q in quota.items()}
    while sum(share.values()) < n:
        unit = max(quota, key=lambda u: (quota[u] - share[u], u))
        share[unit] += 1
    while sum(share.values()) > n:
        unit = max((u for u in share if share[u] > 1), key=lambda u: (share[u] - quota[u], u))
        share[unit] -= 1
    return share


def _dirichlet(
    groups: Sequence[list[ManifestRow]], n: int, alpha: float, seed: int, bins: list[list[ManifestRow]]
) -> None:
    """Label skew: each class's photos are shared out in proportions drawn from Dirichlet(alpha, ..., alpha)."""
    by_label: dict[str, list[list[ManifestRow]]] = defaultdict(list)
    for group in groups:
        by_label[_label(group)].append(group)
    for label in sorted(by_label):
        rng = random.Random(f"{seed}:dirichlet:{label}")
        draws = [rng.gammavariate(alpha, 1.0) for _ in range(n)]
        total = sum(draws) or 1.0
        edges, acc = [], 0.0
        for d in draws:
            acc += d / total
            edges.append(acc)
        members = by_label[label]
        rng.shuffle(members)
        size = sum(len(g) for g in members)
        seen = 0
        for group in members:
            middle = (seen + len(group) / 2) / size
            farm = next((f for f, edge in enumerate(edges) if middle <= edge), n - 1)
            seen += len(group)
            bins[farm].extend(group)


def series_of(cfg: DatasetConfig) -> dict[tuple[str, str], str]:
    """``(root, path) -> series`` from each root's ``metadata.csv`` (the PlantVillage folders record the session)."""
    found: dict[tuple[str, str], str] = {}
    for root in cfg.root:
        table = cfg.metadata if cfg.metadata is not None and len(cfg.root) == 1 else root.path / "metadata.csv"
        if table.is_file():
            found |= {(root.key, p): m["series"] for p, m in read_metadata(table).items() if m.get("series")}
    return found


def make_partition(
    manifest: Manifest,
    scheme: str,
    farms: int,
    *,
    seed: int = 42,
    alpha: float = 0.5,
    series: Mapping[tuple[str, str], str] | None = None,
) -> Partition:
    """Deal the training split of ``manifest`` out to ``farms`` farms by ``scheme`` (see ``SCHEMES``)."""
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition {scheme!r}: one of {', '.join(SCHEMES)}")
    groups = _groups(manifest.split("train"))
    if not groups:
        raise DataError("the manifest has no training images to partition")
    bins: list[list[ManifestRow]] = [[] for _ in range(farms)]
    everyone = list(range(farms))
    names = [f"farm-{i + 1}" for i in range(farms)]
    descriptions = ["an IID share"] * farms
    if scheme == "iid":
        _deal(groups, everyone, bins, f"{seed}:iid")
    elif scheme == "crop":
        crops: dict[str, list[list[ManifestRow]]] = defaultdict(list)
        others: list[list[ManifestRow]] = []
        for group in groups:
            crop = crop_of(_label(group))
            (crops[crop] if crop else others).append(group)
        if farms <= len(crops):
            held = _whole_units(crops, farms, bins)
            descriptions = [" + ".join(sorted(h)) or "no crop" for h in held]
        else:
            share = _apportion({c: sum(len(g) for g in m) for c, m in crops.items()}, farms)
            start = 0
            for crop in sorted(crops):
                mine = list(range(start, start + share[crop]))
                _deal(crops[crop], mine, bins, f"{seed}:crop:{crop}")
                descriptions[start : start + share[crop]] = [crop] * share[crop]
                start += share[crop]
        _deal(others, everyone, bins, f"{seed}:crop:others")
    elif scheme == "series":
        by_series: dict[str, list[list[ManifestRow]]] = defaultdict(list)
        loose: list[list[ManifestRow]] = []
        table = series or {}
        for group in groups:
            found = next((table[(r.root, r.path)] for r in group if (r.root, r.path) in table), None)
            (by_series[found] if found else loose).append(group)
        if len(by_series) < farms:
            raise DataError(
                f"partition series needs at least {farms} photo series; the training split has {len(by_series)} "
                "(metadata.csv's `series` column)"
            )
        held = _whole_units(by_series, farms, bins)
        descriptions = [f"{len(h)} series" for h in held]
        _deal(loose, everyone, bins, f"{seed}:series:loose")
    elif scheme == "source":
        if farms < 2:
            raise DataError("partition source needs at least 2 farms: one with the field photos, the others lab")
        field = [g for g in groups if g[0].domain == "field"]
        if not field:
            raise DataError("partition source needs field photos: a dataset root with domain field (plantdoc-field)")
        bins[0] = [r for g in field for r in g]
        _deal([g for g in groups if g[0].domain != "field"], everyone[1:], bins, f"{seed}:source")
        descriptions = ["field photos"] + ["lab photos"] * (farms - 1)
    else:
        _dirichlet(groups, farms, alpha, seed, bins)
        descriptions = [f"Dirichlet({alpha}) label skew"] * farms
    empty = [names[i] for i in everyone if not bins[i]]
    if empty:
        raise DataError(f"partition {scheme} into {farms} farms leaves {', '.join(empty)} without photos")
    made = tuple(
        Farm(names[i], descriptions[i], tuple(sorted(bins[i], key=lambda r: (r.root, r.path)))) for i in everyone
    )
    return Partition(scheme, seed, made, alpha if scheme == "dirichlet" else None)


def write_partition(partition: Partition, folder: Path, source: Manifest | None = None) -> Path:
    """One manifest per farm (its training photos only) and ``partition.json``; returns the JSON's path."""
    folder.mkdir(parents=True, exist_ok=True)
    farms = []
    for farm in partition.farms:
        write_manifest(Manifest(farm.rows), folder / f"{farm.name}.csv")
        farms.append(
            {
                "name": farm.name,
                "description": farm.description,
                "manifest": f"{farm.name}.csv",
                "images": len(farm.rows),
                "classes": farm.counts(),
            }
        )
    record = {
        "scheme": partition.scheme,
        "seed": partition.seed,
        "alpha": partition.alpha,
        "source_manifest_sha256": source.digest if source is not None else None,
        "farms": farms,
    }
    path = folder / PARTITION_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_partition(folder: Path) -> Partition:
    """A partition written by ``write_partition``."""
    path = folder / PARTITION_FILE
    if not path.is_file():
        raise DataError(f"no partition at {folder}: {PARTITION_FILE} is missing")
    record = json.loads(path.read_text())
    farms = tuple(
        Farm(f["name"], f["description"], read_manifest(folder / f["manifest"]).rows) for f in record["farms"]
    )
    return Partition(record["scheme"], int(record["seed"]), farms, record.get("alpha"))
