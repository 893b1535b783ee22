"""Torch datasets and the LightningDataModule over a split manifest."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

import albumentations as A
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from plantdx.config import NONLEAF, DatasetConfig
from plantdx.data.split import Manifest, ManifestRow, Split
from plantdx.data.transforms import BoardSwap, create_eval_transform, create_train_transform
from plantdx.errors import DataError
from plantdx.images import load_rgb, resize_for_model


def seed_worker(worker_id: int) -> None:  # noqa: ARG001 (DataLoader passes it)
    """Give each loader worker its own, reproducible augmentation stream (torch derives ``info.seed``)."""
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, LeafDataset):
        info.dataset.transform.set_random_seed(info.seed % 2**32)
        if info.dataset.board_swap is not None:
            info.dataset.board_swap.reseed(info.seed % 2**32 + 1)


class ImageCache:
    """Decoded, resized images kept in memory.

    On two cores JPEG decoding costs as much as a small model's training step; decoding once and keeping the
    ``resize_to`` version (146 px for 128 px training) makes an epoch after the first one nearly decode-free.
    Filled in the main process before the loaders fork, so workers share the pages.
    """

    def __init__(self, cfg: DatasetConfig, size: int, interpolation: str, crop: int | None = None) -> None:
        self.cfg = cfg
        self.size = size
        self.crop = crop if crop is not None else -1
        self.interpolation = interpolation
        self._images: dict[tuple[str, str], np.ndarray] = {}

    def get(self, row: ManifestRow) -> np.ndarray:
        image = self._images.get((row.root, row.path))
        if image is None:
            image = self.load(row)
            self._images[(row.root, row.path)] = image
        return image

    def load(self, row: ManifestRow) -> np.ndarray:
        photo = load_rgb(self.cfg.locate(row.root, row.path), self.size)
        return resize_for_model(photo, self.size, self.crop, self.interpolation)

    def put(self, row: ManifestRow, image: np.ndarray) -> None:
        """Keep an image decoded elsewhere (a federated farm's per-run cache file)."""
        self._images[(row.root, row.path)] = image

    def fill(self, rows: Sequence[ManifestRow]) -> None:
        for row in rows:
            self.get(row)

    def __len__(self) -> int:
        return len(self._images)


class LeafDataset(Dataset[tuple[torch.Tensor, int]]):
    def __init__(
        self,
        rows: Sequence[ManifestRow],
        classes: Sequence[str],
        transform: A.Compose,
        cache: ImageCache,
        *,
        use_cache: bool = True,
        board_swap: BoardSwap | None = None,
    ) -> None:
        self.rows = list(rows)
        self.index = {name: i for i, name in enumerate(classes)}
        self.transform = transform
        self.cache = cache
        self.use_cache = use_cache
        self.board_swap = board_swap  # lab photos only

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.rows[i]
        image = self.cache.get(row) if self.use_cache else self.cache.load(row)
        if self.board_swap is not None and row.domain == "lab":
            image = self.board_swap(image)
        tensor = self.transform(image=image)["image"]
        return tensor, self.index[row.label]

    @property
    def targets(self) -> list[int]:
        return [self.index[r.label] for r in self.rows]


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights with mean 1, so a 114-image class counts as much as a 400-image one."""
    counts = Counter(targets)
    n = len(targets)
    weights = [n / (num_classes * counts[c]) if counts.get(c) else 0.0 for c in range(num_classes)]
    return torch.tensor(weights, dtype=torch.float32)


def sample_weights(rows: Sequence[ManifestRow], domain_weights: dict[str, float] | None) -> list[float]:
    """How likely each training image is drawn: classes equally likely within a domain, and each domain its
    ``domain_weights`` share of the draws (without them: every domain as many draws as it has images). 614 field
    photos are then not drowned by 12,501 lab ones, nor 1,000 photos of a class by the 116 of another."""
    per_domain = Counter(r.domain for r in rows)
    per_class = Counter((r.domain, r.label) for r in rows)
    classes = Counter(d for d, _ in per_class)
    if domain_weights is not None:
        unknown = sorted(set(per_domain) - set(domain_weights))
        if unknown:
            raise DataError(f"dataset.domain_weights has no share for the domain(s) {', '.join(unknown)}")
        total = sum(domain_weights[d] for d in per_domain)
        share = {d: domain_weights[d] / total for d in per_domain}
    else:
        share = {d: n / len(rows) for d, n in per_domain.items()}
    return [share[r.domain] / classes[r.domain] / per_class[(r.domain, r.label)] for r in rows]


def training_rows(cfg: DatasetConfig, manifest: Manifest) -> list[ManifestRow]:
    """The images a model learns from: the train split, with the validation images too for a refit
    (``train_on_val``), and only ``train_fraction`` of each class (``domain_train_fraction`` of a domain's) for a
    learning curve.

    The share is drawn per class in a fixed order (a hash of the seed and the path), so a smaller share is a subset
    of a larger one and every run with the same settings sees the same images.
    """
    rows = manifest.split("train") + (manifest.split("val") if cfg.train_on_val else [])

    def share(row: ManifestRow) -> float:
        return cfg.domain_train_fraction.get(row.domain, cfg.train_fraction)

    if all(share(r) >= 1.0 for r in rows):
        return rows
    kept: list[ManifestRow] = []
    for domain, label in sorted({(r.domain, r.label) for r in rows}):
        of_class = sorted(
            (r for r in rows if r.label == label and r.domain == domain),
            key=lambda r: hashlib.sha256(f"{cfg.seed}:{r.path}".encode()).hexdigest(),
        )
        kept += of_class[: max(1, round(share(of_class[0]) * len(of_class)))]
    return sorted(kept, key=lambda r: (r.root, r.path))


class PlantDataModule(L.LightningDataModule):
    def __init__(self, cfg: DatasetConfig, manifest: Manifest) -> None:
        super().__init__()
        self.cfg = cfg
        self.manifest = manifest
        self.classes = manifest.classes
        self.cache = ImageCache(cfg, cfg.resize_to, cfg.interpolation, crop=cfg.image_size)
        self.datasets: dict[Split, LeafDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def dataset(self, split: Split) -> LeafDataset:
        if split not in self.datasets:
            transform = create_train_transform(self.cfg) if split == "train" else create_eval_transform(self.cfg)
            rows = self.rows(split)
            if self.cfg.cache_images:
                self.cache.fill(rows)
            swap = None
            if split == "train" and self.cfg.board_swap > 0:  # scenes from the training split only
                scenes = [
                    self.cache.get(r) if self.cfg.cache_images else self.cache.load(r)
                    for r in rows
                    if r.domain == NONLEAF
                ]
                swap = BoardSwap(scenes, self.cfg.board_swap, self.cfg.seed)
            self.datasets[split] = LeafDataset(
                rows, self.classes, transform, self.cache, use_cache=self.cfg.cache_images, board_swap=swap
            )
        return self.datasets[split]

    def rows(self, split: Split) -> list[ManifestRow]:
        return training_rows(self.cfg, self.manifest) if split == "train" else self.manifest.split(split)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.dataset("train")
            self.dataset("val")
        if stage in (None, "test", "predict"):
            self.dataset("test")

    def train_class_weights(self) -> torch.Tensor:
        return class_weights(self.dataset("train").targets, self.num_classes)

    def _loader(
        self, split: Split, *, shuffle: bool, sampler: WeightedRandomSampler | None = None
    ) -> DataLoader[tuple[torch.Tensor, int]]:
        workers = self.cfg.num_workers
        return DataLoader(
            self.dataset(split),
            batch_size=self.cfg.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker if workers > 0 else None,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        sampler = None
        if self.cfg.balance == "sampler":
            rows = self.dataset("train").rows
            generator = torch.Generator().manual_seed(self.cfg.seed)
            sampler = WeightedRandomSampler(
                sample_weights(rows, self.cfg.domain_weights), self.cfg.epoch_size or len(rows), generator=generator
            )
        return self._loader("train", shuffle=True, sampler=sampler)

    def eval_loader(self, split: Split) -> DataLoader[tuple[torch.Tensor, int]]:
        """Any split, in manifest order, always with the deterministic eval transform (train included)."""
        if split != "train":
            return self._loader(split, shuffle=False)
        rows = self.rows("train")
        dataset = LeafDataset(
            rows, self.classes, create_eval_transform(self.cfg), self.cache, use_cache=self.cfg.cache_images
        )
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        return self.eval_loader("val")

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        return self.eval_loader("test")

    def predict_dataloader(self) -> DataLoader[tuple[torch.Tensor, int]]:
        return self.test_dataloader()
