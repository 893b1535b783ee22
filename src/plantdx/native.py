"""The native-app export: ``model.pte``, the network as an ExecuTorch program lowered to XNNPACK.

A phone app links the ExecuTorch runtime and runs this file on the model's NCHW input; its outputs are the ONNX
graph's (``logits``, ``embedding`` where the architecture has one), so the app applies the bundle's calibration
the way ``Predictor`` does (or runs ``model.edge.onnx`` with ONNX Runtime Mobile instead, post-processing inside).
Checked here with ExecuTorch's own Python runtime against ``model.onnx`` on the test split.

Needs the ``edge`` extra (``executorch``, with the pinned torch); imported only by ``plantdx export --edge``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plantdx.bundle import NATIVE_FILE
from plantdx.errors import PlantdxError

MIN_TOP1 = 0.995


class NativeExportError(PlantdxError):
    """ExecuTorch is missing, cannot lower the model, or its program does not answer as ONNX does."""


@dataclass(frozen=True)
class NativeParity:
    n: int
    top1_agreement: float
    max_abs_logit_diff: float
    passed: bool


class _Outputs(nn.Module):
    """The served graph without its heat-map output: what an app needs, and what XNNPACK lowers whole."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.net = graph  # not "graph": the name of an fx GraphModule's own attribute

    def forward(self, x: torch.Tensor) -> Any:
        out = self.net(x)
        return out[:2] if isinstance(out, tuple) else out


def export_pte(graph: nn.Module, image_size: int, path: Path) -> Path:
    """``torch.export`` -> Edge dialect -> XNNPACK partitions -> an ExecuTorch program file (batch of one)."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as exc:
        raise NativeExportError(
            f"ExecuTorch is not installed ({exc}): pip install 'plantdx[edge]' for plantdx export --edge"
        ) from None
    example = (torch.randn(1, 3, image_size, image_size),)
    with torch.no_grad():
        program = torch.export.export(_Outputs(graph.eval().cpu()).eval(), example)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    return path


def run_pte(path: Path, inputs: np.ndarray) -> np.ndarray:
    """The program's first output (``logits``) for NCHW float32 inputs, one at a time (it was exported for one)."""
    from executorch.runtime import Runtime

    method: Any = Runtime.get().load_program(str(path)).load_method("forward")
    return np.concatenate([np.asarray(method.execute([torch.from_numpy(x[None].copy())])[0]) for x in inputs])


def pte_parity(path: Path, inputs: np.ndarray, onnx_logits: np.ndarray, min_top1: float = MIN_TOP1) -> NativeParity:
    logits = run_pte(path, inputs)
    agreement = float((logits.argmax(1) == onnx_logits.argmax(1)).mean())
    diff = float(np.abs(logits - onnx_logits).max())
    return NativeParity(len(inputs), agreement, diff, agreement >= min_top1)


def write_native_model(bundle_path: Path, graph: nn.Module, test_inputs: np.ndarray) -> dict[str, Any]:
    """``model.pte`` into a bundle folder, checked against its ``model.onnx`` on the test inputs; returns what the
    card records. Refuses (and writes nothing) when the program disagrees with ONNX."""
    from plantdx.inference import create_session

    image_size = int(test_inputs.shape[-1])
    out = bundle_path / NATIVE_FILE
    export_pte(graph, image_size, out)
    session = create_session(bundle_path / "model.onnx")
    onnx_logits = np.concatenate(
        [session.run(["logits"], {"image": test_inputs[i : i + 64]})[0] for i in range(0, len(test_inputs), 64)]
    )
    parity = pte_parity(out, test_inputs, onnx_logits)
    if not parity.passed:
        out.unlink()
        raise NativeExportError(f"the ExecuTorch program does not agree with model.onnx on the test photos: {parity}")
    import executorch

    return {
        "file": NATIVE_FILE,
        "bytes": out.stat().st_size,
        "runtime": f"executorch {getattr(executorch, '__version__', '?')}, XNNPACK delegate",
        "input": f"image float32 [1, 3, {image_size}, {image_size}] (preprocess.json), batch of one",
        "outputs": ["logits", "embedding"],
        "parity_with_onnx": asdict(parity),
    }
