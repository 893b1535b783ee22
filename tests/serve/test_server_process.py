"""A real `plantdx serve` process: model reload and SIGTERM under load lose no accepted request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import jpeg
from plantdx.export import ExportResult

pytestmark = pytest.mark.slow
TOKEN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


def start_server(bundle: Path, tmp_path: Path, *extra: str) -> Server:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    env["PLANTDX_ADMIN_TOKEN"] = TOKEN
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "plantdx.cli", "serve", "--port", str(port), "--model", str(bundle),
           "--set", "serve.drain_timeout_s=15", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(proc, url, log)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become ready:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(exported: ExportResult, tmp_path: Path) -> Iterator[Server]:
    s = start_server(exported.bundle, tmp_path)
    yield s
    if s.proc.poll() is None:
        s.proc.kill()


@dataclass
class Outcome:
    started: float
    status: int | None
    error: str | None


def hammer(url: str, stop: threading.Event, out: list[Outcome], max_requests: int) -> None:
    body = jpeg()
    with httpx.Client(timeout=30) as client:
        for _ in range(max_requests):
            if stop.is_set():
                return
            started = time.monotonic()
            try:
                r = client.post(f"{url}/v1/predict", files={"file": ("a.jpg", body, "image/jpeg")})
                out.append(Outcome(started, r.status_code, None))
            except httpx.TransportError as exc:
                out.append(Outcome(started, None, type(exc).__name__))
                return


def test_reload_under_load_fails_no_request(server: Server) -> None:
    stop, outcomes = threading.Event(), []
    threads = [threading.Thread(target=hammer, args=(server.url, stop, outcomes, 60)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    reloads = [
        httpx.post(f"{server.url}/v1/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        for _ in range(2)
    ]
    for t in threads:
        t.join(timeout=60)
    assert [r.status_code for r in reloads] == [200, 200]
    assert len(outcomes) == 240
    assert all(o.status == 200 for o in outcomes), {(o.status, o.error) for o in outcomes}


def test_sigterm_drains_in_flight_requests_and_exits_zero(server: Server) -> None:
    stop, outcomes = threading.Event(), []
    threads = [threading.Thread(target=hammer, args=(server.url, stop, outcomes, 10_000)) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    sent_at = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log.read_text()[-3000:]
    stop.set()
    for t in threads:
        t.join(timeout=30)
    answered = [o for o in outcomes if o.status is not None]
    assert len(answered) > 20
    assert all(o.status == 200 for o in answered), {o.status for o in answered}
    # Requests under way well before the signal were accepted: each one must have been answered.
    accepted = [o for o in outcomes if o.started < sent_at - 0.05]
    assert all(o.status == 200 for o in accepted), [o for o in accepted if o.status != 200][:5]
    log = server.log.read_text()
    assert '"message": "draining"' in log and '"message": "stopped"' in log
