"""The split manifest over one or more roots: made once, stratified, deterministic under a seed, free of leakage.

Identical bytes (in any roots), photos of one leaf (``leaf_group_hint``), copies of one web photo
(``near_duplicate_group``) and the photos of one non-leaf category are joined into one group, and with
``split_by: series`` so are the photos of one session (a series and a block of its photo numbers); a group never
straddles splits. Each domain (lab, field, ...) is split class by class with its own fractions. Groups are ordered
by content hash before the seeded shuffle, so the split depends on the images and the seed, not on the order the
file system lists them.
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

from plantdx.config import NONLEAF, DataRoot, DatasetConfig
from plantdx.data.scan import BLOCKING, ImageRecord, Progress, scan_roots
from plantdx.errors import DataError
from plantdx.scores import domain_order

log = logging.getLogger("plantdx.data")
Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
_FILL_ORDER: tuple[Split, ...] = ("test", "val", "train")  # small splits first: few groups must still reach them
MANIFEST_COLUMNS = ("path", "label", "split", "sha256", "group", "root", "domain")
REQUIRED_COLUMNS = MANIFEST_COLUMNS[:5]  # a one-root manifest from before roots were recorded lacks the last two
GROUP_COLUMN = "leaf_group_hint"
METADATA_COLUMNS = ("leaf_group_hint", "near_duplicate_group", "series", "photo_no")


@dataclass(frozen=True)
class ManifestRow:
    path: str  # relative to its root (or absolute: feedback photos)
    label: str
    split: Split
    sha256: str
    group: str
    root: str = ""  # the root's name; "" in a one-root manifest from before roots were recorded
    domain: str = "lab"


@dataclass(frozen=True)
class Manifest:
    rows: tuple[ManifestRow, ...]

    @property
    def classes(self) -> list[str]:
        """Class names in a fixed order: index = model output column."""
        return sorted({r.label for r in self.rows})

    def split(self, name: Split, domain: str | None = None) -> list[ManifestRow]:
        return [r for r in self.rows if r.split == name and (domain is None or r.domain == domain)]

    @property
    def domains(self) -> list[str]:
        """The domains in the manifest: lab, field, a user's own (by name), then the photos that are not leaves."""
        return sorted({r.domain for r in self.rows}, key=domain_order)

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in self.classes}
        for row in self.rows:
            table[row.label][row.split] += 1
        return table

    @property
    def digest(self) -> str:
        """Hash of the manifest's content: the data version a run or a bundle records."""
        h = hashlib.sha256()
        for row in sorted(self.rows, key=lambda r: (r.root, r.path)):
            h.update(f"{row.root}/{row.path},{row.label},{row.split},{row.sha256}\n".encode())
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


def read_metadata(metadata: Path) -> dict[str, dict[str, str]]:
    """``path -> {leaf_group_hint, near_duplicate_group, series, photo_no}`` (those present) from a root's metadata
    CSV: the shared PlantVillage folders give leaves and series, the field photos their near-duplicate groups."""
    with metadata.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = [c for c in METADATA_COLUMNS if c in (reader.fieldnames or ())]
        if reader.fieldnames is None or "path" not in reader.fieldnames or not columns:
            raise DataError(f"{metadata} needs a 'path' column and one of {', '.join(METADATA_COLUMNS)}")
        return {row["path"]: {c: row[c] for c in columns if row[c]} for row in reader}


def read_group_hints(metadata: Path) -> dict[str, str]:
    """``path -> leaf_group_hint`` from a metadata CSV (the shared PlantVillage folders ship one)."""
    return {p: m[GROUP_COLUMN] for p, m in read_metadata(metadata).items() if GROUP_COLUMN in m}


def series_runs(
    records: Sequence[ImageRecord],
    metadata: Mapping[tuple[str, str], Mapping[str, str]],
    groups: Sequence[Sequence[int]],
    blocks: int,
) -> dict[int, int]:
    """Record index -> which of ``blocks`` runs of its (class, series) it is in, whole groups at a time.

    Most PlantVillage classes are one series (one session): holding out whole series would leave them no test
    photos, so each series is cut into runs of consecutive photo numbers. A run is made of whole leaf groups, in
    photo-number order, so no leaf straddles two runs (which would chain every run of a series into one).
    """
    numbered: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
    for g, members in enumerate(groups):
        first = records[members[0]]
        numbers, series = [], None
        for i in members:
            meta = metadata.get((records[i].root, records[i].path), {})
            try:
                numbers.append(float(meta.get("photo_no", "")))
                series = series or meta.get("series")
            except ValueError:
                continue
        if numbers and series:
            numbered[(first.label, series)].append((min(numbers), g))
    runs: dict[int, int] = {}
    for ordered in numbered.values():
        ordered.sort()
        total = sum(len(groups[g]) for _, g in ordered)
        seen = 0
        for _, g in ordered:
            run = seen * blocks // total
            seen += len(groups[g])
            runs.update(dict.fromkeys(groups[g], run))
    return runs


def group_keys(record: ImageRecord, meta: Mapping[str, str], run: int | None) -> list[str]:
    """What joins ``record`` to others that must share its split. Keys are scoped so that two roots' leaves join
    (one leaf photographed for both PlantVillage folders) but unrelated ids do not (``g1`` of two sources)."""
    keys = [f"sha:{record.sha256}"]
    if meta.get("leaf_group_hint"):  # by class too: one physical leaf has one label, and series names recur
        keys.append(f"leaf:{record.label}|{meta['leaf_group_hint']}")
    if meta.get("near_duplicate_group"):
        keys.append(f"dup:{record.root}|{meta['near_duplicate_group']}")
    if record.domain == NONLEAF:  # a category is held out whole: test shows kinds of photo training never did
        keys.append(f"category:{record.root}|{record.path.split('/')[0]}")
    if run is not None:
        keys.append(f"series:{record.label}|{meta.get('series')}|{run}")
    return keys


def _groups(records: Sequence[ImageRecord], keys_of: Sequence[Sequence[str]]) -> list[list[int]]:
    uf = _UnionFind(len(records))
    first_by_key: dict[str, int] = {}
    for i, keys in enumerate(keys_of):
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
    metadata: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
    root_fractions: Mapping[str, tuple[float, float]] | None = None,
    max_per_class: int | None = None,
    split_by: str = "leaf",
    series_blocks: int = 20,
) -> Manifest:
    """Assign every image to train/val/test, domain by domain and class by class, whole groups at a time.

    ``metadata`` is keyed by (root, path); ``group_hints`` (path -> leaf group) is the one-root shorthand.
    ``root_fractions`` gives a root its own (val, test) shares.
    """
    if not records:
        raise DataError("no usable images to split")
    meta: dict[tuple[str, str], Mapping[str, str]] = dict(metadata or {})
    for path, hint in (group_hints or {}).items():
        meta.setdefault(("", path), {GROUP_COLUMN: hint})
    keys_of = [group_keys(r, meta.get((r.root, r.path), {}), None) for r in records]
    groups = _groups(records, keys_of)
    if split_by == "series":  # then whole runs of each session, made of those groups
        runs = series_runs(records, meta, groups, series_blocks)
        keys_of = [group_keys(r, meta.get((r.root, r.path), {}), runs.get(i)) for i, r in enumerate(records)]
        groups = _groups(records, keys_of)
    by_stratum: dict[tuple[str, str, str], list[list[int]]] = defaultdict(list)
    for members in groups:
        stratum = Counter((records[i].domain, records[i].root, records[i].label) for i in members).most_common(1)
        domain, root, label = stratum[0][0]
        # one stratum per (domain, label); the root only matters for its own fractions
        by_stratum[(domain, label, root if root_fractions and root in root_fractions else "")].append(members)

    rows: list[ManifestRow] = []
    for domain, label, root in sorted(by_stratum):
        val, test = (root_fractions or {}).get(root, (val_fraction, test_fraction))
        fractions: dict[Split, float] = {"train": 1.0 - val - test, "val": val, "test": test}
        comps = sorted(by_stratum[(domain, label, root)], key=lambda m: min(records[i].sha256 for i in m))
        random.Random(f"{seed}:{label}" if domain == "lab" else f"{seed}:{domain}:{label}").shuffle(comps)
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
            for i in sorted(members, key=lambda i: (records[i].root, records[i].path)):
                r = records[i]
                rows.append(ManifestRow(r.path, r.label, split, r.sha256, group, r.root, r.domain))
    return Manifest(tuple(sorted(rows, key=lambda r: (r.root, r.path))))


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
            writer.writerow((r.path, r.label, r.split, r.sha256, r.group, r.root, r.domain))
    return path


def read_manifest(path: Path) -> Manifest:
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = set(REQUIRED_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"manifest {path} lacks the columns {sorted(missing)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["split"] not in SPLITS:
                raise DataError(f"manifest {path} line {line}: split {row['split']!r} is not one of {SPLITS}")
            rows.append(
                ManifestRow(
                    row["path"],
                    row["label"],
                    row["split"],  # type: ignore[arg-type]
                    row["sha256"],
                    row["group"],
                    row.get("root") or "",
                    row.get("domain") or "lab",
                )
            )
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
            # a setting added after the manifest was made did what its default does
            defaults = {k: DatasetConfig.model_fields[k].default for k in made_with}
            changed = {k: v for k, v in made_with.items() if recorded.get(k, defaults[k]) != v}
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
    reports = scan_roots(cfg, progress=progress)
    default = (cfg.val_fraction, cfg.test_fraction)
    blocking = [(r.root, i) for r in reports for i in r.issues if i.kind in BLOCKING]
    if blocking:
        shown = "; ".join(f"{root}/{i.path}: {i.detail}" for root, i in blocking[:3])
        more = f" (and {len(blocking) - 3} more)" if len(blocking) > 3 else ""
        raise DataError(f"{len(blocking)} unusable files: {shown}{more}; run `plantdx data check`")
    metadata: dict[tuple[str, str], dict[str, str]] = {}
    for r in cfg.root:
        table = cfg.metadata if cfg.metadata is not None and len(cfg.root) == 1 else r.path / "metadata.csv"
        if table.is_file():
            metadata |= {(r.key, path): m for path, m in read_metadata(table).items()}
    manifest = make_manifest(
        [record for report in reports for record in report.records],
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
        metadata=metadata,
        root_fractions={r.key: root_fractions(cfg, r) for r in cfg.root if root_fractions(cfg, r) != default},
        max_per_class=cfg.max_per_class,
        split_by=cfg.split_by,
        series_blocks=cfg.series_blocks,
    )
    if cfg.manifest is not None:
        write_manifest(manifest, cfg.manifest)
        split_record(cfg.manifest).write_text(json.dumps(made_with) + "\n")
    return manifest


def root_fractions(cfg: DatasetConfig, root: DataRoot) -> tuple[float, float]:
    """A root's (val, test) shares: its own, else its domain's (``domain_fractions``), else the dataset's."""
    val, test = cfg.domain_fractions.get(root.domain, (cfg.val_fraction, cfg.test_fraction))
    return root.val_fraction or val, root.test_fraction or test


SPLIT_SETTINGS = (
    "seed",
    "val_fraction",
    "test_fraction",
    "max_per_class",
    "min_images_per_class",
    "split_by",
    "series_blocks",
    "domain_fractions",
)


def split_record(manifest_path: Path) -> Path:
    """Beside a manifest plantdx wrote: the settings that made the split (``manifest.csv.split.json``)."""
    return manifest_path.with_name(manifest_path.name + ".split.json")
