"""``plantdx export --edge``: the ExecuTorch program (``model.pte``, XNNPACK) beside the ONNX graph, checked with
ExecuTorch's own runtime (the ``edge`` extra)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from plantdx.bundle import NATIVE_FILE, load_bundle
from plantdx.config import Settings
from plantdx.inference import create_session
from plantdx.train import TrainResult

pytestmark = pytest.mark.slow


def test_export_edge_writes_an_executorch_program_that_answers_as_onnx(
    trained_tiny: tuple[Settings, TrainResult], tmp_path: Path
) -> None:
    if importlib.util.find_spec("executorch") is None:  # fail, not skip: make install installs the edge extra
        pytest.fail("executorch is not installed: pip install -e '.[edge]'")
    from plantdx.export import export
    from plantdx.native import run_pte

    settings, trained = trained_tiny
    result = export(settings, tmp_path / "bundle", run_id=trained.run_id, native=True)
    bundle = load_bundle(result.bundle)  # the card lists model.pte, so the bundle verifies with it
    native = bundle.card["native"]
    assert NATIVE_FILE in bundle.card["files"] and native["parity_with_onnx"]["passed"] is True
    assert native["parity_with_onnx"]["top1_agreement"] >= 0.995
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    (onnx_logits,) = create_session(bundle.onnx_path).run(["logits"], {"image": x})
    assert np.abs(run_pte(bundle.path / NATIVE_FILE, x) - onnx_logits).max() < 1e-3
