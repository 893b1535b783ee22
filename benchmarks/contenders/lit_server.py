"""Contender: LitServe, as its docs set up an image model. Not part of plantdx; do not deploy it.

Run in its own venv (``benchmarks/serve.py`` makes it). LitServe's API server (uvicorn, one process) parses the
multipart form and hands it over a queue to ``--workers`` inference worker processes, each with its own ONNX Runtime
session (1 intra-op thread); with ``--max-batch-size`` above 1 a worker gathers up to that many requests, waiting at
most ``--batch-timeout`` seconds. ``/predict`` takes a multipart ``file`` (LitServe reads other bodies as JSON, so it
has no raw-body variant).

    python benchmarks/contenders/lit_server.py --bundle DIR --port 8102 [--workers 2] [--max-batch-size 16]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np
from pipeline import Pipeline


class LeafAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, bundle: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bundle = bundle

    def setup(self, device: str) -> None:  # noqa: ARG002 - CPU only
        self.pipe = Pipeline(self.bundle)
        self.pipe.warm_up(self.max_batch_size)

    # ``request`` is left unannotated: LitServe then parses the body as a form (an annotation makes it a query field).
    def decode_request(self, request) -> np.ndarray:  # type: ignore[no-untyped-def]
        upload = request["file"]
        return self.pipe.prepare(upload.file.read(), upload.content_type)

    def predict(self, x: np.ndarray) -> Any:
        if x.ndim == 4:  # a batch (LitAPI.batch stacks the arrays): one (output row, input) pair per request
            return list(zip(self.pipe.forward(x), x, strict=True))
        return self.pipe.forward(x[None])[0], x

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        return self.pipe.answer(*output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2, help="inference worker processes")
    parser.add_argument("--max-batch-size", type=int, default=1, help="1: no batching")
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a batch waits to fill")
    args = parser.parse_args()
    batching = {"max_batch_size": args.max_batch_size, "batch_timeout": args.batch_timeout}
    api = LeafAPI(args.bundle, **(batching if args.max_batch_size > 1 else {}))
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers, timeout=30)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)
