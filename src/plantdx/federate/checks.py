"""What a farm's reply must be before any aggregator sees it, and how an aggregate is made whole again.

Plain numpy, so the rules are tested without Flower and hold for every strategy: the server's guard (``server.py``)
calls ``reply_problem`` on each reply and aggregates only those with none, then ``restore`` on the aggregate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

# What a farm's reply reports beside its weights: Flower's FedAvg refuses to aggregate replies whose metric names
# differ, so a reply with other names is rejected here rather than stopping the round.
REPLY_METRICS = frozenset({"num-examples", "train-loss", "startup-s", "import-s", "load-s", "fit-s"})
VARIANCE_FLOOR = 1e-5  # BatchNorm's own eps: a running variance below it would only be noise (DP) or damage


def weight_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """L2 norm of every floating-point entry together (integer counters are not weights)."""
    total = 0.0
    for value in arrays.values():
        if np.issubdtype(value.dtype, np.floating):
            total += float(np.square(value, dtype=np.float64).sum())
    return math.sqrt(total)


def update_norm(sent: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> float:
    """L2 norm of a farm's update (what it sent back minus what it was sent), over the floating-point entries: what
    client-side DP clips, so ``federate.dp_clipping_norm`` can be chosen near the norms a run logs."""
    return weight_norm({k: got[k] - sent[k] for k in got if k in sent and np.issubdtype(got[k].dtype, np.floating)})


def reply_problem(
    sent: Mapping[str, np.ndarray],
    got: Mapping[str, np.ndarray],
    examples: object,
    *,
    expected_examples: int | None = None,
    max_weight_ratio: float = 10.0,
) -> str | None:
    """Why a reply must not be aggregated (one line for the log), or None when it may.

    ``sent`` is the global model the farm was given, ``got`` what it sent back, ``examples`` the count it claims to
    have trained on and ``expected_examples`` the count its partition holds, when the server made it. The norm
    bound catches a reply scaled up (a model-replacement attack) or zeroed, not a subtle one: that is what the
    robust strategies (FedMedian, FedTrimmedAvg) are for.
    """
    missing = sorted(set(sent) - set(got))
    extra = sorted(set(got) - set(sent))
    if missing or extra:
        return f"its arrays do not match the model's: missing {missing[:3]}, unexpected {extra[:3]}"
    for key, value in got.items():
        if value.shape != sent[key].shape:
            return f"{key} has shape {tuple(value.shape)}, the model's is {tuple(sent[key].shape)}"
        if value.dtype.kind != sent[key].dtype.kind:
            return f"{key} is {value.dtype}, the model's is {sent[key].dtype}"
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = int((~np.isfinite(value)).sum())
            return f"{key} holds {bad} NaN or infinite values"
    if isinstance(examples, bool) or not isinstance(examples, int | float):
        return f"its example count {examples!r} is not a number"
    if not math.isfinite(examples) or examples <= 0 or examples != int(examples):
        return f"its example count {examples!r} is not a positive whole number"
    if expected_examples is not None and int(examples) != expected_examples:
        return f"it claims {int(examples)} training examples; its partition holds {expected_examples}"
    before, after = weight_norm(sent), weight_norm(got)
    if before > 0 and not (1 / max_weight_ratio <= after / before <= max_weight_ratio):
        allowed = f"1/{max_weight_ratio:g}..{max_weight_ratio:g}x"
        return f"its weights' norm is {after / before:.3g}x the global model's (allowed {allowed})"
    return None


def restore(aggregate: Mapping[str, np.ndarray], sent: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The aggregate in the model's own dtypes: averaging turns an integer counter (BatchNorm's
    ``num_batches_tracked``) into a float; it goes back as the rounded mean, an integer again. A running variance
    pushed below zero (noise, with differential privacy) is floored: a negative variance is not a variance."""
    out = {}
    for key, value in aggregate.items():
        dtype = sent[key].dtype if key in sent else value.dtype
        if np.issubdtype(dtype, np.integer):
            value = np.rint(value).astype(dtype)
        else:
            value = np.asarray(value, dtype=dtype)
            if key.endswith("running_var"):
                value = np.maximum(value, VARIANCE_FLOOR).astype(dtype)
        out[key] = value
    return out
