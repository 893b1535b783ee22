"""The design document's first draft, kept as the baseline `benchmarks/serve.py` compares against.

A tutorial-style FastAPI ``async def`` route that decodes with PIL and calls a PyTorch model per request, on the
event loop. Not part of plantdx; do not deploy it.
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, UploadFile
from PIL import Image

from plantdx.images import preprocess


def load_torch_model(bundle: Path, checkpoint: Path | None) -> tuple[Any, str]:
    if checkpoint is not None:
        from plantdx.model import PlantClassifier

        module = PlantClassifier.load_from_checkpoint(
            checkpoint, map_location="cpu", pretrained=False, pretrained_path=None
        )
        return module.model.eval(), "pytorch-eager"
    return torch.jit.load(str(bundle / "model.ts")).eval(), "torchscript (no checkpoint given)"


def create_naive_app(bundle: Path, checkpoint: Path | None) -> FastAPI:
    model, kind = load_torch_model(bundle, checkpoint)
    labels = json.loads((bundle / "labels.json").read_text())
    spec = json.loads((bundle / "preprocess.json").read_text())
    app = FastAPI()

    @app.post("/v1/predict")
    async def predict(file: UploadFile) -> dict[str, Any]:
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        x = torch.from_numpy(preprocess(image, spec))[None]
        with torch.no_grad():
            probs = model(x).softmax(1)[0]
        best = int(probs.argmax())
        return {"prediction": labels[best], "confidence": float(probs[best]), "runtime": kind}

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_naive_app(args.bundle, args.checkpoint), host="127.0.0.1", port=args.port, log_level="warning")
