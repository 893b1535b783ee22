"""The diagnosis service (FastAPI). Imports no torch: it runs on onnxruntime, numpy and PIL.

``create_app`` is imported on first use, so that the prediction log (``plantdx.serve.prediction_log``), which
``plantdx monitor`` and ``plantdx retrain`` read, does not bring FastAPI along.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plantdx.serve.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from plantdx.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'plantdx.serve' has no attribute {name!r}")
