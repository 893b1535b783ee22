"""The Flower ClientApp: a farm's round of training on its own photos.

Runs inside the Flower environment; the SuperNode starts a fresh process for every message, so each round pays the
interpreter, Flower, torch and Lightning start-up again. The reply carries that cost (``startup-s``: the process's
age when training begins; ``import-s``: this module's own imports) so the server can report it per round.

``private_app`` is the same app behind Flower's ``fixedclipping_mod`` (client-side differential privacy): it clips
the farm's update to the norm the server's ``DifferentialPrivacyClientSideFixedClipping`` asks for.

A farm's node configuration may name a fault drill (``drill``): the ways a farm goes wrong, for the tests and for a
person checking that the server copes (a crash takes the whole SuperNode down, by its process group).
"""

from __future__ import annotations

import time

_IMPORTS_STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import zlib  # noqa: E402

import numpy as np  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.clientapp.mod import fixedclipping_mod  # noqa: E402

from plantdx.federate.checks import REPLY_METRICS  # noqa: E402
from plantdx.federate.training import FarmConfig, process_age_s, train_locally  # noqa: E402

IMPORT_S = time.perf_counter() - _IMPORTS_STARTED
LOCAL_BN = "local-batchnorm"  # the farm's own BatchNorm entries in its node-local state (FedBN)
DRILLS = ("crash", "hang", "nan", "inf", "scale", "shape", "count")

app = ClientApp()
private_app = ClientApp(mods=[fixedclipping_mod])


def parse_drill(text: str) -> tuple[str, int]:
    """``crash@2`` -> ("crash", 2); a drill without a round acts from round 1."""
    kind, _, at = text.partition("@")
    if kind not in DRILLS:
        raise ValueError(f"unknown drill {text!r}: one of {', '.join(DRILLS)} (crash and hang take @ROUND)")
    return kind, int(at) if at else 1


def spoil(arrays: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """What a broken or malicious farm sends instead of its weights."""
    first = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and v.ndim >= 1)
    out = dict(arrays)
    if kind in ("nan", "inf"):
        bad = out[first].copy()
        bad.flat[0] = np.nan if kind == "nan" else np.inf
        out[first] = bad
    elif kind == "scale":
        out = {k: v * 1000 if np.issubdtype(v.dtype, np.floating) else v for k, v in out.items()}
    elif kind == "shape":
        out[first] = out[first][:-1]
    return out


def train(msg: Message, context: Context) -> Message:
    startup_s = process_age_s()
    farm = FarmConfig.from_node_config(context.node_config)
    config = msg.content["config"]
    server_round = int(config["server-round"])
    kind, at = parse_drill(farm.drill) if farm.drill else ("", 0)
    if kind == "crash" and server_round >= at:
        os.killpg(os.getpgid(0), signal.SIGKILL)  # the SuperNode and this process: the farm is gone mid-round
    if kind == "hang" and server_round >= at:
        time.sleep(24 * 3600)
    global_arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    local = config["batchnorm"] == "local"
    keep = None
    if local and LOCAL_BN in context.state:
        keep = {k: v.numpy() for k, v in context.state[LOCAL_BN].items()}
    recipe = json.loads(str(config["recipe"]))
    result = train_locally(
        recipe,
        farm,
        global_arrays,
        epochs=int(config["local-epochs"]),
        lr=float(config["lr"]),
        mu=float(config.get("proximal-mu", 0.0)),
        seed=int(recipe["train"]["seed"]) + 1000 * server_round + zlib.crc32(farm.name.encode()) % 1000,
        keep=keep,
    )
    if local:
        context.state[LOCAL_BN] = ArrayRecord({k: Array(result.arrays[k]) for k in result.batchnorm})
    arrays = spoil(result.arrays, kind) if kind in DRILLS[2:6] else result.arrays
    examples = result.examples * 10 if kind == "count" else result.examples
    metrics = MetricRecord(
        {
            "num-examples": examples,
            "train-loss": result.loss,
            "startup-s": startup_s,
            "import-s": IMPORT_S,
            "load-s": result.load_s,
            "fit-s": result.fit_s,
        }
    )
    assert set(metrics) == REPLY_METRICS  # what the server's guard accepts
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": metrics,
            "farm": ConfigRecord({"name": farm.name}),
        }
    )
    return Message(content=content, reply_to=msg)


app.train()(train)
private_app.train()(train)
