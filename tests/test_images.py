from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from plantdx.images import BACKGROUND, center_crop, load_rgb, model_view, preprocess, resize_shorter, to_input


def test_resize_shorter_keeps_aspect() -> None:
    assert resize_shorter(Image.new("RGB", (200, 100)), 50).shape == (50, 100, 3)
    assert resize_shorter(Image.new("RGB", (30, 60)), 60).shape == (120, 60, 3)  # upsamples small images


def test_load_rgb_applies_exif_and_converts_modes(tmp_path: Path) -> None:
    Image.new("L", (10, 20), 128).save(tmp_path / "gray.png")
    assert load_rgb(tmp_path / "gray.png").mode == "RGB"
    Image.new("RGBA", (10, 20), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    assert load_rgb(tmp_path / "rgba.png").mode == "RGB"
    Image.new("CMYK", (10, 20)).save(tmp_path / "cmyk.jpg")
    assert load_rgb(tmp_path / "cmyk.jpg").mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    Image.new("RGB", (40, 20)).save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").size == (20, 40)


def test_center_crop_offsets() -> None:
    image = np.arange(5 * 7).reshape(5, 7, 1)
    crop = center_crop(image, 3)
    assert crop.shape == (3, 3, 1) and crop[0, 0, 0] == image[1, 2, 0]


def test_preprocess_follows_the_spec() -> None:
    spec = {"resize": 8, "crop": 4, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    out = preprocess(Image.new("RGB", (16, 8), (255, 0, 255)), spec)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    assert np.allclose(out[0], 1.0) and np.allclose(out[1], -1.0)


def test_model_view_squashes_when_resize_equals_crop_and_crops_otherwise() -> None:
    """``resize == crop`` is a plain resize of the whole photo; otherwise shorter side, then the centre."""
    photo = Image.new("RGB", (40, 20), (255, 0, 0))
    photo.paste((0, 0, 255), (0, 0, 10, 20))  # a blue strip on the left quarter
    squashed = model_view(photo, {"resize": 8, "crop": 8, "interpolation": "area"})
    cropped = model_view(photo, {"resize": 8, "crop": 8, "interpolation": "area"} | {"resize": 10})
    assert squashed.shape == cropped.shape == (8, 8, 3)
    assert squashed[:, 0].tolist() == [[0, 0, 255]] * 8  # the strip is in view
    assert cropped[:, 0].tolist() == [[255, 0, 0]] * 8  # the centre crop leaves it out
    spec = {"resize": 8, "crop": 8, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    assert np.array_equal(preprocess(photo, spec), to_input(model_view(photo, spec), spec))


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 30000, dtype=np.uint16)).save(tmp_path / "deep.png")
    rgb = load_rgb(tmp_path / "deep.png")
    assert rgb.mode == "RGB" and np.asarray(rgb)[0, 0].tolist() == [117, 117, 117]  # 30000 / 257, not white


def test_a_large_jpeg_decodes_at_a_reduced_scale_with_the_same_result(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:1500, 0:2000] / 1500.0  # a smooth photo-like scene: gradients and broad blobs
    scene = np.stack([xx * 120, 100 + 80 * np.sin(6 * xx) * np.cos(5 * yy), yy * 150], axis=-1)
    photo = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))
    photo.save(tmp_path / "phone.jpg", quality=90)
    full = load_rgb(tmp_path / "phone.jpg")
    reduced = load_rgb(tmp_path / "phone.jpg", min_side=180)
    assert full.size == (2000, 1500) and reduced.size == (250, 188)  # 1/8: both sides still >= 180
    spec = {"resize": 180, "crop": 160, "interpolation": "bilinear"}  # what the model then sees
    a, b = model_view(full, spec).astype(int), model_view(reduced, spec).astype(int)
    assert a.shape == b.shape == (160, 160, 3) and np.abs(a - b).mean() < 3, np.abs(a - b).mean()
    photo.resize((256, 256)).save(tmp_path / "small.jpg", quality=90)  # already small: decoded exactly as before
    assert np.array_equal(
        np.asarray(load_rgb(tmp_path / "small.jpg", 183)), np.asarray(load_rgb(tmp_path / "small.jpg"))
    )


def test_transparent_pixels_are_laid_over_the_training_background(tmp_path: Path) -> None:
    """A cut-out leaf: what lies under its transparent pixels (black here) must not reach the model."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (200, 30, 10, 255)  # opaque leaf on the left
    rgba[:, 4:6] = (0, 0, 0, 0)  # transparent, storing black
    rgba[:, 6:] = (0, 0, 0, 128)  # half transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    out = np.asarray(load_rgb(tmp_path / "cut.png")).astype(int)
    assert (out[:, :4] == (200, 30, 10)).all()
    assert (out[:, 4:6] == BACKGROUND).all()
    assert np.abs(out[:, 6:] - np.array(BACKGROUND) * 127 / 255).max() <= 1

    grey = Image.fromarray(np.stack([np.full((4, 4), 90, np.uint8), np.full((4, 4), 0, np.uint8)], -1), "LA")
    grey.save(tmp_path / "la.png")
    assert (np.asarray(load_rgb(tmp_path / "la.png")) == BACKGROUND).all()

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 200, 0, 0, 0, 0] + [0] * 762)
    palette.save(tmp_path / "p.png", transparency=1)  # colour 1 (black) is the transparent one
    assert (np.asarray(load_rgb(tmp_path / "p.png")) == BACKGROUND).all()

    Image.new("RGB", (4, 4), (0, 0, 0)).save(tmp_path / "trns.png", transparency=(0, 0, 0))  # an RGB PNG's tRNS
    assert (np.asarray(load_rgb(tmp_path / "trns.png")) == BACKGROUND).all()
    Image.new("RGB", (4, 4), (0, 0, 0)).save(tmp_path / "opaque.png")
    assert (np.asarray(load_rgb(tmp_path / "opaque.png")) == 0).all()


def test_a_16_bit_grey_png_keeps_its_transparent_value(tmp_path: Path) -> None:
    """Its tRNS key is a 16-bit grey: scaling to 8 bits must not turn the transparent pixels opaque black."""
    values = np.full((4, 4), 1028, np.uint16)  # 1028 / 257 = 4
    values[:, :2] = 0  # the transparent key
    img = Image.new("I;16", (4, 4))
    img.frombytes(values.astype("<u2").tobytes())
    img.save(tmp_path / "grey16.png", transparency=0)
    out = np.asarray(load_rgb(tmp_path / "grey16.png"))
    assert (out[:, :2] == BACKGROUND).all() and (out[:, 2:] == 4).all()
    img.save(tmp_path / "grey16_opaque.png")
    assert (np.asarray(load_rgb(tmp_path / "grey16_opaque.png"))[:, :2] == 0).all()
