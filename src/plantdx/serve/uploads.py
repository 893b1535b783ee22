"""Untrusted bytes -> a decoded RGB image, or a clear 4xx.

Checks run cheapest first: size, magic bytes, the header's pixel count (before any pixel is decoded, so a
decompression bomb costs microseconds), then the full decode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

from PIL import Image, UnidentifiedImageError

from plantdx.config import ServeConfig
from plantdx.images import decode, plan_decode
from plantdx.serve.errors import BadImageError, TooLargeError, UnsupportedMediaError

ALLOWED_TYPES = {"image/jpeg", "image/png", "image/webp"}
# Names some clients and old browsers still send for the same formats.
TYPE_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}
# Browsers and HTTP clients send these for files they cannot name; the magic bytes decide then.
NEUTRAL_TYPES = {"", "application/octet-stream"}
# A 1 x 40,000,000 image passes a pixel budget, then explodes when its short side is scaled up to the model's size.
MAX_ASPECT = 10.0
ANIMATED_FORMATS = {"GIF", "PNG", "WEBP"}  # MPO (a phone JPEG with extra pictures) is fine: frame 0 is the photo
# Only the decoder the magic bytes name may read the file: Pillow would otherwise try its other plugins on a file the
# JPEG decoder refused, some with no magic bytes of their own (a JPEG-magic file with a PhotoCD body was decoded).
PIL_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be: built once from the settings and checked by every door (predict, batch, jobs and the
    job workers). ``max_decoded_pixels`` bounds what a photo decodes to after a JPEG's reduced-scale decode."""

    max_bytes: int
    max_pixels: int
    max_decoded_pixels: int | None

    @classmethod
    def of(cls, cfg: ServeConfig) -> UploadLimits:
        return cls(cfg.max_upload_bytes, cfg.max_pixels, cfg.max_decoded_pixels)

    def without_decoded_check(self) -> UploadLimits:
        """For a door that does not know the model's resize yet (a JPEG's decoded size depends on it)."""
        return replace(self, max_decoded_pixels=None)


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _open(data: bytes, content_type: str | None, limits: UploadLimits, min_side: int | None) -> Image.Image:
    """Every check that needs no pixel decoded; returns the image, opened lazily (header read, pixels not), with its
    JPEG scale already chosen for ``min_side``."""
    if not data:
        raise BadImageError("the file is empty", code="empty_file")
    max_pixels, max_decoded_pixels = limits.max_pixels, limits.max_decoded_pixels
    if len(data) > limits.max_bytes:
        raise TooLargeError(f"the file is {len(data)} bytes; the limit is {limits.max_bytes}")
    declared = (content_type or "").split(";")[0].strip().lower()
    declared = TYPE_ALIASES.get(declared, declared)
    if declared not in ALLOWED_TYPES | NEUTRAL_TYPES:
        raise UnsupportedMediaError(f"content type {declared!r} is not accepted; send JPEG, PNG or WebP")
    actual = sniff(data)
    if actual is None:
        raise UnsupportedMediaError("the file is not a JPEG, PNG or WebP image (checked by its first bytes)")
    if declared in ALLOWED_TYPES and declared != actual:
        raise UnsupportedMediaError(f"the file is declared {declared} but its bytes are {actual}")
    try:
        img = Image.open(io.BytesIO(data), formats=[PIL_FORMATS[actual]])
        pixels = img.width * img.height
        if pixels > max_pixels:
            raise TooLargeError(f"the image is {img.width}x{img.height} pixels; the limit is {max_pixels} pixels")
        if max(img.size) > MAX_ASPECT * max(1, min(img.size)):
            raise BadImageError(
                f"the image is {img.width}x{img.height}: too elongated to be a leaf photo", code="bad_aspect_ratio"
            )
        if img.format in ANIMATED_FORMATS and getattr(img, "n_frames", 1) > 1:
            raise BadImageError("animated images are not accepted; send one photo", code="animated_image")
        width, height = plan_decode(img, min_side)
        if max_decoded_pixels is not None and width * height > max_decoded_pixels:
            raise TooLargeError(
                f"the image would decode to {width}x{height} pixels; the limit is {max_decoded_pixels} (a JPEG "
                "photo decodes at a reduced scale, a PNG or WebP at full size: send a JPEG or a smaller image)"
            )
        return img
    except (TooLargeError, BadImageError):
        raise
    except Image.DecompressionBombError:
        raise TooLargeError(f"the image has more than {max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise BadImageError("the image cannot be read", code="unreadable_image") from None
    except Exception as exc:  # untrusted bytes: any decoder failure is the file's fault, never a 500
        raise BadImageError(f"the image is truncated or corrupt: {exc}", code="corrupt_image") from None


def check_upload(data: bytes, content_type: str | None, limits: UploadLimits, min_side: int | None = None) -> None:
    """The checks ``decode_upload`` makes before decoding (microseconds): an async job is refused by them at the
    door, with the same 4xx a predict gets, instead of being queued to fail later."""
    _open(data, content_type, limits, min_side).close()


def decode_upload(
    data: bytes, content_type: str | None, limits: UploadLimits, min_side: int | None = None
) -> Image.Image:
    """The checks, then the decode: an upright RGB image, or the 4xx that says what is wrong with the file.

    ``min_side`` (the model's resize) lets a large JPEG decode at a reduced DCT scale: no full-size copy of a
    40-megapixel photo in memory, with the same pixels ``Predictor.preprocess`` gets from the file.
    ``max_decoded_pixels`` bounds what that leaves: a 170 kB PNG of 40 megapixels took 0.8 s and 0.5 GB to decode
    with its alpha channel, and four at once (``decode_workers``) would have burst a 768 MiB pod; at the default
    9 M the peak is 76 MiB each.
    """
    img = _open(data, content_type, limits, min_side)
    try:
        return decode(img)  # the JPEG scale was chosen (and checked) in _open
    except Exception as exc:  # untrusted bytes: any decoder failure is the file's fault, never a 500
        raise BadImageError(f"the image is truncated or corrupt: {exc}", code="corrupt_image") from None
