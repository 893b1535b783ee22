"""A hostile-input corpus against a real ``plantdx serve`` process: each case gets its documented 4xx with a JSON
error body (or its documented success), never a 500, quickly, and with bounded memory.

The corpus is generated here (no binary files in the repository). Memory is the server's own: before each case the
process's peak RSS is reset (``/proc/<pid>/clear_refs``), after it the peak is read back (``VmHWM``), so each case
is held to its own bound, and a decompression bomb that got decoded (gigabytes) could not hide behind an average.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import Server, jpeg, make_leaf, start_server
from plantdx.inference import default_bundle_path

pytestmark = pytest.mark.slow

LIMIT = 1_000_000  # serve.max_upload_bytes for this server: small, so "at the limit" is cheap to send 16 times
PIXELS = 4_000_000  # serve.max_pixels
BATCH = 16  # serve.max_batch_images (the default)
MiB = 2**20
TIME_LIMIT_S = 10.0  # per case, on two shared cores; decoding the 900-megapixel bomb would take minutes
# Peak RSS over the RSS before the case, after a warm-up. One file: decoding a photo at the size limit costs a few
# MiB; reading a 20 MB upload into memory (fixed: it used to be) measured 17. A batch holds its body, the parsed JSON
# and the decoded bytes at once: at most ~3x its 22 MB body (measured: 32 MiB). A decoded bomb would cost gigabytes.
FILE_PEAK = 12 * MiB
BATCH_PEAK = 128 * MiB


# -- the corpus's files ------------------------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(size: int, seed: int = 0) -> Image.Image:
    """Noise compresses badly: the cheapest way to a JPEG of a given number of bytes."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@cache
def png_bomb() -> bytes:
    """A complete, valid 30000 x 30000 PNG in ~110 kB: 1-bit grey, all zeros; decoded to RGB it is 2.7 GB."""
    side = 30_000
    row = b"\x00" * (1 + side // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@cache
def jpeg_header_bomb() -> bytes:
    """A small JPEG whose frame header claims 60000 x 60000 pixels."""
    data = jpeg()
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the markers to the start of frame
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return data[: i + 5] + struct.pack(">HH", 60_000, 60_000) + data[i + 9 :]


@cache
def at_limit(seed: int = 0) -> bytes:
    """A valid JPEG of exactly LIMIT bytes (decoders ignore bytes after the end-of-image marker)."""
    data = _encode(_noise(500, seed), "JPEG", quality=90)
    assert len(data) < LIMIT
    return data + b"\x00" * (LIMIT - len(data))


@cache
def huge_jpeg() -> bytes:
    """A valid photo-like JPEG of several MB: over the byte limit."""
    data = _encode(_noise(1400), "JPEG", quality=95)
    assert len(data) > LIMIT
    return data


@cache
def many_pixels_jpeg() -> bytes:
    """A valid JPEG under the byte limit with 6.25 megapixels: over the pixel limit."""
    return _encode(Image.new("RGB", (2500, 2500), (60, 140, 60)), "JPEG")


@cache
def animated_gif() -> bytes:
    frames = [make_leaf("Crop___Spot", i) for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


@cache
def animated_png() -> bytes:
    frames = [make_leaf("Crop___Spot", i) for i in range(3)]
    return _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(document.cookie)</script></svg>'
TRUNCATED_HEADER = jpeg(size=256)[:600]  # cut inside the header: refused before decoding
TRUNCATED = jpeg(size=256)[:5000]  # cut inside the pixel data: the header is fine, the decode fails
# Polyglots: bytes that are two things at once.
JPEG_ZIP = jpeg() + b"PK\x03\x04" + b"\x00" * 64  # a JPEG with an archive appended: the JPEG is what is read
JPEG_HTML = b"\xff\xd8\xff\xe0<html><script>alert(1)</script></html>"  # JPEG magic, HTML body
PNG_SVG = b"\x89PNG\r\n\x1a\n" + SVG  # PNG magic, SVG body
# JPEG magic, Kodak PhotoCD body: Pillow used to fall back to its PCD decoder when the JPEG one refused the file.
JPEG_PHOTOCD = b"\xff\xd8\xff\x00" + b"\x00" * 2044 + b"PCD_" + b"\x00" * (100 * 2048)


# -- the cases ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile request and its documented answer; ``items``: each batch item's error code (None: predicted)."""

    route: str
    request: Callable[[], dict[str, Any]]
    status: int
    code: str | None = None
    items: list[str | None] | None = None
    peak: int = FILE_PEAK
    job_fails_with: str | None = None  # a job accepted (202) that must then fail with this code
    method: str = "POST"
    extra: dict[str, Any] = field(default_factory=dict)


def one_file(data: bytes | Callable[[], bytes], content_type: str = "image/jpeg", name: str = "leaf.jpg") -> Any:
    return lambda: {"files": {"file": (name, data() if callable(data) else data, content_type)}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


FILES: dict[str, tuple[Callable[[], dict[str, Any]], int, str | None]] = {
    "empty": (one_file(b""), 422, "empty_file"),
    "truncated-jpeg-header": (one_file(TRUNCATED_HEADER), 422, "corrupt_image"),
    "truncated-jpeg-data": (one_file(TRUNCATED), 422, "corrupt_image"),
    "png-bomb-30000x30000": (one_file(png_bomb, "image/png", "bomb.png"), 413, "too_large"),
    "jpeg-header-bomb": (one_file(jpeg_header_bomb), 413, "too_large"),
    "huge-valid-jpeg-bytes": (one_file(huge_jpeg), 413, "too_large"),
    "huge-valid-jpeg-pixels": (one_file(many_pixels_jpeg), 413, "too_large"),
    "animated-gif": (one_file(animated_gif, "image/gif", "a.gif"), 415, "unsupported_media_type"),
    "animated-gif-as-png": (one_file(animated_gif, "image/png", "a.png"), 415, "unsupported_media_type"),
    "animated-png": (one_file(animated_png, "image/png", "a.png"), 422, "animated_image"),
    "svg-with-script": (one_file(SVG, "image/svg+xml", "a.svg"), 415, "unsupported_media_type"),
    "svg-as-octet-stream": (one_file(SVG, "application/octet-stream", "a"), 415, "unsupported_media_type"),
    "polyglot-jpeg-zip": (one_file(JPEG_ZIP), 200, None),
    "polyglot-jpeg-html": (one_file(JPEG_HTML), 422, "corrupt_image"),
    "polyglot-png-svg": (one_file(PNG_SVG, "image/png"), 422, "unreadable_image"),
    "polyglot-jpeg-photocd": (one_file(JPEG_PHOTOCD), 422, "unreadable_image"),
    "jpeg-as-text-plain": (one_file(jpeg(), "text/plain", "a.txt"), 415, "unsupported_media_type"),
    "jpeg-declared-png": (one_file(jpeg(), "image/png", "a.png"), 415, "unsupported_media_type"),
    "name-20000-chars": (one_file(jpeg(), name="x" * 20_000 + ".jpg"), 400, "bad_request"),
    "name-path-traversal-nul": (one_file(jpeg(), name="../../etc/passwd\x00.jpg"), 200, None),
    "name-unicode": (one_file(jpeg(), name="\u00fc\U0001f33f\u202e" * 60 + ".jpg"), 200, None),
    "name-crlf-header-injection": (one_file(jpeg(), name="a\r\nX-Injected: 1\r\n.jpg"), 200, None),
    "no-file-json-body": (lambda: {"json": {"file": "x"}}, 422, "invalid_request"),
    "multipart-without-boundary": (
        lambda: {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
        "bad_request",
    ),
    # Over the file limit, within the whole-request limit (sized for a batch): refused by its size, not read into
    # memory first (the multipart parser spools it to disk).
    "20-MB-upload": (one_file(lambda: b"\xff\xd8\xff" + b"\x00" * 20_000_000), 413, "too_large"),
}

TOP_K = {"0": 422, "-1": 422, "abc": 422, "1000": 422, "1.5": 422, "": 422, "1e3": 422, "100": 200}


def batch_json(images: list[str]) -> Callable[[], dict[str, Any]]:
    return lambda: {"json": {"images": images}}


def batch_files(parts: Callable[[], list[tuple[str, bytes, str]]]) -> Callable[[], dict[str, Any]]:
    return lambda: {"files": [("files", part) for part in parts()]}


def _raw_json(body: bytes) -> Callable[[], dict[str, Any]]:
    return lambda: {"content": body, "headers": {"content-type": "application/json"}}


CASES: dict[str, Case] = {}
for name, (request, status, code) in FILES.items():
    CASES[f"predict/{name}"] = Case("/v1/predict", request, status, code)
    # A job is refused at the door by every check that needs no decoding; a file that only fails to decode is
    # accepted and its job fails with the code predict would have answered.
    if name == "truncated-jpeg-data":
        CASES[f"jobs/{name}"] = Case("/v1/jobs", request, 202, job_fails_with=code)
    else:
        CASES[f"jobs/{name}"] = Case("/v1/jobs", request, 202 if status == 200 else status, code)
for value, status in TOP_K.items():
    for route in ("/v1/predict", "/v1/jobs"):
        expected = status if status != 200 or route == "/v1/predict" else 202
        CASES[f"{route[4:]}/top_k={value!r}"] = Case(
            route,
            one_file(jpeg()),
            expected,
            "invalid_request" if status == 422 else None,
            extra={"params": {"top_k": value}},
        )
    CASES[f"batch/top_k={value!r}"] = Case(
        "/v1/predict/batch",
        batch_json([b64(jpeg())]),
        status,
        "invalid_request" if status == 422 else None,
        items=[None] if status == 200 else None,
        extra={"params": {"top_k": value}},
    )
for route in ("/v1/predict", "/v1/jobs"):  # FastAPI would bind the last part and drop the first without a word
    CASES[f"{route[4:]}/two-file-parts"] = Case(
        route,
        lambda: {"files": [("file", ("a.jpg", jpeg(), "image/jpeg")), ("file", ("b.jpg", jpeg(seed=1), "image/jpeg"))]},
        422,
        "invalid_request",
    )
CASES["predict/explain=maybe"] = Case(
    "/v1/predict", one_file(jpeg()), 422, "invalid_request", extra={"params": {"explain": "maybe"}}
)


def mixed_b64() -> list[str]:
    return [
        b64(jpeg()),
        "%%%not base64",
        "",
        b64(png_bomb()),
        b64(SVG),
        "data:image/jpeg;base64," + b64(jpeg()),
        b64(TRUNCATED),
        b64(animated_png()),
        b64(jpeg()) + "\n",
    ]


MIXED_CODES: list[str | None] = [
    None,
    "invalid_base64",
    "empty_file",
    "too_large",
    "unsupported_media_type",
    "invalid_base64",
    "corrupt_image",
    "animated_image",
    "invalid_base64",
]
CASES.update(
    {
        "batch-json/17-images": Case("/v1/predict/batch", batch_json([b64(jpeg())] * 17), 422, "invalid_request"),
        "batch-json/16-images-at-the-limit": Case(
            "/v1/predict/batch",
            lambda: {"json": {"images": [b64(at_limit(i % 4)) for i in range(BATCH)]}},
            200,
            items=[None] * BATCH,
            peak=BATCH_PEAK,
        ),
        "batch-json/one-byte-over-the-limit": Case(
            "/v1/predict/batch",
            lambda: {"json": {"images": [b64(at_limit()), b64(at_limit() + b"\x00")]}},
            200,
            items=[None, "too_large"],
            peak=BATCH_PEAK,
        ),
        "batch-json/hostile-items": Case(
            "/v1/predict/batch", lambda: {"json": {"images": mixed_b64()}}, 200, items=MIXED_CODES
        ),
        "batch-json/invalid-base64-only": Case(
            "/v1/predict/batch", batch_json(["!!!!", "YQ", "=" * 8]), 200, items=["invalid_base64"] * 3
        ),
        "batch-json/deep-nesting": Case(
            "/v1/predict/batch", _raw_json(b"[" * 100_000 + b"]" * 100_000), 422, "invalid_request"
        ),
        "batch-json/deep-object-nesting": Case(
            "/v1/predict/batch", _raw_json(b'{"images":' * 50_000 + b"[]" + b"}" * 50_000), 422, "invalid_request"
        ),
        "batch-json/images-not-a-list": Case(
            "/v1/predict/batch", _raw_json(b'{"images": "x"}'), 422, "invalid_request"
        ),
        "batch-json/no-images": Case("/v1/predict/batch", batch_json([]), 422, "invalid_request"),
        "batch-json/extra-key": Case(
            "/v1/predict/batch", _raw_json(b'{"images": ["YQ=="], "x": 1}'), 422, "invalid_request"
        ),
        "batch-json/not-json": Case("/v1/predict/batch", _raw_json(b"{images: ["), 422, "invalid_request"),
        "batch-json/invalid-utf8": Case(
            "/v1/predict/batch", _raw_json(b'{"images": ["\xff\xfe"]}'), 422, "invalid_request"
        ),
        "batch-json/body-over-the-request-limit": Case(
            "/v1/predict/batch", _raw_json(b"x" * 40_000_000), 413, "too_large", peak=BATCH_PEAK
        ),
        "batch/text-plain": Case(
            "/v1/predict/batch",
            lambda: {"content": b"x", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        "batch/no-content-type": Case("/v1/predict/batch", lambda: {"content": b"x"}, 415, "unsupported_media_type"),
        "batch-multipart/17-files": Case(
            "/v1/predict/batch",
            batch_files(lambda: [(f"{i}.jpg", jpeg(seed=i), "image/jpeg") for i in range(17)]),
            422,
            "invalid_request",
        ),
        "batch-multipart/16-files-at-the-limit": Case(
            "/v1/predict/batch",
            batch_files(lambda: [(f"{i}.jpg", at_limit(i % 4), "image/jpeg") for i in range(BATCH)]),
            200,
            items=[None] * BATCH,
            peak=BATCH_PEAK,
        ),
        "batch-multipart/hostile-items": Case(
            "/v1/predict/batch",
            batch_files(
                lambda: [
                    ("a.jpg", jpeg(), "image/jpeg"),
                    ("b.jpg", b"", "image/jpeg"),
                    ("c.png", png_bomb(), "image/png"),
                    ("d.svg", SVG, "image/svg+xml"),
                    ("e.gif", animated_gif(), "image/gif"),
                    ("f.jpg", TRUNCATED, "image/jpeg"),
                    ("g.jpg", huge_jpeg(), "image/jpeg"),
                    ("x" * 2000 + ".jpg", JPEG_PHOTOCD, "image/jpeg"),
                ]
            ),
            200,
            items=[
                None,
                "empty_file",
                "too_large",
                "unsupported_media_type",
                "unsupported_media_type",
                "corrupt_image",
                "too_large",
                "unreadable_image",
            ],
            peak=BATCH_PEAK,
        ),
        "batch-json/5000-digit-number": Case(  # json.loads raises a plain ValueError past 4,300 digits
            "/v1/predict/batch", _raw_json(b'{"images": [' + b"1" * 5000 + b"]}"), 422, "invalid_request"
        ),
        "batch-multipart/18-files": Case(  # past the parser's own part limit: the same answer as 17
            "/v1/predict/batch",
            batch_files(lambda: [(f"{i}.jpg", jpeg(seed=i), "image/jpeg") for i in range(18)]),
            422,
            "invalid_request",
        ),
        "batch-multipart/a-text-field-among-the-files": Case(  # refused, not dropped (the rest would renumber)
            "/v1/predict/batch",
            lambda: {"data": {"files": "not a file"}, "files": [("files", ("a.jpg", jpeg(), "image/jpeg"))] * 2},
            422,
            "invalid_request",
        ),
        "batch-multipart/no-files-part": Case(
            "/v1/predict/batch", lambda: {"files": {"file": ("a.jpg", jpeg(), "image/jpeg")}}, 422, "invalid_request"
        ),
        "predict/GET": Case("/v1/predict", lambda: {}, 405, "method_not_allowed", method="GET"),
        "jobs/unknown-id": Case("/v1/jobs/" + "x" * 4000, lambda: {}, 404, "not_found", method="GET"),
    }
)


# POST /v1/feedback takes {"request_id", "label"}: a body it cannot parse is a 400, one it can parse but not accept a
# 422, a request id it never served a 404.
_FEEDBACK: dict[str, tuple[Callable[[], dict[str, Any]], int, str]] = {
    # Within feedback's 64 kB body limit, deep enough to exhaust a recursive parser.
    "deep-nesting": (_raw_json(b"[" * 30_000 + b"]" * 30_000), 400, "bad_request"),
    "deep-object-nesting": (_raw_json(b'{"label":' * 6_000 + b"1" + b"}" * 6_000), 400, "bad_request"),
    "invalid-utf8": (_raw_json(b'{"request_id": "\xff\xfe", "label": "x"}'), 400, "bad_request"),
    "not-json": (_raw_json(b'{"request_id": '), 422, "invalid_request"),
    "empty-body": (_raw_json(b""), 422, "invalid_request"),
    "fields-missing": (lambda: {"json": {}}, 422, "invalid_request"),
    "label-not-a-string": (lambda: {"json": {"request_id": "abc", "label": {"$ne": None}}}, 422, "invalid_request"),
    "label-of-50-kB": (lambda: {"json": {"request_id": "abc", "label": "A" * 50_000}}, 422, "invalid_request"),
    "label-of-a-megabyte": (lambda: {"json": {"request_id": "abc", "label": "A" * 1_000_000}}, 413, "too_large"),
    "label-not-a-class": (
        lambda: {"json": {"request_id": "abc", "label": "<script>alert(1)</script>"}},
        422,
        "invalid_request",
    ),
    "unknown-request-id": (lambda: {"json": {"request_id": "x" * 80, "label": "Tomato___healthy"}}, 404, "not_found"),
    "a-photo-instead": (one_file(jpeg()), 422, "invalid_request"),
    "body-over-the-request-limit": (_raw_json(b"x" * 40_000_000), 413, "too_large"),
}
CASES.update({f"feedback/{name}": Case("/v1/feedback", *case) for name, case in _FEEDBACK.items()})


# -- the server and its memory -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(
        default_bundle_path(),
        tmp_path_factory.mktemp("hostile"),
        *("--set", f"serve.max_upload_bytes={LIMIT}"),
        *("--set", f"serve.max_pixels={PIXELS}"),
        *("--set", "serve.log_level=WARNING"),
    )
    try:
        with httpx.Client(base_url=s.url, timeout=10) as c:  # the first requests of a process allocate for good
            for _ in range(3):
                assert c.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 200
            assert c.post("/v1/predict/batch", json={"images": [b64(at_limit())] * BATCH}).status_code == 200
        yield s
    finally:
        s.proc.kill()
        s.proc.wait()


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_request_gets_its_documented_answer(server: Server, name: str) -> None:
    case = CASES[name]
    request = {**case.request(), **case.extra}
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _reset_peak(pid)
        before = _status(pid)["VmRSS"]
        started = time.perf_counter()
        r = client.request(case.method, case.route, **request)
        elapsed = time.perf_counter() - started
        peak = _status(pid)["VmHWM"] - before

        assert r.status_code == case.status, r.text[:500]
        assert elapsed < TIME_LIMIT_S, f"{elapsed:.1f} s"
        assert peak < case.peak, f"peak RSS grew {peak / MiB:.0f} MiB (bound {case.peak / MiB:.0f})"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "x-injected" not in {k.lower() for k in r.headers}  # a CR/LF in a file name reaches no header
        body = r.json()
        if case.code is not None:
            assert r.headers["content-type"] == "application/json"
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
            assert body["error"]["code"] == case.code and body["error"]["message"]
        if case.items is not None:
            assert [i["index"] for i in body["predictions"]] == list(range(len(case.items)))
            assert [None if i["error"] is None else i["error"]["code"] for i in body["predictions"]] == case.items
            assert all((i["prediction"] is None) == (i["error"] is not None) for i in body["predictions"])
        if r.status_code == 202:
            job = _wait_for_job(client, body["job_id"])
            expected = case.job_fails_with
            assert job["status"] == ("failed" if expected else "done"), job
            assert expected is None or job["error"]["code"] == expected
            body = job.get("result")
        if name.endswith("top_k='100'"):  # more than the model has classes: all of them, once each
            top = body["predictions"][0]["prediction"]["top_k"] if "predictions" in body else body["top_k"]
            assert len(top) == len({t["label"] for t in top}) == 15


def _wait_for_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIME_LIMIT_S
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def test_after_the_corpus_the_server_is_healthy_and_holds_nothing(server: Server) -> None:
    """Runs after the corpus (file order): no leaked memory, file descriptors or temp files, and still answering."""
    pid = server.proc.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = _status(pid)["VmRSS"]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in ("batch-multipart/16-files-at-the-limit", "predict/png-bomb-30000x30000", "predict/20-MB-upload"):
            for _ in range(3):
                assert client.post(CASES[name].route, **CASES[name].request()).status_code == CASES[name].status
        assert client.post("/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 200
        assert client.get("/readyz").status_code == 200
    assert server.proc.poll() is None
    assert len(os.listdir(f"/proc/{pid}/fd")) <= fds + 2  # spooled uploads are closed, not left to pile up
    assert _status(pid)["VmRSS"] - rss < 64 * MiB
    assert "Traceback" not in server.log.read_text() and '"level": "ERROR"' not in server.log.read_text()
