"""Admission control in the request middleware: past ``serve.max_in_flight`` uploads, a fast JSON 503 before the
body is read; other routes pass; the slots come back."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from plantdx.serve.metrics import Metrics
from plantdx.serve.middleware import RequestContextMiddleware


class Gate:
    """An ASGI app that holds every request until released, and counts what reached it."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(f"{scope['method']} {scope['path']}")
        if scope["method"] == "POST":
            await self.release.wait()
            await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_past_max_in_flight_uploads_get_a_fast_503_and_the_slots_come_back() -> None:
    async def main() -> None:
        gate, metrics = Gate(), Metrics()
        app = RequestContextMiddleware(gate, metrics=metrics, max_body_bytes=2**20, max_in_flight=2)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            held = [asyncio.create_task(client.post("/v1/predict", content=b"x" * 100)) for _ in range(2)]
            while len(gate.seen) < 2:
                await asyncio.sleep(0.001)
            refused = await asyncio.wait_for(client.post("/v1/predict/batch", content=b"x" * 100), 1)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "overloaded"
            assert refused.headers["retry-after"] == "1" and refused.headers["x-request-id"]
            assert len(gate.seen) == 2, "the refused request never reached the app"
            probe = await asyncio.wait_for(client.get("/healthz"), 1)
            assert probe.status_code == 200, "only uploads are admission-controlled"
            gate.release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await client.post("/v1/jobs", content=b"x")).status_code == 200, "the slots came back"
        shed = metrics.registry.get_sample_value("plantdx_shed_total", {"reason": "in_flight"})
        assert shed == 1
        refused_count = metrics.registry.get_sample_value(
            "plantdx_http_requests_total", {"route": "/v1/predict/batch", "method": "POST", "status": "503"}
        )
        assert refused_count == 1, "a refusal counts under its route, not as 'unmatched'"

    asyncio.run(main())
