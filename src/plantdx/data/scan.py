"""Find the images of a class-folder dataset and say what is wrong with it before training does.

Pure Python + PIL: no torch, so monitoring and the CLI's ``data`` commands stay light.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from plantdx.config import NONLEAF, DatasetConfig
from plantdx.digest import sha256_file
from plantdx.errors import DataError

IMAGE_EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
# Files that are plainly not data and would only add noise to the report.
IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini", "README.md", "MANIFEST.sha256", "metadata.csv"}

IssueKind = Literal[
    "corrupt",
    "not_an_image",
    "unsupported_format",
    "format_mismatch",
    "empty_class",
    "tiny_class",
    "duplicate",
    "stray_file",
    "bad_class_name",
]
# Problems that make an image unusable; the others are warnings a person should read.
BLOCKING = {"corrupt", "not_an_image", "unsupported_format", "empty_class"}

Progress = Callable[[int, int], None]


NOT_A_LEAF = "not_a_leaf"  # the one class every photo of a ``nonleaf`` root is learnt as


@dataclass(frozen=True)
class ImageRecord:
    path: str  # relative to its root, POSIX separators
    label: str
    sha256: str
    root: str = ""  # the root's name (``DataRoot.key``)
    domain: str = "lab"


@dataclass(frozen=True)
class DataIssue:
    kind: IssueKind
    path: str
    detail: str


@dataclass
class DataReport:
    root: Path
    records: list[ImageRecord]
    issues: list[DataIssue] = field(default_factory=list)
    domain: str = "lab"

    @property
    def class_counts(self) -> dict[str, int]:
        counts = Counter(r.label for r in self.records)
        return dict(sorted(counts.items()))

    @property
    def ok(self) -> bool:
        return not self.issues


def verify_image(path: Path) -> DataIssue | None:
    """Fully decode the file: ``Image.verify`` alone misses truncated JPEG data."""
    rel = path.name
    expected = IMAGE_EXTENSIONS.get(path.suffix.lower())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                actual = img.format
                img.load()
    except UnidentifiedImageError:
        return DataIssue("not_an_image", rel, "the file is not an image PIL can read")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return DataIssue("corrupt", rel, f"cannot decode: {exc}")
    if actual not in set(IMAGE_EXTENSIONS.values()):
        return DataIssue("unsupported_format", rel, f"{actual} image; plantdx reads JPEG, PNG and WebP")
    if expected is not None and actual != expected:
        return DataIssue("format_mismatch", rel, f"named {path.suffix} but holds {actual}")
    return None


def scan_dataset(
    root: Path,
    *,
    min_images_per_class: int = 10,
    verify: bool = True,
    progress: Progress | None = None,
    key: str = "",
    domain: str = "lab",
) -> DataReport:
    """List every image under ``root/<Class>/`` with its hash, and every problem found on the way.

    A ``nonleaf`` root's folders are categories of photos that are not leaves: every image is labelled
    ``NOT_A_LEAF``, and folder names and sizes are not checked as classes.
    """
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    nonleaf = domain == NONLEAF
    issues: list[DataIssue] = []
    candidates: list[tuple[Path, str]] = []
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for stray in sorted(p for p in root.iterdir() if p.is_file() and p.name not in IGNORED_NAMES):
        issues.append(DataIssue("stray_file", stray.name, "file outside any class folder"))
    if not class_dirs:
        raise DataError(f"no class folders in {root}; expected one folder per class, e.g. Tomato___healthy/")
    for class_dir in class_dirs:
        if "___" not in class_dir.name and not nonleaf:
            issues.append(DataIssue("bad_class_name", class_dir.name, "expected PlantVillage naming Crop___Disease"))
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.name not in IGNORED_NAMES)
        if not files and not nonleaf:
            issues.append(DataIssue("empty_class", class_dir.name, "class folder holds no files"))
        candidates.extend((f, NOT_A_LEAF if nonleaf else class_dir.name) for f in files)

    records: list[ImageRecord] = []
    for index, (path, label) in enumerate(candidates, start=1):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            issues.append(
                DataIssue("unsupported_format", rel, f"extension {path.suffix or '(none)'} is not JPEG/PNG/WebP")
            )
        else:
            problem = verify_image(path) if verify else None
            if problem is not None:
                issues.append(DataIssue(problem.kind, rel, problem.detail))
            if problem is None or problem.kind not in BLOCKING:
                records.append(ImageRecord(rel, label, sha256_file(path), key, domain))
        if progress is not None:
            progress(index, len(candidates))

    issues.extend(_duplicates(records))
    counts = Counter(r.label for r in records)
    for class_dir in [] if nonleaf else class_dirs:
        n = counts.get(class_dir.name, 0)
        if 0 < n < min_images_per_class:
            issues.append(
                DataIssue("tiny_class", class_dir.name, f"{n} usable images, fewer than {min_images_per_class}")
            )
        elif n == 0 and not any(i.kind == "empty_class" and i.path == class_dir.name for i in issues):
            issues.append(DataIssue("empty_class", class_dir.name, "no usable images"))
    return DataReport(root=root, records=records, issues=issues, domain=domain)


def scan_roots(cfg: DatasetConfig, *, verify: bool = True, progress: Progress | None = None) -> list[DataReport]:
    """``scan_dataset`` of every configured root, in order; ``progress`` hears the images of all of them."""
    reports: list[DataReport] = []
    done = 0
    for r in cfg.root:

        def step(i: int, n: int, before: int = done) -> None:
            if progress is not None:
                progress(before + i, before + n)

        report = scan_dataset(
            r.path,
            min_images_per_class=cfg.min_images_per_class,
            verify=verify,
            progress=step,
            key=r.key,
            domain=r.domain,
        )
        done += len(report.records)
        reports.append(report)
    return reports


def duplicates_across(reports: Sequence[DataReport]) -> list[DataIssue]:
    """Identical bytes in two roots (each root reports its own): the split keeps them on one side."""
    first: dict[str, tuple[str, ImageRecord]] = {}
    issues = []
    for report in reports:
        for record in report.records:
            seen = first.get(record.sha256)
            if seen is None:
                first[record.sha256] = (record.root, record)
            elif seen[0] != record.root:
                issues.append(
                    DataIssue(
                        "duplicate",
                        f"{record.root}/{record.path}",
                        f"same bytes as {seen[0]}/{seen[1].path}; kept in one split",
                    )
                )
    return issues


def _duplicates(records: Sequence[ImageRecord]) -> list[DataIssue]:
    by_hash: dict[str, list[ImageRecord]] = defaultdict(list)
    for record in records:
        by_hash[record.sha256].append(record)
    issues = []
    for same in by_hash.values():
        if len(same) > 1:
            labels = {r.label for r in same}
            where = "in different classes" if len(labels) > 1 else "in one class"
            for dup in same[1:]:
                issues.append(
                    DataIssue("duplicate", dup.path, f"same bytes as {same[0].path} ({where}); kept in one split")
                )
    return issues
