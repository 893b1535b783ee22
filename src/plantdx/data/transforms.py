"""Image loading and the albumentations 2.x pipelines.

The resize to ``resize_to`` is done with PIL, the same call the bundle's numpy+PIL preprocessing makes at serving
time, so the eval transform and serving agree to the pixel; albumentations does the rest (crop, augment, normalise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
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
    if cfg.augment == "field":
        return A.Compose([*field_recipe(size), *normalise], seed=cfg.seed)
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


def field_recipe(size: tuple[int, int]) -> list[Any]:
    """Augmentations for a model that must work on photos taken in the field, from lab photos and a few field ones.

    Framing: crops down to a quarter of the photo, any rotation of the leaf. Light: darkening to 0.3x, gamma,
    colour temperature, brightness and contrast, with hue kept within ±0.03 (yellowing and brown lesions are the
    signal). The corruptions phones add: blur (sigma up to 2.5 px), sensor noise (sigma up to 0.1), JPEG down to
    quality 10. Occlusion by fingers, stems and other leaves: blank patches. Each of these reaches past the
    severities ``benchmarks/robustness.py`` measures. The board behind a lab leaf is swapped for other scenes
    before these steps (``BoardSwap``).
    """
    return [
        A.RandomResizedCrop(size=size, scale=(0.25, 1.0), ratio=(0.75, 1.33)),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(rotate=(-30, 30), scale=(0.85, 1.15), border_mode=cv2.BORDER_REFLECT_101, p=0.3),
        A.MultiplicativeNoise(multiplier=(0.3, 1.15), per_channel=False, elementwise=False, p=0.35),
        A.RandomGamma(gamma_limit=(70, 150), p=0.2),
        A.PlanckianJitter(p=0.2),
        A.ColorJitter(brightness=(0.8, 1.2), contrast=(0.7, 1.3), saturation=(0.8, 1.2), hue=(-0.03, 0.03), p=0.5),
        A.OneOf(
            [A.GaussianBlur(sigma_limit=(0.5, 2.5)), A.MotionBlur(blur_limit=(3, 9)), A.Defocus(radius=(2, 4))],
            p=0.25,
        ),
        A.OneOf([A.GaussNoise(std_range=(0.02, 0.1)), A.ISONoise(intensity=(0.1, 0.5))], p=0.25),
        A.ImageCompression(quality_range=(10, 95), p=0.3),
        A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.1, 0.3), hole_width_range=(0.1, 0.3), p=0.25),
        A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_intensity_range=(0.2, 0.6), p=0.15),
    ]


_OPEN, _CLOSE = np.ones((3, 3), np.uint8), np.ones((7, 7), np.uint8)


def leaf_mask(image: np.ndarray) -> np.ndarray | None:
    """Where the leaf is on a lab photo (HWC uint8), or None when it cannot be told from the board.

    The board is grey: the border's unsaturated pixels give its colour, and the leaf is what is saturated (green,
    yellow) or far from that colour (brown and black lesions); the largest such region, its holes filled.
    """
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    saturation = hsv[..., 1]
    edge = np.zeros(image.shape[:2], dtype=bool)
    edge[:6], edge[-6:], edge[:, :6], edge[:, -6:] = True, True, True, True
    board_pixels = image[edge & (saturation < 50)]
    board = np.median(board_pixels if len(board_pixels) > 50 else image[edge], axis=0)
    distance = np.linalg.norm(image.astype(np.float32) - board, axis=2)
    mask = ((saturation > 70) | (distance > 70)).astype(np.uint8)
    mask = cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, _OPEN), cv2.MORPH_CLOSE, _CLOSE)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n < 2:
        return None
    largest = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    contours, _ = cv2.findContours(largest, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(largest)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    share = float(filled.mean())
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    solidity = filled.sum() / max(1.0, cv2.contourArea(hull))
    return filled if 0.1 < share < 0.92 and solidity > 0.7 else None


class BoardSwap:
    """Lay a lab leaf over another scene: the grey board stops being evidence, as it is in no field photo.

    The scenes are the training split's photos that are not leaves (never a validation or test one). A photo whose
    leaf cannot be told from its board (``leaf_mask`` is None) is left as it is.
    """

    def __init__(self, backgrounds: Sequence[np.ndarray], p: float, seed: int) -> None:
        self.backgrounds = list(backgrounds)
        self.p = p
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not self.backgrounds or self.rng.random() >= self.p:
            return image
        mask = leaf_mask(image)
        if mask is None:
            return image
        scene = self.backgrounds[int(self.rng.integers(len(self.backgrounds)))]
        h, w = image.shape[:2]
        scene = cv2.resize(scene, (w, h), interpolation=cv2.INTER_LINEAR)
        alpha = cv2.GaussianBlur(mask.astype(np.float32), (5, 5), 0)[..., None]
        return np.asarray(alpha * image + (1 - alpha) * scene, dtype=np.uint8)


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
