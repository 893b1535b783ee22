"""Fault drills on a real ``plantdx serve`` process: Redis restarted or hung under load, the registry down at start.

SIGTERM and reload under load are drilled in test_server_process.py, a worker SIGKILLed mid-job in test_redis.py;
docs/reliability.md gathers the outcomes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from test_redis import wait_for
from test_server_process import Outcome, hammer

from conftest import Server, free_port, installed, jpeg, start_server
from plantdx.export import ExportResult

pytestmark = pytest.mark.slow


class RedisProcess:
    """A real redis-server on one loopback port, which the test kills and starts again (no persistence: the
    restarted server is empty, as after a crash)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        binary = installed("redis-server", "apt-get install redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        wait_for(lambda: _pings(client), 20, "redis-server to answer")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    server.start()
    yield server
    server.kill()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def submit(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, timeout=30)


def job_done(url: str, job_id: str) -> bool:
    r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30)
    return r.status_code == 200 and r.json()["status"] == "done"


def log_lines(server: Server) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]


def test_redis_restarted_under_load(exported: ExportResult, redis_proc: RedisProcess, tmp_path: Path) -> None:
    """Predictions never fail; jobs answer a clear 503 while Redis is down and work again once it is back; the
    shared rate limits fall back to per-process memory with a WARNING and return to Redis; no service restart."""
    server = start_server(exported.bundle, tmp_path, "--set", f"serve.redis_url={redis_proc.url}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    worker = subprocess.Popen(
        [sys.executable, "-m", "plantdx.cli", "worker", "--model", str(exported.bundle),
         "--set", f"serve.redis_url={redis_proc.url}", "--set", "monitor.log_url=null"],
        stdout=(tmp_path / "worker.log").open("wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    halt, outcomes = threading.Event(), list[Outcome]()
    threads = [threading.Thread(target=hammer, args=(server.url, halt, outcomes, 100_000)) for _ in range(4)]
    try:
        before = submit(server.url)
        assert before.status_code == 202
        job_id = before.json()["job_id"]
        wait_for(lambda: job_done(server.url, job_id), 90, "a job before the outage")
        assert redis.Redis.from_url(redis_proc.url).keys("LIMITS*"), "the rate limits are kept in Redis"

        for t in threads:
            t.start()
        time.sleep(1.0)
        redis_proc.kill()
        down_at = time.monotonic()

        started = time.monotonic()
        refused = submit(server.url)
        assert time.monotonic() - started < 10, "a job submission must not hang while Redis is down"
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "jobs_unavailable"
        assert refused.headers["retry-after"]
        polled = httpx.get(f"{server.url}/v1/jobs/{job_id}", timeout=30)
        assert polled.status_code == 503 and polled.json()["error"]["code"] == "jobs_unavailable"
        health = httpx.get(f"{server.url}/health", timeout=30).json()
        assert health["status"] == "degraded" and health["checks"]["redis"]["ok"] is False
        time.sleep(2.0)  # predictions keep flowing through the outage

        redis_proc.start()
        up_at = time.monotonic()
        wait_for(lambda: submit(server.url).status_code == 202, 30, "job submissions to work again")
        recovered_in = time.monotonic() - up_at
        again = submit(server.url)
        assert again.status_code == 202
        wait_for(lambda: job_done(server.url, again.json()["job_id"]), 90, "a job after the restart")
        assert httpx.get(f"{server.url}/health", timeout=30).json()["checks"]["redis"]["ok"] is True
        # the limiter retries Redis with back-off (1, 2, 4 ... 32 s): the counts move back to the new Redis.
        fresh = redis.Redis.from_url(redis_proc.url)
        wait_for(lambda: bool(fresh.keys("LIMITS*")), 70, "the rate limits to use Redis again")
    finally:
        halt.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=60)
        stop(worker)
        stop(server.proc)

    during = [o for o in outcomes if down_at <= o.started <= up_at]
    assert len(during) > 10, "load kept flowing during the outage"
    assert all(o.status == 200 for o in outcomes), {(o.status, o.error) for o in outcomes}
    lines = log_lines(server)
    limiter = [x for x in lines if x["logger"] == "plantdx.serve.limits"]
    assert any(x["level"] == "WARNING" and "memory" in str(x["message"]) for x in limiter), "the fallback is logged"
    assert any("recovered" in str(x["message"]) for x in limiter)
    # the figures docs/reliability.md quotes (pytest -s shows them)
    sys.stdout.write(f"\n{len(outcomes)} predictions, all 200, {len(during)} during the outage; jobs back "
                     f"{recovered_in:.1f} s after Redis (load1 {os.getloadavg()[0]:.2f})\n")  # fmt: skip


def test_a_hung_redis_does_not_stall_predictions(
    exported: ExportResult, redis_proc: RedisProcess, tmp_path: Path
) -> None:
    """A Redis that stops answering (SIGSTOP: no refusal, just silence) used to freeze the whole service: the rate
    limiter checks limits on the event loop, and redis-py waited without a timeout. Now predictions keep flowing and
    a job submission gets its 503 in seconds."""
    server = start_server(exported.bundle, tmp_path, "--set", f"serve.redis_url={redis_proc.url}")
    halt, outcomes = threading.Event(), list[Outcome]()
    threads = [threading.Thread(target=hammer, args=(server.url, halt, outcomes, 100_000)) for _ in range(4)]
    assert redis_proc.proc is not None
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        redis_proc.proc.send_signal(signal.SIGSTOP)
        hung_at = time.monotonic()
        refused = submit(server.url)
        assert time.monotonic() - hung_at < 9.5, "a job submission must not wait for a silent Redis"
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "jobs_unavailable"
        time.sleep(max(0.0, 10.0 - (time.monotonic() - hung_at)))
        redis_proc.proc.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        time.sleep(1.0)
    finally:
        if redis_proc.proc.poll() is None:
            redis_proc.proc.send_signal(signal.SIGCONT)
        halt.set()
        for t in threads:
            if t.is_alive():
                t.join(timeout=60)
        stop(server.proc)
    # A frozen event loop answers nothing until Redis is back: each client would start one request in the window.
    during = [o for o in outcomes if hung_at + 1 <= o.started <= resumed_at - 1]
    assert len(during) > 100, f"only {len(during)} predictions started while Redis was silent"
    assert all(o.status == 200 for o in outcomes), {(o.status, o.error) for o in outcomes}


def test_registry_unreachable_at_start_serves_the_bundled_model(exported: ExportResult, tmp_path: Path) -> None:
    """An MLflow tracking server that does not answer: the service starts within seconds on the bundled model and
    says so in /health (MLflow's own retries would have taken about four minutes)."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    # The last --model wins: start_server's bundle is replaced by the registry's champion.
    server = start_server(
        exported.bundle, tmp_path, "--model", "models:/plantdx@champion", "--set", f"tracking.uri={dead}"
    )
    try:
        assert time.monotonic() - started < 45
        health = httpx.get(f"{server.url}/health", timeout=30).json()
        assert health["status"] == "degraded"
        source = health["checks"]["model_source"]
        assert source["ok"] is False
        assert "models:/plantdx@champion" in source["detail"] and "serving the bundled model" in source["detail"]
        assert "from bundled" in health["checks"]["model"]["detail"]
        r = httpx.post(f"{server.url}/v1/predict", files={"file": ("a.jpg", jpeg(), "image/jpeg")}, timeout=30)
        assert r.status_code == 200 and r.json()["prediction"]
    finally:
        stop(server.proc)
