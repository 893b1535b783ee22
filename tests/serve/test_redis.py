"""With Redis configured: jobs on Celery workers that survive a killed worker, and rate limits shared by replicas.

A real `redis-server` (Debian package) on a free loopback port; real `plantdx worker` processes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from conftest import free_port, installed, jpeg, serve_settings
from plantdx.export import ExportResult
from plantdx.serve import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    binary = installed("redis-server", "apt-get install redis-server")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--logfile", str(folder / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                log = folder / "redis.log"
                said = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not answer: {said}") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


# `plantdx worker` whose every job first sleeps 3 s, so a test can kill it mid-job: the diagnosis path is wrapped
# in the worker process itself, before the CLI starts it (production settings carry no such hook).
SLOW_WORKER = """
import sys, time
import plantdx.serve.tasks as tasks
diagnose = tasks.diagnose
async def slow(*args, **kwargs):
    time.sleep(3)
    return await diagnose(*args, **kwargs)
tasks.diagnose = slow
from plantdx.cli import main
sys.argv[0] = "plantdx"
main()
"""


def start_worker(bundle: Path, redis_url: str, log: Path, log_url: str = "null") -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTDX_")}
    cmd = [sys.executable, "-c", SLOW_WORKER, "worker", "--model", str(bundle),
           "--set", f"serve.redis_url={redis_url}",
           "--set", "serve.job_visibility_timeout_s=6", "--set", f"monitor.log_url={log_url}"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_job_survives_its_worker_being_killed(
    exported: ExportResult,
    redis_url: str,
    tmp_path: Path,
    clean_env: None,  # noqa: ARG001
) -> None:
    settings = serve_settings(exported.bundle, f"serve.redis_url={redis_url}", "serve.job_visibility_timeout_s=6")
    log_url = settings.monitor.log_url
    assert log_url is not None
    workers = [start_worker(exported.bundle, redis_url, tmp_path / f"worker{i}.log", log_url) for i in range(2)]
    try:
        with TestClient(create_app(settings)) as c:
            job_id = c.post("/v1/jobs?explain=true", files={"file": ("a.jpg", jpeg(), "image/jpeg")}).json()["job_id"]
            jobs = c.app.state.jobs  # type: ignore[attr-defined]
            wait_for(lambda: jobs.app.AsyncResult(job_id).state == "STARTED", 60, "a worker to start the job")
            victim = jobs.app.AsyncResult(job_id).info["pid"]
            assert victim in {w.pid for w in workers}
            os.kill(victim, signal.SIGKILL)  # mid-job: it sleeps 3 s before answering
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running")
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json()["status"] == "done", 90, "the job on the other worker")
            done = c.get(f"/v1/jobs/{job_id}").json()
            assert done["result"]["prediction"] in ("Crop___Blight", "Crop___Spot", "Crop___healthy")
            assert base64.b64decode(done["result"]["heatmap"])[:4] == b"\x89PNG"  # the worker explains too
            store = c.app.state.monitoring.store  # type: ignore[attr-defined]
            wait_for(lambda: any(r["request_id"] == job_id for r in store.window(last=5)), 10, "the worker's log row")
            (row,) = [r for r in store.window(last=5) if r["request_id"] == job_id]  # the same log as the API's
            assert row["predicted"] == done["result"]["prediction"] and row["brightness"] is not None
            survivor = next(w for w in workers if w.pid != victim)
            assert survivor.poll() is None
            assert c.get("/v1/jobs/not-a-job").status_code == 404
            assert c.get("/health").json()["checks"]["redis"]["ok"] is True
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(timeout=20)
            except subprocess.TimeoutExpired:
                w.kill()


def test_rate_limits_are_shared_by_replicas(exported: ExportResult, redis_url: str, clean_env: None) -> None:  # noqa: ARG001
    redis.Redis.from_url(redis_url).flushdb()
    settings = serve_settings(exported.bundle, f"serve.redis_url={redis_url}", "serve.rate_limit=10/minute")
    files = {"file": ("a.jpg", jpeg(), "image/jpeg")}
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        statuses = [c.post("/v1/predict", files=files).status_code for c in (a, b) * 5]
        assert statuses == [200] * 10
        assert a.post("/v1/predict", files=files).status_code == 429
        assert b.post("/v1/predict", files=files).status_code == 429


def test_job_ids_live_as_long_as_their_job_and_result(redis_url: str) -> None:
    """Queued past the TTL, a job is still queued; finished, it lives job_ttl_s after its result is first read, and
    once the result has gone it is gone (404), never "queued" again. Real Redis, Celery's own result backend."""
    from plantdx.config import load_settings
    from plantdx.serve.tasks import CeleryJobs

    settings = load_settings(overrides=[f"serve.redis_url={redis_url}", "serve.job_ttl_s=2"])
    jobs = CeleryJobs(settings)
    job = jobs._submit(jpeg(), "image/jpeg", None, False)  # no worker runs in this test: it stays queued
    for _ in range(6):  # 3 s of polling, past the 2 s TTL
        assert jobs._get(job.job_id).status == "queued"  # type: ignore[union-attr]
        time.sleep(0.5)
    jobs.app.backend.store_result(job.job_id, {"status": "done", "result": {"prediction": "x"}}, "SUCCESS")
    done = jobs._get(job.job_id)
    assert done is not None and done.status == "done" and done.result == {"prediction": "x"}
    jobs.app.backend.forget(job.job_id)  # the result expires
    assert jobs._get(job.job_id) is None
