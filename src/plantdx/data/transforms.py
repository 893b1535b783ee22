"""Image loading and the albumentations 2.x pipelines.

The resize to ``resize_to`` is done with PIL, the same call the bundle's numpy+PIL preprocessing makes at serving
time, so the eval transform and serving agree to the pixel; albumentations does the rest (crop, augment, normalise).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
from albumentations.pytorch import ToTensorV2

from plantdx.config import DatasetConfig


def create_train_transform(cfg: DatasetConfig) -> A.Compose:
    """Augmentations that keep the disease visible.

    Seeded: albumentations keeps its own RNG, untouched by ``seed_everything``; loader workers reseed it from their
    torch seed (see ``seed_worker``), so runs repeat and workers still differ.

    Hue moves at most ±0.03 and saturation ±15%: yellowing and brown lesions are the signal, so colour stays close
    to the truth while brightness, contrast, blur, noise, JPEG artefacts and shadow imitate field photos.
    No ``RandomFog``: it cost 53 ms an image here (the rest of the pipeline ~0.5 ms), which at p=0.05 made it the
    largest single cost of a CPU training step's data side.
    """
    size = (cfg.image_size, cfg.image_size)
    normalise = [A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0), ToTensorV2()]
    if cfg.augment == "none":
        return create_eval_transform(cfg)
    geometric: list[Any] = [
        A.RandomResizedCrop(size=size, scale=(0.6, 1.0), ratio=(0.85, 1.18)),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
    ]
    if cfg.augment == "light":
        return A.Compose([*geometric, *normalise], seed=cfg.seed)
    photometric: list[Any] = [
        A.Affine(rotate=(-20, 20), scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), border_mode=0, p=0.3),
        A.ColorJitter(
            brightness=(0.75, 1.25), contrast=(0.75, 1.25), saturation=(0.85, 1.15), hue=(-0.03, 0.03), p=0.6
        ),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=0.15),
        A.GaussNoise(std_range=(0.02, 0.06), p=0.15),
        A.ImageCompression(quality_range=(50, 95), p=0.25),
        A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.2, 0.5), p=0.1),
    ]
    return A.Compose([*geometric, *photometric, *normalise], seed=cfg.seed)


def create_eval_transform(cfg: DatasetConfig) -> A.Compose:
    """Deterministic: centre crop of the already resized image, normalise, CHW float tensor."""
    return A.Compose(
        [
            A.CenterCrop(height=cfg.image_size, width=cfg.image_size),
            A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0),
            ToTensorV2(),
        ]
    )


def preprocess_spec(cfg: DatasetConfig) -> dict[str, Any]:
    """The ``preprocess.json`` of the bundle contract: enough to reproduce the eval transform without torch."""
    return {
        "resize": cfg.resize_to,
        "crop": cfg.image_size,
        "interpolation": cfg.interpolation,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "layout": "NCHW",
        "input_name": "image",
        "output_name": "logits",
    }
