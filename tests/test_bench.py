"""``plantdx bench``: every runtime of a bundle measured on the same inputs, and the results written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plantdx.bench import RUNTIMES, bench_bundle
from plantdx.cli import app
from plantdx.export import ExportResult
from plantdx.inference import default_bundle_path

pytestmark = pytest.mark.slow


def test_bench_measures_every_runtime_of_a_bundle(exported: ExportResult, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["bench", str(exported.bundle), "--runs", "10", "--batch", "4", "--threads", "1", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    rows = {r["runtime"]: r for r in json.loads((tmp_path / "model_runtimes.json").read_text())["results"]}
    assert set(rows) == {"pytorch-eager", "torchscript", "onnxruntime-fp32", "onnxruntime-int8"}
    assert rows["onnxruntime-fp32"]["p50_ms"] > 0 and rows["torchscript"]["throughput_ips"] > 0
    assert rows["pytorch-eager"]["p50_ms"] is None and "checkpoint" in rows["pytorch-eager"]["note"]


def test_bench_reports_each_runtime_for_the_progress_bar(exported: ExportResult) -> None:
    heard: list[str] = []
    rows = bench_bundle(exported.bundle, threads=1, runs=10, batch=2, on_runtime=heard.append)
    assert heard == [r.runtime for r in rows] == list(RUNTIMES)


def test_bench_rows_follow_the_bundles_card() -> None:
    """An INT8 graph the export dropped has a row that gives the card's reason, not a number; the FP32 one is timed."""
    bundle = default_bundle_path()
    card = json.loads((bundle / "card.json").read_text())
    rows = {r.runtime: r for r in bench_bundle(bundle, threads=1, runs=10, batch=2)}
    int8, fp32 = rows["onnxruntime-int8"], rows["onnxruntime-fp32"]
    if card["int8"]["kept"]:
        assert int8.p50_ms is not None and int8.p50_ms > 0
    else:
        assert int8.p50_ms is None and int8.throughput_ips is None and card["int8"]["reason"] in int8.note
    assert fp32.p50_ms is not None and fp32.p99_ms is not None and 0 < fp32.p50_ms <= fp32.p99_ms
    assert fp32.throughput_ips is not None and fp32.throughput_ips > 0
