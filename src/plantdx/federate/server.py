"""The Flower ServerApp: the chosen strategy behind a guard that rejects bad replies, scored centrally every round.

Runs inside the Flower environment, started by the SuperLink for each ``flwr run``. It reads the run's plan (written
by ``plantdx federate``: the recipe, the central manifest, the farms' expected example counts), waits for the farms,
runs the rounds, and leaves beside the plan what the main process needs: ``rounds.jsonl`` (one line per round, read
live into MLflow), ``global.pt`` (the final global model) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
)
from flwr.serverapp.strategy import Strategy as FlowerStrategy

from plantdx.config import DatasetConfig, FederateConfig, TrainConfig
from plantdx.data.split import read_manifest
from plantdx.federate.checks import REPLY_METRICS, reply_problem, restore, update_norm
from plantdx.federate.training import CentralScorer, create_module, state_arrays

log = logging.getLogger("plantdx.federate")
ROUNDS_FILE = "rounds.jsonl"
SUMMARY_FILE = "summary.json"
GLOBAL_FILE = "global.pt"


def create_strategy(cfg: FederateConfig) -> FlowerStrategy:
    """Flower's own strategy for ``federate.strategy``; central evaluation only (the farms keep no test photos).

    Sampling takes every connected farm; ``min_replies`` is also the fewest farms a round waits to be connected, so
    a farm that died does not stall the next round.
    """
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": cfg.min_replies,
        "min_evaluate_nodes": 0,
        "min_available_nodes": cfg.min_replies,
    }
    if cfg.strategy == "fedprox":
        return FedProx(**common, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedmedian":
        return FedMedian(**common)
    if cfg.strategy == "fedtrimmedavg":
        return FedTrimmedAvg(**common, beta=cfg.trim_beta)
    return FedAvg(**common)


def round_lr(train: TrainConfig, server_round: int, rounds: int) -> float:
    """The learning rate of a round: cosine from ``train.lr`` down to 1 % over the rounds (``scheduler: none``: the
    same every round). Within a round it is constant: a farm's schedule restarts with every fresh process."""
    if train.scheduler == "none" or rounds <= 1:
        return train.lr
    progress = (server_round - 1) / rounds
    return train.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


class Journal:
    """``rounds.jsonl``: appended and flushed line by line, so the main process can log each round as it ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text("")

    def write(self, entry: Mapping[str, Any]) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")


class Guard(FlowerStrategy):  # type: ignore[misc]  # (flwr is not in the environment mypy runs in)
    """A validating filter in front of any Flower strategy (and its DP wrapper): each reply is checked against the
    model that was sent (``checks.reply_problem``) and only good ones reach the aggregator; the aggregate gets the
    model's dtypes back (``checks.restore``). Each round's accepted, rejected and failed replies, bytes and timings
    go to the journal with the central validation score."""

    def __init__(
        self,
        inner: FlowerStrategy,
        cfg: FederateConfig,
        expected: Mapping[str, int],
        lr: Callable[[int], float],
        journal: Journal,
    ) -> None:
        self.inner, self.cfg, self.expected, self.lr, self.journal = inner, cfg, dict(expected), lr, journal
        self.sent: dict[str, np.ndarray] = {}
        self.asked: set[int] = set()
        self.entry: dict[str, Any] = {}

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.sent = {k: v.numpy() for k, v in arrays.items()}
        config["lr"] = self.lr(server_round)
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        self.asked = {int(m.metadata.dst_node_id) for m in messages}
        self.entry = {
            "round": server_round,
            "started": time.time(),
            "lr": config["lr"],
            "nodes": len(messages),
            "bytes_sent": sum(r.count_bytes() for m in messages for r in m.content.array_records.values()),
            "bytes_received": 0,
            "accepted": [],
            "rejected": [],
            "failed": [],
        }
        return messages

    def _check(self, msg: Message) -> tuple[str, str | None, dict[str, float]]:
        content = msg.content
        self.entry["bytes_received"] += sum(r.count_bytes() for r in content.array_records.values())
        farm = content.config_records.get("farm")
        name = str(farm.get("name", "?")) if farm is not None else "?"
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return name, "it does not hold exactly one set of arrays and one of metrics", {}
        arrays = next(iter(content.array_records.values()))
        metrics = next(iter(content.metric_records.values()))
        if set(metrics) != REPLY_METRICS:
            return name, f"its metrics are {sorted(metrics)}, not {sorted(REPLY_METRICS)}", {}
        try:
            got = {k: v.numpy() for k, v in arrays.items()}
        except Exception as exc:  # an array that does not deserialise is a bad reply, not a server crash
            return name, f"its arrays cannot be read ({type(exc).__name__})", {}
        problem = reply_problem(
            self.sent,
            got,
            metrics.get("num-examples"),
            expected_examples=self.expected.get(name),
            max_weight_ratio=self.cfg.max_weight_ratio,
        )
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        if problem is None:
            numbers["update-norm"] = update_norm(self.sent, got)
        return name, problem, numbers

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted: list[Message] = []
        replies = list(replies)
        silent = self.asked - {int(msg.metadata.src_node_id) for msg in replies}
        for node in sorted(silent):  # crashed or hung: the round goes on with the others
            reason = f"no reply within round_timeout_s ({self.cfg.round_timeout_s:g} s)"
            log.warning(f"round {server_round}: node {node} failed: {reason}")
            self.entry["failed"].append({"node": node, "reason": reason})
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            if msg.has_error():
                reason = msg.error.reason
                log.warning(f"round {server_round}: node {node} failed: {reason}")
                self.entry["failed"].append({"node": node, "reason": reason})
                continue
            farm, problem, numbers = self._check(msg)
            if problem is not None:
                log.warning(f"round {server_round}: rejected the reply of node {node} ({farm}): {problem}")
                self.entry["rejected"].append({"node": node, "farm": farm, "reason": problem})
                continue
            accepted.append(msg)
            self.entry["accepted"].append({"node": node, "farm": farm, **numbers})
        self.entry["valid"] = len(accepted) >= self.cfg.min_replies
        if not self.entry["valid"]:
            log.warning(
                f"round {server_round}: {len(accepted)} valid replies, fewer than min_replies "
                f"{self.cfg.min_replies}: the global model stays as it was"
            )
            return None, None
        aggregate, metrics = self.inner.aggregate_train(server_round, accepted)
        if aggregate is None:
            self.entry["valid"] = False
            return None, metrics
        fixed = restore({k: v.numpy() for k, v in aggregate.items()}, self.sent)
        return ArrayRecord({k: Array(v) for k, v in fixed.items()}), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def scored(self, server_round: int, scores: Mapping[str, float], eval_s: float) -> None:
        """Close the round's journal entry with the central validation scores."""
        entry = self.entry if server_round > 0 else {"round": 0, "valid": True, "started": time.time()}
        entry |= {"val_acc": scores["acc"], "val_f1_macro": scores["f1_macro"], "eval_s": round(eval_s, 3)}
        entry["wall_s"] = round(time.time() - entry.pop("started"), 3)
        self.journal.write(entry)
        self.entry = {}


def _wait_for_farms(grid: Grid, wanted: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(list(grid.get_node_ids())) < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"only {len(list(grid.get_node_ids()))} of {wanted} farms connected in {timeout_s:.0f} s"
            )
        time.sleep(0.2)


def run(grid: Grid, plan: Mapping[str, Any]) -> None:
    """The whole federated run on ``grid``, as the plan says."""
    out = Path(plan["run_dir"])
    cfg = FederateConfig.model_validate(plan["federate"])
    train = TrainConfig.model_validate(plan["train"])
    recipe = plan["recipe"]
    torch.set_num_threads(int(plan.get("server_threads", 1)))
    torch.manual_seed(train.seed)
    dataset = DatasetConfig.model_validate(plan["dataset"])
    manifest = read_manifest(Path(plan["manifest"]))
    scorer = CentralScorer(recipe, dataset, manifest.split("val"))
    initial = create_module(recipe, pretrained=bool(recipe["model"]["pretrained"]))
    state = state_arrays(initial.model)
    if cfg.dp_noise_multiplier is not None:  # integer counters would dominate a clipped update: they stay home
        state = {k: v for k, v in state.items() if np.issubdtype(v.dtype, np.floating)}
    strategy = create_strategy(cfg)
    if cfg.dp_noise_multiplier is not None:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, cfg.clients
        )
    guard = Guard(strategy, cfg, plan["farms"], lambda r: round_lr(train, r, cfg.rounds), Journal(out / ROUNDS_FILE))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        started = time.perf_counter()
        scores = scorer.score({k: v.numpy() for k, v in arrays.items()})
        guard.scored(server_round, scores, time.perf_counter() - started)
        return MetricRecord(scores)

    _wait_for_farms(grid, cfg.clients, float(plan.get("connect_timeout_s", 120)))
    started = time.perf_counter()
    result = guard.start(
        grid,
        ArrayRecord({k: Array(v) for k, v in state.items()}),
        num_rounds=cfg.rounds,
        timeout=cfg.round_timeout_s,
        train_config=ConfigRecord(
            {
                "recipe": json.dumps(recipe),
                "local-epochs": cfg.local_epochs,
                "batchnorm": cfg.batchnorm,
            }
        ),
        evaluate_fn=evaluate,
    )
    final = result.arrays if result.arrays is not None and len(result.arrays) else None
    arrays = {k: v.numpy() for k, v in final.items()} if final is not None else state
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, out / GLOBAL_FILE)
    (out / SUMMARY_FILE).write_text(json.dumps({"rounds": cfg.rounds, "strategy_s": time.perf_counter() - started}))


app = ServerApp()


@app.main()  # type: ignore[untyped-decorator]
def main(grid: Grid, context: Context) -> None:
    plan = json.loads(Path(str(context.run_config["plan"])).read_text())
    run(grid, plan)
