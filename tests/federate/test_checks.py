"""The rules a farm's reply must pass before any aggregator sees it, and the aggregate made whole again."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest

from plantdx.federate.checks import VARIANCE_FLOOR, reply_problem, restore, update_norm


def model() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.normal(size=(8, 3, 3, 3)).astype(np.float32),
        "bn.running_var": np.ones(8, dtype=np.float32),
        "bn.num_batches_tracked": np.array(10, dtype=np.int64),
        "fc.weight": rng.normal(size=(5, 8)).astype(np.float32),
    }


def trained(sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        k: (v + 0.05 * rng.normal(size=v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v + 3
        for k, v in sent.items()
    }


def test_an_honest_reply_passes() -> None:
    sent = model()
    assert reply_problem(sent, trained(sent), 120, expected_examples=120) is None
    assert reply_problem(sent, trained(sent), 120.0) is None  # Flower's metric records carry floats


@pytest.mark.parametrize(
    ("spoil", "examples", "expected"),
    [
        (
            lambda a: a | {"fc.weight": np.where(np.arange(40).reshape(5, 8) == 3, np.nan, a["fc.weight"])},
            120,
            "NaN or infinite",
        ),
        (lambda a: a | {"conv.weight": np.full_like(a["conv.weight"], np.inf)}, 120, "NaN or infinite"),
        (lambda a: {k: v * 1000 if v.dtype.kind == "f" else v for k, v in a.items()}, 120, "norm is 99[0-9]x"),
        (lambda a: {k: v * 0 if v.dtype.kind == "f" else v for k, v in a.items()}, 120, "norm is 0x"),
        (lambda a: a | {"fc.weight": a["fc.weight"][:-1]}, 120, "shape \\(4, 8\\)"),
        (lambda a: {k: v for k, v in a.items() if k != "fc.weight"}, 120, "missing \\['fc.weight'\\]"),
        (lambda a: a | {"extra": np.zeros(2, np.float32)}, 120, "unexpected \\['extra'\\]"),
        (lambda a: a | {"bn.num_batches_tracked": np.array(3.5)}, 120, "is float64"),
        (lambda a: a, 1200, "claims 1200 training examples; its partition holds 120"),
        (lambda a: a, -4, "not a positive whole number"),
        (lambda a: a, 12.5, "not a positive whole number"),
        (lambda a: a, float("nan"), "not a positive whole number"),
        (lambda a: a, "120", "not a number"),
    ],
    ids=[
        "nan",
        "inf",
        "scaled",
        "zeroed",
        "shape",
        "missing",
        "extra",
        "dtype",
        "false-count",
        "negative",
        "fraction",
        "nan-count",
        "text",
    ],
)
def test_a_bad_reply_is_rejected_and_says_why(
    spoil: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], examples: object, expected: str
) -> None:
    sent = model()
    problem = reply_problem(sent, spoil(trained(sent)), examples, expected_examples=120)
    assert problem is not None and re.search(expected, problem), problem


def test_the_aggregate_gets_integer_counters_and_a_non_negative_variance_back() -> None:
    sent = model()
    averaged = {k: v.astype(np.float64) + 0.4 for k, v in sent.items()}  # what weighted averaging returns
    averaged["bn.running_var"] = np.array([-0.3, *np.ones(7)], dtype=np.float64)  # DP noise pushed one below zero
    fixed = restore(averaged, sent)
    assert fixed["bn.num_batches_tracked"].dtype == np.int64 and int(fixed["bn.num_batches_tracked"]) == 10
    assert fixed["conv.weight"].dtype == np.float32
    assert fixed["bn.running_var"].min() == pytest.approx(VARIANCE_FLOOR)


def test_the_update_norm_counts_weights_not_counters() -> None:
    sent = model()
    got = {k: v + 1 if v.dtype.kind == "f" else v + 100 for k, v in sent.items()}
    floats = sum(v.size for v in sent.values() if v.dtype.kind == "f")
    assert update_norm(sent, got) == pytest.approx(floats**0.5)
