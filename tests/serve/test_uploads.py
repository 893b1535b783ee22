"""Hostile and broken uploads get a clear 4xx JSON error, quickly, and never a 500."""

from __future__ import annotations

import io
import struct
import time
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import jpeg, make_leaf, serve_settings
from plantdx.export import ExportResult
from plantdx.serve import create_app
from plantdx.serve.errors import BadImageError, TooLargeError, UnsupportedMediaError
from plantdx.serve.uploads import UploadLimits, decode_upload

LIMITS = UploadLimits(max_bytes=1_000_000, max_pixels=4_000_000, max_decoded_pixels=None)


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def encoded(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_decompression_bomb_is_refused_before_decoding() -> None:
    started = time.perf_counter()
    with pytest.raises(TooLargeError, match="pixels"):
        decode_upload(png_header_bomb(30000, 30000), "image/png", LIMITS)
    assert time.perf_counter() - started < 2.0  # header-only: a decode of 900 Mpx would take minutes


@pytest.mark.parametrize(
    ("data", "content_type", "error", "match"),
    [
        (b"", "image/jpeg", BadImageError, "empty"),
        (b"hello world", "image/jpeg", UnsupportedMediaError, "first bytes"),
        (
            b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
            "image/svg+xml",
            UnsupportedMediaError,
            "not accepted",
        ),
        (jpeg(), "text/plain", UnsupportedMediaError, "not accepted"),
        (jpeg(), "image/png", UnsupportedMediaError, "declared image/png"),
        (jpeg()[:300], "image/jpeg", BadImageError, "truncated or corrupt"),
        (b"\xff\xd8\xff" + b"\x00" * 100, "image/jpeg", BadImageError, "cannot be read|corrupt"),
        (b"x" * 1_000_001, "image/jpeg", TooLargeError, "limit"),
        (encoded(make_leaf("a", 1), "GIF"), "image/gif", UnsupportedMediaError, "not accepted"),
        # A polyglot: JPEG bytes with a ZIP archive appended still decodes as the JPEG it starts with.
    ],
)
def test_bad_uploads(data: bytes, content_type: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        decode_upload(data, content_type, LIMITS)


def test_elongated_images_are_refused_before_they_explode() -> None:
    with pytest.raises(BadImageError, match="elongated"):
        decode_upload(encoded(Image.new("RGB", (4000, 10)), "PNG"), "image/png", LIMITS)


def test_animated_image_is_refused() -> None:
    frames = [make_leaf("a", i) for i in range(3)]
    data = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    with pytest.raises(BadImageError, match="animated"):
        decode_upload(data, "image/webp", LIMITS)


def test_modes_and_orientation_are_normalised() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = decode_upload(encoded(Image.new("RGB", (40, 20)), "JPEG", exif=exif), "image/jpeg", LIMITS)
    assert rotated.size == (20, 40) and rotated.mode == "RGB"
    for mode in ("L", "RGBA", "P"):
        assert decode_upload(encoded(Image.new(mode, (8, 8)), "PNG"), "", LIMITS).mode == "RGB"
    assert decode_upload(encoded(Image.new("CMYK", (8, 8)), "JPEG"), "image/jpeg", LIMITS).mode == "RGB"
    polyglot = jpeg() + b"PK\x03\x04" + b"\x00" * 64
    assert decode_upload(polyglot, "image/jpeg", LIMITS).mode == "RGB"
    for alias in ("image/jpg", "image/pjpeg", "IMAGE/JPG; charset=binary"):  # what some clients call JPEG
        assert decode_upload(jpeg(), alias, LIMITS).mode == "RGB"
    with pytest.raises(UnsupportedMediaError, match="declared image/png"):
        decode_upload(jpeg(), "image/x-png", LIMITS)


def test_a_large_jpeg_upload_decodes_small_and_upright() -> None:
    """With the model's resize, a 12-megapixel JPEG is decoded at 1/8 scale: no 36 MB copy per request."""
    exif = Image.Exif()
    exif[0x0112] = 6  # taken in portrait
    photo = encoded(Image.new("RGB", (4000, 3000), (90, 140, 60)), "JPEG", exif=exif)
    img = decode_upload(photo, "image/jpeg", UploadLimits(10_000_000, 40_000_000, None), min_side=183)
    assert img.size == (375, 500) and img.mode == "RGB"  # 3000 / 8 x 4000 / 8, turned upright


def test_what_an_upload_decodes_to_is_bounded_after_the_jpeg_scale_is_chosen() -> None:
    """A PNG decodes at full size (a 170 kB PNG of 40 Mpx took 0.5 GB with alpha); a JPEG as large is fine."""
    limits = UploadLimits(max_bytes=10_000_000, max_pixels=40_000_000, max_decoded_pixels=4_000_000)
    big = Image.new("RGB", (2400, 2000), (90, 140, 60))  # 4.8 Mpx
    with pytest.raises(TooLargeError, match="would decode to 2400x2000 pixels; the limit is 4000000"):
        decode_upload(encoded(big, "PNG"), "image/png", limits, min_side=183)
    with pytest.raises(TooLargeError, match="would decode to 2400x2000"):
        decode_upload(encoded(big, "WEBP"), "image/webp", limits, min_side=183)
    with pytest.raises(TooLargeError, match="would decode to 2400x2000"):  # no resize given: full size
        decode_upload(encoded(big, "JPEG"), "image/jpeg", limits)
    img = decode_upload(encoded(big, "JPEG"), "image/jpeg", limits, min_side=183)
    assert img.size == (300, 250)  # decoded at 1/8 scale
    small = Image.new("RGBA", (2000, 2000), (90, 140, 60, 0))
    assert decode_upload(encoded(small, "PNG"), "image/png", limits, min_side=183).size == (2000, 2000)


@pytest.mark.slow
def test_the_decode_budget_answers_413_for_predict_and_for_a_job(
    exported: ExportResult,
    clean_env: None,  # noqa: ARG001
) -> None:
    settings = serve_settings(exported.bundle, "serve.max_decoded_pixels=1000000")
    png = encoded(Image.new("RGB", (1250, 1000), (90, 140, 60)), "PNG")
    big_jpeg = encoded(make_leaf("Crop___Blight", 3).resize((2500, 2000)), "JPEG")  # decodes at a reduced scale
    with TestClient(create_app(settings)) as c:
        for route in ("/v1/predict", "/v1/jobs"):
            r = c.post(route, files={"file": ("a.png", png, "image/png")})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
            assert "would decode to 1250x1000 pixels" in r.json()["error"]["message"]
            ok = c.post(route, files={"file": ("a.jpg", big_jpeg, "image/jpeg")})
            assert ok.status_code in (200, 202), ok.text


@pytest.mark.slow
def test_http_errors_are_json_4xx(exported: ExportResult, clean_env: None) -> None:  # noqa: ARG001
    settings = serve_settings(exported.bundle, "serve.max_upload_bytes=100000", "serve.max_pixels=1000000")
    with TestClient(create_app(settings)) as c:
        cases = [
            ({"file": ("a.png", png_header_bomb(30000, 30000), "image/png")}, 413),
            ({"file": ("a.jpg", b"\xff\xd8\xff" + b"x" * 200_000, "image/jpeg")}, 413),
            ({"file": ("a.txt", b"plain text", "text/plain")}, 415),
            ({"file": ("a.jpg", jpeg()[:200], "image/jpeg")}, 422),
            ({"file": ("a.jpg", b"", "image/jpeg")}, 422),
            ({"file": ("x" * 200 + ".jpg", jpeg(), "image/jpeg")}, 200),
            ({"file": ("x" * 20000 + ".jpg", jpeg(), "image/jpeg")}, 400),  # the multipart parser refuses it
            ({"file": ("../../etc/passwd\x00.jpg", jpeg(), "image/jpeg")}, 200),
        ]
        for files, status in cases:
            r = c.post("/v1/predict", files=files)
            assert r.status_code == status, (files["file"][0][:40], r.text)
            if status != 200:
                assert set(r.json()["error"]) == {"code", "message"}
        assert c.post("/v1/predict").status_code == 422  # no file at all
        for bad in ("0", "-1", "abc", "1000"):
            r = c.post(f"/v1/predict?top_k={bad}", files={"file": ("a.jpg", jpeg(), "image/jpeg")})
            assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", bad
        deep = "[" * 5000 + "]" * 5000
        r = c.post("/v1/predict/batch", content=deep.encode(), headers={"content-type": "application/json"})
        assert r.status_code == 422
        # A body larger than the whole-request limit is cut off with 413, not read into memory.
        huge = c.post("/v1/predict/batch", content=b"x" * 5_000_000, headers={"content-type": "application/json"})
        assert huge.status_code == 413 and huge.json()["error"]["code"] == "too_large"
