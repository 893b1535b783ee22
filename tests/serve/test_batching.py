"""The micro-batcher on its own: batches form, overload sheds fast, failures fan out, nothing hangs."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from plantdx.serve.batching import MicroBatcher
from plantdx.serve.errors import OverloadedError


def make(run, **kw) -> tuple[MicroBatcher, ThreadPoolExecutor]:  # type: ignore[no-untyped-def]
    pool = ThreadPoolExecutor(2)
    opts = {"max_batch_size": 4, "max_wait_ms": 20, "queue_size": 64, "timeout_ms": 2000, "max_in_flight": 1}
    batcher = MicroBatcher(run, pool, **{**opts, **kw})
    batcher.start()
    return batcher, pool


def test_concurrent_requests_share_calls_and_get_their_own_rows() -> None:
    sizes: list[int] = []

    def run(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        time.sleep(0.01)
        return x.sum(axis=(1, 2, 3))[:, None] * np.ones((1, 3))

    async def main() -> list[np.ndarray]:
        batcher, pool = make(run)
        inputs = [np.full((3, 2, 2), i, dtype=np.float32) for i in range(10)]
        out = await asyncio.gather(*(batcher.submit(x) for x in inputs))
        await batcher.drain(1)
        pool.shutdown()
        return out

    out = asyncio.run(main())
    assert [float(o[0]) for o in out] == [12.0 * i for i in range(10)]  # each caller gets its own row
    assert max(sizes) == 4 and sum(sizes) == 10 and len(sizes) < 10


def test_a_full_queue_sheds_with_503_at_once() -> None:
    gate = threading.Event()

    def run(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return np.zeros((len(x), 2))

    async def main() -> tuple[int, int]:
        batcher, pool = make(run, queue_size=2, max_batch_size=1, max_wait_ms=0)
        tasks = [asyncio.ensure_future(batcher.submit(np.zeros(3, np.float32))) for _ in range(8)]
        await asyncio.sleep(0.2)
        # "At once": while the one call in flight is still held, the requests that found no room are answered.
        early = [t for t in tasks if t.done()]
        assert len(early) >= 4 and all(isinstance(t.exception(), OverloadedError) for t in early)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.drain(1)
        pool.shutdown()
        shed = sum(isinstance(r, OverloadedError) for r in results)
        return shed, sum(isinstance(r, np.ndarray) for r in results)

    shed, answered = asyncio.run(main())
    assert shed >= 4 and answered >= 2 and shed + answered == 8


def test_requests_past_their_deadline_get_503_not_a_late_answer() -> None:
    def run(x: np.ndarray) -> np.ndarray:
        time.sleep(0.3)
        return np.zeros((len(x), 2))

    async def main() -> list[object]:
        batcher, pool = make(run, timeout_ms=100, max_batch_size=1, max_wait_ms=0)
        results = await asyncio.gather(*(batcher.submit(np.zeros(3)) for _ in range(4)), return_exceptions=True)
        await batcher.drain(1)
        pool.shutdown()
        return list(results)

    results = asyncio.run(main())
    assert isinstance(results[0], np.ndarray)
    assert all(isinstance(r, OverloadedError) and "waited more than" in str(r) for r in results[1:]), results


def test_a_failing_batch_fails_its_callers_and_the_loop_goes_on() -> None:
    calls = {"n": 0}

    def run(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return np.zeros((len(x), 2))

    async def main() -> tuple[object, object]:
        batcher, pool = make(run, max_wait_ms=0, max_batch_size=1)
        first = await asyncio.gather(batcher.submit(np.zeros(3)), return_exceptions=True)
        second = await batcher.submit(np.zeros(3))
        await batcher.drain(1)
        pool.shutdown()
        return first[0], second

    first, second = asyncio.run(main())
    assert isinstance(first, RuntimeError) and isinstance(second, np.ndarray)


def test_drain_answers_everything_and_stragglers_still_work() -> None:
    async def main() -> tuple[list[object], np.ndarray]:
        batcher, pool = make(lambda x: np.zeros((len(x), 2)), max_wait_ms=5)
        results = await asyncio.gather(*(batcher.submit(np.zeros(3)) for _ in range(6)), return_exceptions=True)
        await batcher.drain(1)
        late = await batcher.submit(np.zeros(3))  # after drain: computed alone, never left hanging
        pool.shutdown()
        return list(results), late

    results, late = asyncio.run(main())
    assert all(isinstance(r, np.ndarray) for r in results) and late.shape == (2,)


@pytest.mark.parametrize("n", [1, 3])
def test_batch_of_one_and_more(n: int) -> None:
    async def main() -> list[np.ndarray]:
        batcher, pool = make(lambda x: x.sum(axis=1, keepdims=True))
        out = await asyncio.gather(*(batcher.submit(np.full(3, i, np.float32)) for i in range(n)))
        await batcher.drain(1)
        pool.shutdown()
        return list(out)

    assert [o.tolist() for o in asyncio.run(main())] == [[3.0 * i] for i in range(n)]


def test_a_drain_answers_requests_caught_in_the_batching_window() -> None:
    """A request already taken off the queue while the batcher waits for company is answered at once (503) when a
    drain stops the loop, not left to the one-minute safety net."""

    async def main() -> tuple[object, float]:
        batcher, pool = make(lambda x: np.zeros((len(x), 2)), max_wait_ms=2000, max_batch_size=4)
        task = asyncio.ensure_future(batcher.submit(np.zeros(3)))
        await asyncio.sleep(0.05)  # taken off the queue: the loop now waits up to 2 s for more
        started = time.monotonic()
        await batcher.drain(0)
        result = (await asyncio.gather(task, return_exceptions=True))[0]
        pool.shutdown()
        return result, time.monotonic() - started

    result, waited = asyncio.run(main())
    assert isinstance(result, OverloadedError) and waited < 1.0, (result, waited)


def test_idle_while_a_stream_is_free_and_nobody_waits() -> None:
    """The engine sends a lone request straight to a free stream (no hop to the decode pool and the batcher); the
    batcher is idle only while that holds."""
    gate = threading.Event()

    def run(x: np.ndarray) -> np.ndarray:
        gate.wait(5)
        return np.zeros((len(x), 2))

    async def main() -> list[bool]:
        batcher, pool = make(run, max_in_flight=2, max_batch_size=1, max_wait_ms=0)
        await asyncio.sleep(0.05)  # the loop holds one stream while it waits for work: one is free
        seen = [batcher.idle()]
        busy = [asyncio.ensure_future(batcher.submit(np.zeros(3, np.float32))) for _ in range(3)]
        await asyncio.sleep(0.1)  # one runs, the loop waits for the other stream, one queues
        seen.append(batcher.idle())
        gate.set()
        await asyncio.gather(*busy)
        await asyncio.sleep(0.05)
        seen.append(batcher.idle())
        await batcher.drain(1)
        seen.append(batcher.idle())  # drained: requests compute alone, not through the stopped loop
        pool.shutdown()
        return seen

    assert asyncio.run(main()) == [True, False, True, False]


def test_the_deadline_counts_from_when_the_photo_started_its_way() -> None:
    """A photo that waited for a decode thread has used part of its time: submitted with its start, it is shed by
    the deadline that start sets, not given a fresh one."""

    def run(x: np.ndarray) -> np.ndarray:
        return np.zeros((len(x), 2))

    async def main() -> tuple[BaseException | None, np.ndarray]:
        batcher, pool = make(run, timeout_ms=100)
        late = time.monotonic() - 0.2  # started 200 ms ago: past its 100 ms
        try:
            await batcher.submit(np.zeros(3, np.float32), late)
            refused: BaseException | None = None
        except OverloadedError as exc:
            refused = exc
        fresh = await batcher.submit(np.zeros(3, np.float32))
        await batcher.drain(1)
        pool.shutdown()
        return refused, fresh

    refused, fresh = asyncio.run(main())
    assert isinstance(refused, OverloadedError) and "100 ms" in str(refused)
    assert fresh.shape == (2,)
