"""Decode, orient and resize: the one image path that training, export and serving share.

PIL and numpy only. Training resizes with these functions before albumentations crops, and the bundle's
preprocessing calls them again at serving time, so the two agree to the pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

PIL_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
}


def load_rgb(source: Path | IO[bytes]) -> Image.Image:
    """Decode, apply EXIF orientation, convert anything (grayscale, RGBA, CMYK, palette) to RGB."""
    with Image.open(source) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """Resize so the shorter side is ``size``; returns HWC uint8."""
    w, h = img.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new != (w, h):
        img = img.resize(new, PIL_INTERPOLATION[interpolation])
    return np.asarray(img, dtype=np.uint8)


def resize_for_model(img: Image.Image, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
    """The preprocess.json rule: shorter side to ``resize`` (then a centre crop), or, when ``resize == crop``, a
    plain resize to ``crop`` x ``crop``."""
    if resize == crop:
        if img.size != (crop, crop):
            img = img.resize((crop, crop), PIL_INTERPOLATION[interpolation])
        return np.asarray(img, dtype=np.uint8)
    return resize_shorter(img, resize, interpolation)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Offsets as albumentations' CenterCrop computes them: ``(dim - size) // 2``."""
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def to_input(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """HWC uint8 (already resized) -> CHW float32, cropped and normalised as ``preprocess.json`` says."""
    crop = center_crop(image, int(spec["crop"])).astype(np.float32) / 255.0
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    return np.ascontiguousarray(((crop - mean) / std).transpose(2, 0, 1))


def model_view(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """The crop the model sees, as HWC uint8 (what a heat map is laid over)."""
    crop = int(spec["crop"])
    return center_crop(resize_for_model(img, int(spec["resize"]), crop, str(spec["interpolation"])), crop)


def preprocess(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """A decoded RGB image -> the model's CHW float32 input."""
    return to_input(model_view(img, spec), spec)
