"""Security: the admin token, logs free of secrets and photos, CORS, the page's headers, request size limits, and
rate-limit keys a client cannot forge. (test_limits_and_admin.py has the basics of the token and the limits.)"""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from conftest import TOKEN, Server, make_leaf, start_server
from plantdx.config import Settings, load_settings
from plantdx.inference import default_bundle_path
from plantdx.serve import create_app

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_env")]

API_KEY = "team-key-5f0c8a1e9b"
PHOTO_MARKER = b"PHOTO-BYTES-7d1e4c"  # a JPEG comment: if any part of the photo reached a log, this would
QUERY_SECRET = "query-secret-93b2aa"


def settings(*extra: str) -> Settings:
    """The bundled model; no prediction log (it would be a file in the working directory)."""
    base = [f"serve.model={default_bundle_path()}", "serve.log_level=WARNING", "monitor.log_url=null"]
    return load_settings(overrides=[*base, *extra])


def marked_jpeg(seed: int = 1) -> bytes:
    buf = io.BytesIO()
    make_leaf("Crop___Spot", seed).save(buf, format="JPEG", comment=PHOTO_MARKER)
    return buf.getvalue()


@contextmanager
def serve(tmp_path: Path, *sets: str) -> Iterator[Server]:
    s = start_server(default_bundle_path(), tmp_path, *[arg for item in sets for arg in ("--set", item)])
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


# -- admin token ---------------------------------------------------------------------------------------------------


def test_an_empty_admin_token_is_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PLANTDX_ADMIN_TOKEN=`` (e.g. an unset variable in a compose file) used to mount the admin routes and let
    ``Authorization: Bearer`` (an empty token) reload the model."""
    monkeypatch.setenv("PLANTDX_ADMIN_TOKEN", "")
    with TestClient(create_app(settings())) as c:
        for header in ("Bearer", "Bearer ", "bearer  "):
            r = c.post("/v1/admin/reload", headers={"Authorization": header})
            assert r.status_code == 404, (header, r.text)
        assert not [p for p in c.get("/openapi.json").json()["paths"] if p.startswith("/v1/admin")]


def test_the_admin_token_must_match_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTDX_ADMIN_TOKEN", TOKEN)
    with TestClient(create_app(settings())) as c:
        missing = c.post("/v1/admin/reload")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "unauthorized"
        for near in (TOKEN[:-1], TOKEN + "x", TOKEN.upper(), f" {TOKEN}", "", TOKEN[:1]):
            r = c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {near}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", near
        assert c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


# -- logs ----------------------------------------------------------------------------------------------------------


def test_logs_hold_no_secrets_and_no_photo_bytes(tmp_path: Path) -> None:
    """Every request carries a secret or a photo; the server logs at DEBUG; none of it may reach the log."""
    photo = marked_jpeg()
    assert PHOTO_MARKER in photo
    broken = photo[: len(photo) // 2]  # fails to decode: error paths log too
    encoded = base64.b64encode(photo).decode()
    secrets = [TOKEN, API_KEY, QUERY_SECRET, PHOTO_MARKER.decode(), encoded[200:240], photo[100:132].hex()]
    with serve(tmp_path, f'serve.api_keys=["{API_KEY}"]', "serve.log_level=DEBUG") as s:
        key = {"X-API-Key": API_KEY}
        with httpx.Client(base_url=s.url, timeout=30) as c:
            files = {"file": ("leaf.jpg", photo, "image/jpeg")}
            assert c.post(f"/v1/predict?token={QUERY_SECRET}", files=files, headers=key).status_code == 200
            images = [base64.b64encode(photo).decode(), base64.b64encode(broken).decode()]
            assert c.post("/v1/predict/batch", json={"images": images}, headers=key).status_code == 200
            assert c.post("/v1/predict", files={"file": ("b.jpg", broken, "image/jpeg")}).status_code == 422
            job = c.post("/v1/jobs", files=files, headers=key).json()["job_id"]
            deadline = time.monotonic() + 10
            while c.get(f"/v1/jobs/{job}").json()["status"] not in ("done", "failed"):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            bad = c.post("/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}-{API_KEY}"})
            assert bad.status_code == 403
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0
        log = s.log.read_text()
    access = re.findall(r'"route": "([^"]+)", "status": (\d+)', log)
    for expected in [("/v1/predict", "200"), ("/v1/predict/batch", "200"), ("/v1/predict", "422"),
                     ("/v1/jobs", "202"), ("/v1/admin/reload", "200"), ("/v1/admin/reload", "403")]:  # fmt: skip
        assert expected in access, (expected, access)  # the requests were logged, just not their secrets
    for secret in secrets:
        assert secret not in log, secret
    assert "authorization" not in log.lower() and "x-api-key" not in log.lower()


# -- CORS ----------------------------------------------------------------------------------------------------------


def preflight(c: TestClient, origin: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    return c.options("/v1/predict", headers=headers)


def test_cors_is_closed_by_default() -> None:
    with TestClient(create_app(settings())) as c:
        for origin in ("https://evil.example", "null", "http://localhost:3000"):
            r = preflight(c, origin)
            assert r.status_code == 405 and "access-control-allow-origin" not in r.headers, origin
            assert "access-control-allow-origin" not in c.get("/v1/model", headers={"Origin": origin}).headers


def test_cors_opens_to_the_configured_origins_only() -> None:
    app = "https://app.example"
    with TestClient(create_app(settings(f'serve.cors_origins=["{app}"]'))) as c:
        ok = preflight(c, app)
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == app
        assert "POST" in ok.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in ok.headers  # no cookies: there are none to protect
        assert ok.headers["x-content-type-options"] == "nosniff"
        evil = preflight(c, "https://evil.example")
        assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
        look_alike = preflight(c, "https://app.example.evil.example")
        assert "access-control-allow-origin" not in look_alike.headers
        assert c.get("/v1/model", headers={"Origin": app}).headers["access-control-allow-origin"] == app
        assert (
            "access-control-allow-origin" not in c.get("/v1/model", headers={"Origin": "https://evil.example"}).headers
        )


# -- the page ------------------------------------------------------------------------------------------------------


class _Assets(HTMLParser):
    """Scripts, stylesheets and inline code in a page: what its CSP must allow."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.inline += [f"{tag} {k}" for k, _ in attrs if k.startswith("on") or k == "style"]
        if tag == "script":
            self._in_script = True
            if named.get("src"):
                self.sources.append(str(named["src"]))
        if tag == "link" and named.get("rel") in ("stylesheet", "manifest", "icon", "apple-touch-icon"):
            self.sources.append(str(named["href"]))
        if tag == "style":
            self.inline.append("style element")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline script")


def test_the_page_has_its_security_headers_and_lives_within_its_csp() -> None:
    with TestClient(create_app(settings())) as c:
        page = c.get("/")
        assert page.status_code == 200
        h = page.headers
        assert (h["x-content-type-options"], h["x-frame-options"], h["referrer-policy"]) == ("nosniff", "DENY",
                                                                                             "no-referrer")  # fmt: skip
        assert "geolocation=()" in h["permissions-policy"] and "camera=(self)" in h["permissions-policy"]
        csp = dict(d.strip().split(" ", 1) for d in h["content-security-policy"].split(";"))
        # WebAssembly may be compiled (onnxruntime-web: offline diagnosis); JavaScript may still not be evaluated
        assert csp["default-src"] == "'self'" and csp["script-src"] == "'self' 'wasm-unsafe-eval'"
        assert csp["frame-ancestors"] == "'none'" and csp["base-uri"] == "'none'"
        assert (
            "'unsafe-eval'" not in h["content-security-policy"] and "unsafe-inline" not in h["content-security-policy"]
        )
        # A CSP without 'unsafe-inline' only works if the page has no inline code: every asset comes from 'self'.
        assets = _Assets()
        assets.feed(page.text)
        assert assets.sources and not assets.inline, assets.inline
        for src in assets.sources:
            assert not urlsplit(src).netloc, src
            asset = c.get(src)
            assert asset.status_code == 200 and asset.headers["x-content-type-options"] == "nosniff", src
        # Errors and API answers carry the same headers (a JSON error must not be sniffed into HTML either).
        for r in (c.get("/nowhere"), c.get("/v1/model"), c.post("/v1/predict")):
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"


# -- request size limits -------------------------------------------------------------------------------------------


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[Server]:
    """max_upload_bytes=100 kB: the whole-request limit is 16 images in base64 plus 1 MiB, about 3.2 MB."""
    with serve(tmp_path, "serve.max_upload_bytes=100000") as s:
        yield s


def test_a_declared_oversized_body_is_refused_before_it_is_sent(small_server: Server) -> None:
    """A client announcing a terabyte gets its 413 at once: the server neither waits for the body nor reads it."""
    url = urlsplit(small_server.url)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000000\r\n\r\n"
        )
        answer = b""
        while b"}}" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert time.monotonic() - started < 2
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "too_large", answer


def test_a_single_image_route_has_a_single_image_limit(small_server: Server) -> None:
    """600 kB is within the batch route's 3.2 MB but six files over /v1/predict's one: refused before it is sent."""
    url = urlsplit(small_server.url)
    for route in ("/v1/predict", "/v1/jobs"):
        with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
            sock.sendall(
                f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                "Content-Length: 600000\r\n\r\n".encode()
            )
            answer = b""
            while b"}}" not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413") and b"exceeds 165536 bytes" in body, (route, answer)


def test_a_chunked_body_is_cut_off_at_the_limit(small_server: Server) -> None:
    """No Content-Length to check up front: the body is counted as it arrives and refused once over the limit,
    without waiting for its end (this client sends a little over the limit and never ends the body)."""
    url = urlsplit(small_server.url)
    piece = b"x" * 65536
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/predict/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(54):  # 54 x 64 kB = 3.5 MB, over the 3.2 MB limit; no closing 0-length chunk
            sock.sendall(b"10000\r\n" + piece + b"\r\n")
        answer = b""
        while b"}}" not in answer:
            chunk = sock.recv(65536)  # a server waiting for the body's end would time out here
            assert chunk, answer
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "too_large", answer
    assert small_server.proc.poll() is None
    with httpx.Client(base_url=small_server.url, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
    counted = [line for line in small_server.log.read_text().splitlines() if '"route": "/v1/predict/batch"' in line]
    assert counted and '"status": 413' in counted[-1]


# -- rate-limit keys -----------------------------------------------------------------------------------------------


def _predict(c: httpx.Client, **headers: str) -> int:
    files = {"file": ("a.jpg", marked_jpeg(), "image/jpeg")}
    return c.post("/v1/predict", files=files, headers=headers).status_code


def test_forged_forwarding_headers_buy_no_fresh_budget(tmp_path: Path) -> None:
    """No trusted proxy configured: the key is the socket's peer, whatever the request claims."""
    with serve(tmp_path, "serve.rate_limit=3/minute") as s:
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert [_predict(c, **{"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(3)] == [200] * 3
            for forged in (
                {"X-Forwarded-For": "203.0.113.99"},
                {"X-Forwarded-For": "198.51.100.1, 203.0.113.98"},
                {"Forwarded": "for=198.51.100.2"},
                {"X-Real-IP": "198.51.100.3"},
                {"X-API-Key": "made-up"},
            ):
                r = c.post("/v1/predict", files={"file": ("a.jpg", marked_jpeg(), "image/jpeg")}, headers=forged)
                assert r.status_code == 429 and int(r.headers["retry-after"]) > 0, forged


def test_a_trusted_proxy_forwards_the_client_address(tmp_path: Path) -> None:
    """With the peer listed in trusted_proxies, each forwarded client has its own budget, and a client cannot
    prepend addresses of its own: the proxy's entry (the last) is the one believed."""
    with serve(tmp_path, "serve.rate_limit=3/minute", 'serve.trusted_proxies=["127.0.0.1"]') as s:
        alice, bob = "203.0.113.10", "203.0.113.20"
        with httpx.Client(base_url=s.url, timeout=30) as c:
            assert [_predict(c, **{"X-Forwarded-For": alice}) for _ in range(3)] == [200] * 3
            assert _predict(c, **{"X-Forwarded-For": alice}) == 429
            assert _predict(c, **{"X-Forwarded-For": f"198.51.100.7, {alice}"}) == 429
            assert _predict(c, **{"X-Forwarded-For": bob}) == 200
            assert _predict(c) == 200  # the proxy's own requests are the proxy's budget
