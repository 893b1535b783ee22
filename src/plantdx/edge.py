"""The edge model: ``model.edge.onnx``, the bundle's graph with its pre- and post-processing inside, for the page's
offline diagnosis (onnxruntime-web) and for outside apps (ONNX Runtime Mobile).

The service turns a photo into an answer in numpy (``Predictor``); a browser would have to port every step and
keep the port in step. So the steps after the resize go into the graph: it takes the centre crop as uint8 pixels
(``[batch, crop, crop, 3]``, what a canvas gives) and returns the calibrated probabilities, the answer, the three
abstention scores (contrast, "not a leaf", out-of-distribution distance) and the reason code in ``_reason``'s order.
The page only decodes, resizes (a port of Pillow's filter, ``static/edge/preprocess.js``) and words the reason.

Weights may be stored smaller (fp16, or int8 per output channel) as ``Cast`` then ``Mul`` nodes that ONNX Runtime
folds back to fp32 when it loads the model: the wire is smaller, the arithmetic is not. Which one a bundle gets is
chosen by the wire budget and then checked against the service on the test split (``edge_parity``).

Needs ``onnx`` (the train extra) to build; running it needs only onnxruntime and numpy.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from plantdx.bundle import EDGE_FILE, Bundle, load_bundle, write_card
from plantdx.config import DataRoot, DatasetConfig
from plantdx.data.split import Manifest
from plantdx.digest import sha256_file
from plantdx.errors import PlantdxError
from plantdx.images import LUMA, load_rgb, model_view
from plantdx.inference import Predictor, contrast_floor, create_session

WEIGHTS = ("fp32", "fp16", "int8")
# Reason codes, in the order ``Predictor._reason`` checks them; the page words them as the service does.
REASONS = ("none", "uniform", "not_a_leaf", "out_of_distribution", "low_confidence")
OUTPUTS = ("probabilities", "label", "confidence", "not_leaf", "ood_score", "contrast", "reason", "thresholds")
BUDGET_BYTES = 6_000_000  # what a phone downloads (as served, gzip): the budget
MIN_TOP1 = 0.995  # parity with the service on the test split that a smaller edge model must keep
MIN_ABSTAIN = 0.99
_NEVER = 3.0e38  # a threshold that no score reaches (a check the bundle does not have)


class EdgeError(PlantdxError):
    """The edge model cannot be built, or does not answer as the service does."""


@dataclass(frozen=True)
class EdgeParity:
    """The edge model against the service (``Predictor`` on ``model.onnx``), photo by photo."""

    n: int
    top1_agreement: float
    abstain_agreement: float
    reason_agreement: float
    max_abs_dp: float
    accuracy: float | None  # of the edge answers, on leaf photos with a known class
    service_accuracy: float | None

    def passed(self, min_top1: float = MIN_TOP1, min_abstain: float = MIN_ABSTAIN) -> bool:
        return self.top1_agreement >= min_top1 and self.abstain_agreement >= min_abstain


@dataclass(frozen=True)
class EdgeResult:
    path: Path
    weights: str
    bytes: int
    gzip_bytes: int
    parity: EdgeParity | None
    tried: list[dict[str, Any]]


# -- the graph ----------------------------------------------------------------------------------------------------


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.array(value, order="C"), name)  # (ascontiguousarray makes a scalar 1-D)


def _stored(name: str, value: np.ndarray, weights: str, axis: int | None) -> tuple[list[TensorProto], list[Any]]:
    """An fp32 tensor as it travels: itself, or fp16 / per-channel int8 plus the nodes that rebuild ``name``.

    ``axis`` is the output-channel axis for int8 (None: this tensor stays fp16 at most)."""
    if weights == "fp32" or value.size < 1024:
        return [_const(name, value.astype(np.float32))], []
    if weights == "fp16" or axis is None:
        small = _const(f"{name}__fp16", value.astype(np.float16))
        return [small], [helper.make_node("Cast", [small.name], [name], to=TensorProto.FLOAT)]
    moved = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1)
    scale = np.abs(moved).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    shape = [1] * value.ndim
    shape[axis] = -1
    scale_b = scale.reshape(shape).astype(np.float32)
    q = np.clip(np.round(value / scale_b), -127, 127).astype(np.int8)
    tensors = [_const(f"{name}__int8", q), _const(f"{name}__scale", scale_b)]
    nodes = [
        helper.make_node("Cast", [f"{name}__int8"], [f"{name}__cast"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}__cast", f"{name}__scale"], [name]),
    ]
    return tensors, nodes


def _weight_axes(graph: onnx.GraphProto) -> dict[str, int]:
    """Initializers that are a Conv, Gemm or MatMul weight, and their output-channel axis."""
    axes: dict[str, int] = {}
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1:
            axes[node.input[1]] = 0
        elif node.op_type == "Gemm" and len(node.input) > 1:
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axes[node.input[1]] = 0 if trans_b else 1
        elif node.op_type == "MatMul" and len(node.input) > 1:
            axes[node.input[1]] = 1
    return axes


def _whitening(precision: np.ndarray) -> np.ndarray:
    """``L`` with ``L L^T = P``: the Cholesky factor (triangular), or from the eigenvectors when rounding in
    calibration.json left ``P`` not quite positive definite."""
    symmetric = (precision + precision.T) / 2
    try:
        return np.asarray(np.linalg.cholesky(symmetric))
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(symmetric)
        return np.asarray(vectors * np.sqrt(np.clip(values, 0, None)))


def _prune(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """Only the nodes the outputs need (the heat-map ``cam`` branch goes)."""
    needed = set(outputs)
    kept: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    return kept[::-1]


def build_edge_graph(bundle: Bundle, weights: str = "fp32") -> onnx.ModelProto:
    """``model.onnx`` wrapped with the bundle's preprocessing after the resize and its whole post-processing."""
    if weights not in WEIGHTS:
        raise EdgeError(f"edge weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    model = onnx.load(str(bundle.onnx_path))
    g = model.graph
    spec, labels, cal = bundle.preprocess, bundle.labels, bundle.calibration
    input_name, logits_name = str(spec["input_name"]), str(spec["output_name"])
    crop, classes = int(spec["crop"]), len(labels)
    outputs = {o.name for o in g.output}
    if logits_name not in outputs:
        raise EdgeError(f"model.onnx of {bundle.path} has no output {logits_name!r}")
    ood = cal.get("ood") if "embedding" in outputs else None
    reject = labels.index(cal["reject_label"]) if cal.get("reject_label") in labels else None
    floor = contrast_floor(bundle.reference)

    nodes: list[Any] = []
    inits: list[TensorProto] = []

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(_const(name, np.asarray(value, dtype=dtype)))
        return name

    # pixels [N, crop, crop, 3] uint8 -> the model's NCHW float input, as images.to_input computes it
    mean, std = np.asarray(spec["mean"], np.float32), np.asarray(spec["std"], np.float32)
    nodes += [
        helper.make_node("Cast", ["pixels"], ["e_px"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["e_px", const("e_255", 255.0)], ["e_x01"]),
        helper.make_node("Sub", ["e_x01", const("e_mean", mean)], ["e_centred"]),
        helper.make_node("Div", ["e_centred", const("e_std", std)], ["e_nhwc"]),
        helper.make_node("Transpose", ["e_nhwc"], [input_name], perm=[0, 3, 1, 2]),
    ]
    # contrast: the luma spread of the crop (inference.input_contrast)
    nodes += [
        helper.make_node("MatMul", ["e_x01", const("e_luma", LUMA.reshape(3, 1))], ["e_luma4"]),
        helper.make_node("ReduceMean", ["e_luma4", const("e_hw", [1, 2, 3], np.int64)], ["e_lmean"], keepdims=1),
        helper.make_node("Sub", ["e_luma4", "e_lmean"], ["e_ldev"]),
        helper.make_node("Mul", ["e_ldev", "e_ldev"], ["e_lsq"]),
        helper.make_node("ReduceMean", ["e_lsq", "e_hw"], ["e_lvar"], keepdims=0),
        helper.make_node("Sqrt", ["e_lvar"], ["contrast"]),
    ]
    # calibrated probabilities, and the answer: the most likely class other than "not a leaf"
    keep = np.ones(classes, np.float32)
    if reject is not None:
        keep[reject] = 0.0
    nodes += [
        helper.make_node("Div", [logits_name, const("e_t", bundle.temperature)], ["e_scaled"]),
        helper.make_node("Softmax", ["e_scaled"], ["probabilities"], axis=-1),
        helper.make_node("Mul", ["probabilities", const("e_keep", keep)], ["e_kept"]),
        helper.make_node("Add", ["e_kept", const("e_keep_off", keep - 1.0)], ["e_leaf"]),
        helper.make_node("ArgMax", ["e_leaf"], ["label"], axis=1, keepdims=0),
        helper.make_node("ReduceMax", ["e_leaf", const("e_c", [1], np.int64)], ["confidence"], keepdims=0),
    ]
    if reject is None or ood is None:
        const("e_zero", 0.0)  # the stand-in for a score the bundle does not have
    if reject is not None:
        nodes.append(
            helper.make_node("Gather", ["probabilities", const("e_r", reject, np.int64)], ["not_leaf"], axis=1)
        )
    else:
        nodes.append(helper.make_node("Mul", ["confidence", "e_zero"], ["not_leaf"]))
    # the class-conditional Mahalanobis distance (plantdx.ood) through the Cholesky factor of the precision matrix:
    # d_k = |emb L - (mean + m_k) L|^2, no cancellation in fp32, and L is triangular (half zeros: gzip halves it)
    # (with the detector's principal components P first, when it has them: z = (emb - mean) P^T, so the one matrix
    # is P^T L and the centres (mean P^T + m_k) L)
    if ood is not None:
        factor = _whitening(np.asarray(ood["precision"], np.float64))
        mean = np.asarray(ood["mean"], np.float64)
        class_means = np.asarray(ood["class_means"], np.float64)
        if ood.get("components") is not None:
            components = np.asarray(ood["components"], np.float64)
            centres = (mean @ components.T + class_means) @ factor
            factor = components.T @ factor
        else:
            centres = (mean + class_means) @ factor
        tensors, extra = _stored("e_ood_factor", factor, "fp32" if weights == "fp32" else "fp16", None)
        inits += tensors
        nodes += extra
        nodes += [
            helper.make_node("MatMul", ["embedding", "e_ood_factor"], ["e_y"]),
            helper.make_node("Unsqueeze", ["e_y", const("e_ax1", [1], np.int64)], ["e_y3"]),
            helper.make_node("Sub", ["e_y3", const("e_centres", centres)], ["e_dy"]),
            helper.make_node("Mul", ["e_dy", "e_dy"], ["e_dy2"]),
            helper.make_node("ReduceSum", ["e_dy2", const("e_ax2", [2], np.int64)], ["e_dk"], keepdims=0),
            helper.make_node("ReduceMin", ["e_dk", "e_c"], ["ood_score"], keepdims=0),
        ]
        ood_threshold = float(ood["threshold"])
    else:
        nodes.append(helper.make_node("Mul", ["confidence", "e_zero"], ["ood_score"]))
        ood_threshold = _NEVER
    # the reason, first match wins as in Predictor._reason: 1 uniform, 2 not a leaf, 3 out of distribution, 4 unsure
    thresholds = [
        -1.0 if floor is None else floor,
        _NEVER if reject is None else float(cal.get("reject_threshold", 0.5)),
        ood_threshold,
        bundle.abstain_threshold,
    ]
    const("e_thr", thresholds)
    checks = [("Less", "contrast", 0), ("GreaterOrEqual", "not_leaf", 1), ("Greater", "ood_score", 2),
              ("Less", "confidence", 3)]  # fmt: skip
    reason = const("e_none", 0, np.int64)
    for code in range(len(checks), 0, -1):  # innermost first, so the first check wins
        op, score, at = checks[code - 1]
        thr = const(f"e_thr{at}", thresholds[at])
        nodes += [
            helper.make_node(op, [score, thr], [f"e_hit{code}"]),
            helper.make_node("Where", [f"e_hit{code}", const(f"e_code{code}", code, np.int64), reason],
                             [f"e_reason{code}"]),
        ]  # fmt: skip
        reason = f"e_reason{code}"
    nodes += [
        helper.make_node("Identity", [reason], ["reason"]),
        helper.make_node("Identity", ["e_thr"], ["thresholds"]),
    ]

    # the model's own nodes, without the heat-map branch, weights stored as asked
    body = _prune(list(g.node), [logits_name, *(["embedding"] if ood is not None else [])])
    axes = _weight_axes(g)
    used = {i for n in body for i in n.input}
    body_inits: list[TensorProto] = []
    for init in g.initializer:
        if init.name not in used:
            continue
        value = numpy_helper.to_array(init)
        if value.dtype != np.float32:
            body_inits.append(init)
            continue
        tensors, extra = _stored(init.name, value, weights, axes.get(init.name))
        body_inits += tensors
        nodes += extra
    batch = "batch"
    graph = helper.make_graph(
        body + nodes,
        "plantdx_edge",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [batch, crop, crop, 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
            helper.make_tensor_value_info("confidence", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("not_leaf", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("ood_score", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("contrast", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("reason", TensorProto.INT64, [batch]),
            helper.make_tensor_value_info("thresholds", TensorProto.FLOAT, [4]),
        ],
        initializer=body_inits + inits,
        value_info=[v for v in g.value_info if v.name != input_name],
    )
    edge = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="plantdx")
    edge.ir_version = model.ir_version
    edge.functions.extend(model.functions)
    meta = {
        "labels": json.dumps(labels),
        "preprocess": json.dumps({k: spec[k] for k in ("resize", "crop", "interpolation", "mean", "std")}),
        "reasons": json.dumps(list(REASONS)),
        "weights": weights,
        "source_sha256": sha256_file(bundle.onnx_path),
    }
    helper.set_model_props(edge, meta)
    edge = _topological(edge)
    onnx.checker.check_model(edge, full_check=True)
    return edge


def _topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in an order where every input exists before it is used (the checker and ORT want it)."""
    g = model.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise EdgeError("the edge graph has a cycle or an input nothing produces")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    del g.node[:]
    g.node.extend(ordered)
    return model


# -- running it ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeAnswer:
    label: int
    confidence: float
    probabilities: np.ndarray
    reason: int
    ood_score: float
    contrast: float
    not_leaf: float


def run_edge(session: Any, pixels: np.ndarray) -> list[EdgeAnswer]:
    """The edge graph on HWC uint8 crops (what the page feeds it), one answer each."""
    out = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"pixels": np.ascontiguousarray(pixels)}), strict=True))
    return [
        EdgeAnswer(
            int(out["label"][i]),
            float(out["confidence"][i]),
            np.asarray(out["probabilities"][i]),
            int(out["reason"][i]),
            float(out["ood_score"][i]),
            float(out["contrast"][i]),
            float(out["not_leaf"][i]),
        )
        for i in range(len(pixels))
    ]


def reason_code(reason: str | None) -> int:
    """The edge graph's code for a ``Predictor`` reason text."""
    if reason is None:
        return 0
    for code, start in ((1, "the photo is almost uniform"), (2, "this does not look like a leaf ("),
                        (3, "this does not look like the leaves"), (4, "confidence ")):  # fmt: skip
        if reason.startswith(start):
            return code
    raise EdgeError(f"unknown abstain reason: {reason!r}")


def edge_parity(
    bundle: Bundle, edge_path: Path, crops: np.ndarray, truth: Sequence[int | None] | None = None, batch: int = 32
) -> EdgeParity:
    """The edge model and the service on the same centre crops (``images.model_view``), photo by photo."""
    from plantdx.images import to_input

    predictor = Predictor(bundle)
    session = create_session(edge_path)
    agree = abstain = reasons = 0
    max_dp = 0.0
    edge_right = service_right = known = 0
    for start in range(0, len(crops), batch):
        part = crops[start : start + batch]
        x = np.stack([to_input(c, bundle.preprocess) for c in part])
        served = predictor.answer(predictor.forward(x), x)
        for i, (s, e) in enumerate(zip(served, run_edge(session, part), strict=True)):
            service_label = predictor.labels.index(s.label)
            agree += service_label == e.label
            abstain += s.abstained == (e.reason != 0)
            reasons += reason_code(s.reason) == e.reason
            dp = np.abs(np.array([s.probabilities[k] for k in predictor.labels]) - e.probabilities).max()
            max_dp = max(max_dp, float(dp))
            t = truth[start + i] if truth is not None else None
            if t is not None:
                known += 1
                edge_right += e.label == t
                service_right += service_label == t
    n = len(crops)
    return EdgeParity(
        n,
        agree / n,
        abstain / n,
        reasons / n,
        max_dp,
        edge_right / known if known else None,
        service_right / known if known else None,
    )


def dataset_of(bundle: Bundle, fallback: DatasetConfig) -> DatasetConfig:
    """The data a bundle was split from, where its card's folders exist here (else ``fallback``'s), split as its
    recipe says: so its test photos are the ones its card was scored on."""
    data = bundle.card.get("data", {})
    recorded = data.get("roots") or ({"": {"path": data["root"], "domain": "lab"}} if data.get("root") else {})
    roots = [DataRoot(path=Path(r["path"]), domain=r.get("domain", "lab")) for r in recorded.values()]
    update: dict[str, Any] = {}
    if roots and all(r.path.is_dir() for r in roots):
        update["root"] = roots
    split_by = bundle.card.get("recipe", {}).get("split_by")
    if split_by:
        update["split_by"] = split_by
    return fallback.model_copy(update=update)


def split_crops(
    bundle: Bundle, dataset: DatasetConfig, manifest: Manifest | None = None, split: str = "test"
) -> tuple[np.ndarray, list[int | None]]:
    """The centre crops (what the edge model takes) of a split's photos, and their classes where the model knows
    them. Refuses a test split other than the one the bundle's card was scored on."""
    if manifest is None:
        from plantdx.data.split import manifest_for

        manifest = manifest_for(dataset)
    expected = bundle.card.get("data", {}).get("test_sha256")
    if split == "test" and expected and manifest.test_digest != expected:
        raise EdgeError(
            f"the test split of {', '.join(str(r.path) for r in dataset.root)} is not the one the bundle was scored "
            "on (its card's data.test_sha256): give the dataset settings it was trained with"
        )
    rows = manifest.split(split)  # type: ignore[arg-type]
    resize = int(bundle.preprocess["resize"])
    crops = np.stack([model_view(load_rgb(dataset.locate(r.root, r.path), resize), bundle.preprocess) for r in rows])
    truth = [bundle.labels.index(r.label) if r.label in bundle.labels else None for r in rows]
    return crops, truth


# -- into the bundle ----------------------------------------------------------------------------------------------


def gzip_size(path: Path) -> int:
    """Bytes over the wire as the service sends it (gzip, level 9, computed once per model)."""
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def write_edge_model(
    bundle_path: Path,
    *,
    weights: str = "auto",
    budget_bytes: int = BUDGET_BYTES,
    test_crops: Callable[[Bundle], tuple[np.ndarray, list[int | None]]] | None = None,
    extra: dict[str, Any] | None = None,
) -> EdgeResult:
    """Build ``model.edge.onnx`` into a bundle folder and record it in the card (hashes rewritten).

    ``auto`` takes the most exact weights (fp32, then fp16, then int8) whose gzip size fits ``budget_bytes`` and
    whose answers agree with the service on the test crops (``test_crops``); with no crops, the most exact that
    fits. When none both fits and agrees, the smallest that agrees is kept (a phone pays for every byte) and the
    card says it is over budget.
    """
    bundle = load_bundle(bundle_path)
    out = bundle_path / EDGE_FILE
    candidates = list(WEIGHTS) if weights == "auto" else [weights]
    crops, truth = test_crops(bundle) if test_crops is not None else (None, None)
    tried: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    try:

        def check(record: dict[str, Any]) -> bool | None:
            """Parity with the service, measured once per format and only when it can decide the choice."""
            if crops is not None and record["parity"] is None:
                parity = edge_parity(bundle, files[record["weights"]], crops, truth)
                record["parity"], record["agrees"] = asdict(parity), parity.passed()
            return record["agrees"]  # type: ignore[no-any-return]

        for kind in candidates:
            files[kind] = bundle_path / f".{EDGE_FILE}.{kind}"
            onnx.save(build_edge_graph(bundle, kind), str(files[kind]))
            gz = gzip_size(files[kind])
            record = {"weights": kind, "bytes": files[kind].stat().st_size, "gzip_bytes": gz,
                      "fits_budget": gz <= budget_bytes, "parity": None, "agrees": None}  # fmt: skip
            tried.append(record)
            if (record["fits_budget"] or len(candidates) == 1) and check(record) is not False:
                break
        # the first that fits and agrees; else (over budget, the card says so) the smallest that agrees
        chosen = next((r for r in tried if r["fits_budget"] and r["agrees"] is not False), None)
        if chosen is None:
            by_size = sorted(tried, key=lambda r: r["gzip_bytes"])
            chosen = next((r for r in by_size if not r["fits_budget"] and check(r) is not False), None)
        if chosen is None:
            raise EdgeError(f"no edge model agrees with the service on the test photos: {tried}")
        files[chosen["weights"]].replace(out)
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)
    card = {k: v for k, v in bundle.card.items() if k != "files"}
    card["edge"] = {
        "file": EDGE_FILE,
        "weights": chosen["weights"],
        "bytes": chosen["bytes"],
        "gzip_bytes": chosen["gzip_bytes"],
        "budget_bytes": budget_bytes,
        "within_budget": chosen["fits_budget"],
        "parity_with_service": chosen["parity"],
        "tried": tried,
        "inputs": {"pixels": "uint8 [batch, crop, crop, 3]: the centre crop after preprocess.json's resize"},
        "outputs": list(OUTPUTS),
        "reasons": list(REASONS),
        **(extra or {}),
    }
    write_card(bundle_path, card)
    load_bundle(bundle_path)  # the card must verify again
    parity_obj = EdgeParity(**chosen["parity"]) if chosen["parity"] else None
    return EdgeResult(out, chosen["weights"], chosen["bytes"], chosen["gzip_bytes"], parity_obj, tried)
