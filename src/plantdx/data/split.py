"""The split manifest: made once, stratified, deterministic under a seed, free of leakage.

Identical bytes, and photos of one leaf when a metadata file says so, are joined into one group; a group never
straddles splits. Groups are ordered by content hash before the seeded shuffle, so the split depends on the
images and the seed, not on the order the file system lists them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plantdx.config import DatasetConfig
from plantdx.data.scan import BLOCKING, ImageRecord, Progress, scan_dataset
from plantdx.errors import DataError

log = logging.getLogger("plantdx.data")
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_FILL_ORDER: tuple[Split, ...] = ("test", "val", "train")  # small splits first: few groups must still reach them
MANIFEST_COLUMNS = ("path", "label", "split", "sha256", "group")
GROUP_COLUMN = "leaf_group_hint"


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    split: Split
    sha256: str
    group: str


@dataclass(frozen=True)
class Manifest:
    rows: tuple[ManifestRow, ...]

    @property
    def classes(self) -> list[str]:
        """Class names in a fixed order: index = model output column."""
        return sorted({r.label for r in self.rows})

    def split(self, name: Split) -> list[ManifestRow]:
        return [r for r in self.rows if r.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in self.classes}
        for row in self.rows:
            table[row.label][row.split] += 1
        return table

    @property
    def digest(self) -> str:
        """Hash of the manifest's content: the data version a run or a bundle records."""
        h = hashlib.sha256()
        for row in sorted(self.rows, key=lambda r: r.path):
            h.update(f"{row.path},{row.label},{row.split},{row.sha256}\n".encode())
        return h.hexdigest()

    @property
    def test_digest(self) -> str:
        """Hash of the test split alone: two models are comparable when it matches, even if training data grew."""
        h = hashlib.sha256()
        for row in sorted(self.split("test"), key=lambda r: r.sha256):
            h.update(f"{row.label},{row.sha256}\n".encode())
        return h.hexdigest()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def read_group_hints(metadata: Path) -> dict[str, str]:
    """``path -> leaf_group_hint`` from a metadata CSV (the shared PlantVillage folder ships one)."""
    with metadata.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "path" not in reader.fieldnames or GROUP_COLUMN not in reader.fieldnames:
            raise DataError(f"{metadata} needs the columns 'path' and '{GROUP_COLUMN}'")
        return {row["path"]: row[GROUP_COLUMN] for row in reader if row[GROUP_COLUMN]}


def _groups(records: Sequence[ImageRecord], hints: Mapping[str, str]) -> list[list[int]]:
    uf = _UnionFind(len(records))
    first_by_key: dict[str, int] = {}
    for i, record in enumerate(records):
        keys = [f"sha:{record.sha256}"]
        if record.path in hints:
            # Scoped by class: one physical leaf has one label, and series names recur across crops.
            keys.append(f"leaf:{record.label}|{hints[record.path]}")
        for key in keys:
            if key in first_by_key:
                uf.union(first_by_key[key], i)
            else:
                first_by_key[key] = i
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(len(records)):
        members[uf.find(i)].append(i)
    return list(members.values())


def make_manifest(
    records: Sequence[ImageRecord],
    *,
    seed: int = 42,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    group_hints: Mapping[str, str] | None = None,
    max_per_class: int | None = None,
) -> Manifest:
    """Assign every image to train/val/test, class by class, whole groups at a time."""
    if not records:
        raise DataError("no usable images to split")
    hints = group_hints or {}
    groups = _groups(records, hints)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for members in groups:
        label = Counter(records[i].label for i in members).most_common(1)[0][0]
        by_label[label].append(members)

    fractions: dict[Split, float] = {
        "train": 1.0 - val_fraction - test_fraction,
        "val": val_fraction,
        "test": test_fraction,
    }
    rows: list[ManifestRow] = []
    for label in sorted(by_label):
        comps = sorted(by_label[label], key=lambda m: min(records[i].sha256 for i in m))
        random.Random(f"{seed}:{label}").shuffle(comps)
        if max_per_class is not None:
            comps = _take(comps, max_per_class)
        total = sum(len(m) for m in comps)
        target: dict[Split, float] = {s: fractions[s] * total for s in SPLITS}
        filled: dict[Split, int] = dict.fromkeys(SPLITS, 0)
        chosen: list[Split] = []
        for members in comps:
            split = max(_FILL_ORDER, key=lambda s: (target[s] - filled[s]) / max(target[s], 1e-9))
            filled[split] += len(members)
            chosen.append(split)
        if comps and filled["train"] == 0:  # a class of one or two leaves: it must still be learned, so its first
            chosen[0] = "train"  # group trains (evaluation of it is then thin or absent, which scan warns about)
        for members, split in zip(comps, chosen, strict=True):
            group = min(records[i].sha256 for i in members)[:16]
            for i in sorted(members, key=lambda i: records[i].path):
                r = records[i]
                rows.append(ManifestRow(r.path, r.label, split, r.sha256, group))
    return Manifest(tuple(sorted(rows, key=lambda r: r.path)))


def _take(comps: list[list[int]], limit: int) -> list[list[int]]:
    taken: list[list[int]] = []
    n = 0
    for members in comps:
        if n >= limit:
            break
        taken.append(members)
        n += len(members)
    return taken


def write_manifest(manifest: Manifest, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        for r in manifest.rows:
            writer.writerow((r.path, r.label, r.split, r.sha256, r.group))
    return path


def read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"manifest {path} lacks the columns {sorted(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise DataError(f"manifest {path} line {line}: split {row['split']!r} is not one of {SPLITS}")
            rows.append(ManifestRow(row["path"], row["label"], row["split"], row["sha256"], row["group"]))  # type: ignore[arg-type]
    if not rows:
        raise DataError(f"manifest {path} lists no images")
    return Manifest(tuple(rows))


def check_no_leakage(manifest: Manifest) -> list[str]:
    """Hashes or groups found in more than one split (empty when the manifest is clean)."""
    seen: dict[str, set[str]] = defaultdict(set)
    for row in manifest.rows:
        seen[f"sha256 {row.sha256}"].add(row.split)
        seen[f"group {row.group}"].add(row.split)
    return sorted(key for key, splits in seen.items() if len(splits) > 1)


def manifest_for(cfg: DatasetConfig, *, progress: Progress | None = None) -> Manifest:
    """The configured manifest if there is one, else a fresh split of the scanned folder.

    Blocking data problems (corrupt files, empty classes) fail here, before any training starts.
    """
    made_with = {key: getattr(cfg, key) for key in SPLIT_SETTINGS}
    if cfg.manifest is not None and cfg.manifest.is_file():
        manifest = read_manifest(cfg.manifest)
        record = split_record(cfg.manifest)
        if record.is_file():  # one plantdx made: the settings that only shape the split must still be in force
            recorded = json.loads(record.read_text())
            changed = {k: v for k, v in made_with.items() if recorded.get(k) != v}
            if changed.keys() - {"seed"}:
                listed = ", ".join(f"{k}: {recorded.get(k)} -> {v}" for k, v in changed.items())
                raise DataError(
                    f"{cfg.manifest} was split with other settings ({listed}), which it would silently "
                    "override; use the settings it was made with, or delete it to split again"
                )
            if changed:  # the seed also draws train_fraction's share and the sampler's order: those may change
                log.warning(
                    f"{cfg.manifest} keeps the split of seed {recorded.get('seed')}; seed {cfg.seed} "
                    "applies to the rest (train_fraction's share, sampling)"
                )
        return manifest
    report = scan_dataset(cfg.root, min_images_per_class=cfg.min_images_per_class, progress=progress)
    blocking = [i for i in report.issues if i.kind in BLOCKING]
    if blocking:
        shown = "; ".join(f"{i.path}: {i.detail}" for i in blocking[:3])
        more = f" (and {len(blocking) - 3} more)" if len(blocking) > 3 else ""
        raise DataError(f"{len(blocking)} unusable files in {cfg.root}: {shown}{more}; run `plantdx data check`")
    metadata = cfg.metadata or (cfg.root / "metadata.csv")
    hints = read_group_hints(metadata) if metadata.is_file() else {}
    manifest = make_manifest(
        report.records,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        group_hints=hints,
        max_per_class=cfg.max_per_class,
    )
    if cfg.manifest is not None:
        write_manifest(manifest, cfg.manifest)
        split_record(cfg.manifest).write_text(json.dumps(made_with) + "\n")
    return manifest


SPLIT_SETTINGS = ("seed", "val_fraction", "test_fraction", "max_per_class", "min_images_per_class")


def split_record(manifest_path: Path) -> Path:
    """Beside a manifest plantdx wrote: the settings that made the split (``manifest.csv.split.json``)."""
    return manifest_path.with_name(manifest_path.name + ".split.json")
