"""The diagnosis service (FastAPI). Imports no torch: it runs on onnxruntime, numpy and PIL."""

from plantdx.serve.app import create_app

__all__ = ["create_app"]
