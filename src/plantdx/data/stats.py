"""Describe a dataset from image headers alone (fast: nothing is decoded)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from plantdx.config import NONLEAF
from plantdx.data.scan import IGNORED_NAMES, IMAGE_EXTENSIONS, NOT_A_LEAF, Progress
from plantdx.errors import DataError


@dataclass(frozen=True)
class DatasetStats:
    class_counts: dict[str, int]
    formats: dict[str, int]
    sizes: dict[str, int]
    total_bytes: int
    unreadable: int  # image files that do not open
    other_files: int = 0  # files that are not images (not counted anywhere else)

    @property
    def images(self) -> int:
        return sum(self.class_counts.values())

    @property
    def imbalance_ratio(self) -> float:
        counts = [n for n in self.class_counts.values() if n]
        return max(counts) / min(counts) if counts else 0.0


def dataset_stats(root: Path, *, domain: str = "lab", progress: Progress | None = None) -> DatasetStats:
    """Counts from headers; a ``nonleaf`` root's categories all count as the one class they are learnt as."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    found = [
        (p, d.name)
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name not in IGNORED_NAMES
    ]
    files = [(p, label) for p, label in found if p.suffix.lower() in IMAGE_EXTENSIONS]
    classes: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    total = unreadable = 0
    for i, (path, label) in enumerate(files, start=1):
        total += path.stat().st_size
        try:
            with Image.open(path) as img:
                formats[img.format or "?"] += 1
                sizes[f"{img.width}x{img.height}"] += 1
                classes[NOT_A_LEAF if domain == NONLEAF else label] += 1
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            unreadable += 1
        if progress is not None:
            progress(i, len(files))
    return DatasetStats(
        class_counts=dict(sorted(classes.items())),
        formats=dict(formats.most_common()),
        sizes=dict(sizes.most_common(5)),
        total_bytes=total,
        unreadable=unreadable,
        other_files=len(found) - len(files),
    )
