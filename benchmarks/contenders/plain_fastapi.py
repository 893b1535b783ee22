"""Contender: the plain FastAPI route a tuned hand-written service would be. Not part of plantdx; do not deploy it.

A sync ``def`` route, so FastAPI runs it in its threadpool, capped at ``--threads`` (the number of photos decoded and
inferred at once); one ONNX Runtime session with one intra-op thread shared by them (``pipeline.Pipeline``); uvicorn
with uvloop and httptools, no access log. ``/predict`` takes a multipart ``file``, ``/predict/raw`` the photo as the
body.

    python benchmarks/contenders/plain_fastapi.py --bundle DIR --port 8101 [--threads 2]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import uvicorn
from fastapi import Body, FastAPI, Header, UploadFile
from pipeline import Pipeline


def create_app(bundle: Path, threads: int) -> FastAPI:
    pipe = Pipeline(bundle)
    pipe.warm_up()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The threadpool's size is the route's concurrency: more threads than cores only adds switching.
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(lifespan=lifespan, openapi_url=None)

    @app.post("/predict", response_model=None)
    def predict(file: UploadFile) -> dict[str, Any]:
        return pipe(file.file.read(), file.content_type)

    @app.post("/predict/raw", response_model=None)
    def predict_raw(
        body: Annotated[bytes, Body(media_type="image/jpeg")],
        content_type: Annotated[str | None, Header()] = None,
    ) -> dict[str, Any]:
        return pipe(body, content_type)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2, help="route threads (photos in flight at once)")
    args = parser.parse_args()
    app = create_app(args.bundle, args.threads)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
