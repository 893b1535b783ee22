"""Release gate for a candidate bundle: accurate enough on the held-out test split, and fast enough on this machine.

    python benchmarks/gate.py BUNDLE RESULTS_JSON --min-accuracy 0.95 --max-p99-ms 20

BUNDLE is a `plantdx export` folder (its card holds the test scores); RESULTS_JSON is what `plantdx bench BUNDLE -o DIR`
wrote (DIR/model_runtimes.json). Exits 1 and says why when the candidate misses a threshold, so the model workflow
stops before `register` and `promote`. The registry's own gate (`plantdx promote`) then compares it with the champion.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def gate_reasons(
    card: dict[str, Any],
    bench: dict[str, Any],
    *,
    min_accuracy: float,
    max_p99_ms: float,
    runtime: str = "onnxruntime-fp32",
) -> list[str]:
    """Every threshold the candidate misses; empty when it passes."""
    reasons = []
    accuracy = card["metrics"]["test_accuracy"]
    if accuracy < min_accuracy:
        reasons.append(f"test accuracy {accuracy:.4f} is below {min_accuracy:.4f}")
    row = next((r for r in bench["results"] if r["runtime"] == runtime), None)
    if row is None or row["p99_ms"] is None:
        reasons.append(f"no {runtime} latency in the benchmark results")
    elif row["p99_ms"] > max_p99_ms:
        reasons.append(f"{runtime} p99 latency {row['p99_ms']:.2f} ms is above {max_p99_ms:.2f} ms")
    return reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="the candidate bundle folder")
    parser.add_argument("results", type=Path, help="model_runtimes.json from `plantdx bench`")
    parser.add_argument("--min-accuracy", type=float, required=True, help="lowest test accuracy allowed (0..1)")
    parser.add_argument("--max-p99-ms", type=float, required=True, help="highest single-image p99 latency allowed")
    parser.add_argument("--runtime", default="onnxruntime-fp32", help="the benchmark row the latency is read from")
    args = parser.parse_args(argv)

    card = json.loads((args.bundle / "card.json").read_text())
    bench = json.loads(args.results.read_text())
    if Path(bench["bundle"]).resolve() != args.bundle.resolve():
        print(f"gate: {args.results} measured {bench['bundle']}, not {args.bundle}", file=sys.stderr)
        return 2
    reasons = gate_reasons(
        card, bench, min_accuracy=args.min_accuracy, max_p99_ms=args.max_p99_ms, runtime=args.runtime
    )
    for reason in reasons:
        print(f"gate: REFUSED: {reason}", file=sys.stderr)
    if reasons:
        return 1
    print(f"gate: passed (accuracy >= {args.min_accuracy}, {args.runtime} p99 <= {args.max_p99_ms} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
