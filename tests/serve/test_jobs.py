"""The in-process job backend on its own (the HTTP round trip is in test_predict, Celery's in test_redis)."""

from __future__ import annotations

import asyncio

from plantdx.serve.errors import OverloadedError
from plantdx.serve.jobs import LocalJobs


def test_an_accepted_job_waits_out_a_busy_model_instead_of_failing() -> None:
    """A 202 is a promise: the shedding a predict answers with 503 only delays a job."""
    calls = {"n": 0}

    async def work(*_: object) -> dict[str, object]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OverloadedError("the inference queue is full (64 waiting); retry shortly")
        return {"prediction": "Crop___healthy"}

    async def main() -> dict[str, object]:
        jobs = LocalJobs(work, workers=1, ttl_s=60, max_queued=4)
        await jobs.start()
        job = await jobs.submit(b"x", None, None)
        for _ in range(100):
            if job.status in ("done", "failed"):
                break
            await asyncio.sleep(0.02)
        await jobs.stop(1)
        return job.public()

    answer = asyncio.run(main())
    assert answer["status"] == "done" and calls["n"] == 3, answer
