"""A farm's round of training and the server's scoring, with the project's own model and Lightning module.

Torch and Lightning, no Flower: ``client.py`` and ``server.py`` wrap these in Flower's apps. The recipe (model,
preprocessing, optimiser settings, class list) travels from the server in every training message, so a farm needs
nothing but its photos and the address of the SuperLink; the farm's own settings (where its photos are) come from
its node configuration (``FarmConfig``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from plantdx.config import DataRoot, DatasetConfig, ModelConfig, Settings
from plantdx.data.datamodule import ImageCache, LeafDataset, class_weights
from plantdx.data.split import ManifestRow, read_manifest
from plantdx.data.transforms import create_eval_transform, create_train_transform
from plantdx.errors import PlantdxError
from plantdx.model import PlantClassifier
from plantdx.scores import compute_report

# Settings a farm takes from the server's recipe; where its photos are is its own business.
_FARM_LOCAL = ("root", "manifest", "metadata")


class FarmError(PlantdxError):
    """A farm cannot train as configured (no manifest, a photo missing)."""


@dataclass(frozen=True)
class FarmConfig:
    """What a SuperNode's ``--node-config`` file says about its farm."""

    name: str
    manifest: Path
    roots: tuple[DataRoot, ...]
    cache_dir: Path | None = None
    drill: str = ""

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> FarmConfig:
        try:
            roots = tuple(DataRoot.model_validate(r) for r in json.loads(str(node_config["roots"])))
            cache = str(node_config.get("cache-dir", ""))
            return cls(
                name=str(node_config["name"]),
                manifest=Path(str(node_config["manifest"])),
                roots=roots,
                cache_dir=Path(cache) if cache else None,
                drill=str(node_config.get("drill", "")),
            )
        except (KeyError, ValueError) as exc:
            raise FarmError(f"the node configuration does not describe a farm ({type(exc).__name__}: {exc})") from None


def recipe(settings: Settings, classes: Sequence[str], threads: int | None) -> dict[str, Any]:
    """What every farm must train the same way: sent as JSON with each round's training message (``threads``:
    torch threads per farm, so farms sharing a machine do not fight over its cores; none: the farm's own)."""
    dataset = settings.dataset.model_dump(mode="json", exclude=set(_FARM_LOCAL))
    return {
        "classes": list(classes),
        "dataset": dataset,
        "model": settings.model.model_dump(mode="json"),
        "train": {k: getattr(settings.train, k) for k in ("lr", "weight_decay", "label_smoothing", "seed")},
        "threads": threads,
    }


def farm_dataset(recipe_: Mapping[str, Any], roots: Sequence[DataRoot]) -> DatasetConfig:
    return DatasetConfig.model_validate({**recipe_["dataset"], "root": [r.model_dump() for r in roots]})


class ProximalClassifier(PlantClassifier):
    """``PlantClassifier`` with FedProx's pull towards the round's global weights: loss + mu/2 * ||w - w_global||^2.

    With ``mu = 0`` it is the plain module (FedAvg, FedMedian, FedTrimmedAvg)."""

    mu: float = 0.0
    anchor: list[torch.Tensor]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        if self.mu > 0:
            pull = sum(((p - a) ** 2).sum() for p, a in zip(self.model.parameters(), self.anchor, strict=True))
            loss = loss + self.mu / 2 * pull
        return loss


def create_module(
    recipe_: Mapping[str, Any],
    *,
    weights: Sequence[float] | None = None,
    lr: float | None = None,
    pretrained: bool = False,
) -> ProximalClassifier:
    """The project's Lightning module for the recipe. Only the server starts from pretrained weights (its first
    global model); a farm gets them with the global model and never fetches any."""
    model = ModelConfig.model_validate(recipe_["model"])
    train = recipe_["train"]
    return ProximalClassifier(
        model_name=model.name,
        class_names=recipe_["classes"],
        image_size=int(recipe_["dataset"]["image_size"]),
        pretrained=pretrained,
        pretrained_path=str(model.pretrained_path) if pretrained and model.pretrained_path else None,
        dropout=model.dropout,
        width=model.width,
        lr=float(lr if lr is not None else train["lr"]),
        weight_decay=float(train["weight_decay"]),
        label_smoothing=float(train["label_smoothing"]),
        scheduler="none",  # the server decays the rate from round to round; within a round it is constant
        class_weights=weights,
    )


def state_arrays(module: torch.nn.Module, keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The network's state dict as numpy (C order: channels_last tensors would otherwise keep their strides)."""
    state = module.state_dict()
    names = list(state) if keys is None else list(keys)
    return {k: np.ascontiguousarray(state[k].detach().cpu().contiguous().numpy()) for k in names}


def load_arrays(module: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into the network; entries it does not carry (integer counters, under DP) keep their values."""
    state = module.state_dict()
    unknown = sorted(set(arrays) - set(state))
    if unknown:
        raise FarmError(f"the global model has entries this network lacks: {unknown[:3]}")
    module.load_state_dict({**state, **{k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}})


def batchnorm_keys(module: torch.nn.Module) -> list[str]:
    """Every state entry of a BatchNorm layer: affine weights, running statistics and the batch counter."""
    keys = []
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            keys += [f"{name}.{k}" for k in layer.state_dict()]
    return keys


def _cached(cache: ImageCache, rows: Sequence[ManifestRow], file: Path | None) -> None:
    """Decode the farm's photos once per run, not once per round: each round is a fresh ClientApp process."""
    if file is not None and file.is_file():
        stack = np.load(file)
        if len(stack) == len(rows):
            for row, image in zip(rows, stack, strict=True):
                cache.put(row, image)
            return
    cache.fill(rows)
    if file is not None and rows:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(f".{os.getpid()}.npy")
        np.save(partial, np.stack([cache.get(r) for r in rows]))
        partial.replace(file)


@dataclass
class LocalResult:
    arrays: dict[str, np.ndarray]
    examples: int
    loss: float
    load_s: float
    fit_s: float
    batchnorm: list[str]


def train_locally(
    recipe_: Mapping[str, Any],
    farm: FarmConfig,
    global_arrays: Mapping[str, np.ndarray],
    *,
    epochs: int,
    lr: float,
    mu: float,
    seed: int,
    keep: Mapping[str, np.ndarray] | None = None,
) -> LocalResult:
    """One round at a farm: the global weights (with ``keep``'s entries, a farm's own BatchNorm, on top), ``epochs``
    epochs of the project's Lightning module over the farm's training photos, and the weights it ends with."""
    started = time.perf_counter()
    if recipe_.get("threads"):
        torch.set_num_threads(int(recipe_["threads"]))
    L.seed_everything(seed, workers=True, verbose=False)
    if not farm.manifest.is_file():
        raise FarmError(f"farm {farm.name}: its manifest {farm.manifest} does not exist")
    rows = read_manifest(farm.manifest).split("train")
    cfg = farm_dataset(recipe_, farm.roots)
    classes = list(recipe_["classes"])
    strangers = sorted({r.label for r in rows} - set(classes))
    if strangers:
        raise FarmError(f"farm {farm.name} has classes the federation does not know: {strangers[:3]}")
    cache = ImageCache(cfg, cfg.resize_to, cfg.interpolation, crop=cfg.image_size)
    stamp = f"{len(rows)}-{cfg.resize_to}-{cfg.image_size}-{cfg.interpolation}"
    _cached(cache, rows, farm.cache_dir / f"{farm.name}-{stamp}.npy" if farm.cache_dir else None)
    dataset = LeafDataset(rows, classes, create_train_transform(cfg), cache)
    weights = class_weights(dataset.targets, len(classes)).tolist() if cfg.balance == "class_weights" else None
    module = create_module(recipe_, weights=weights, lr=lr)
    load_arrays(module.model, {**global_arrays, **(keep or {})})
    module.mu = mu
    module.anchor = [p.detach().clone() for p in module.model.parameters()]
    loader = DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=0, drop_last=len(rows) > cfg.batch_size
    )
    load_s = time.perf_counter() - started
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(module, train_dataloaders=loader)
    loss = trainer.callback_metrics.get("train/loss_epoch")
    return LocalResult(
        arrays=state_arrays(module.model, list(global_arrays)),
        examples=len(rows),
        loss=float(loss) if loss is not None else float("nan"),
        load_s=load_s,
        fit_s=time.perf_counter() - started - load_s,
        batchnorm=[k for k in batchnorm_keys(module.model) if k in global_arrays],
    )


class CentralScorer:
    """The server's view: the global model scored on the central validation (or test) split every round."""

    def __init__(self, recipe_: Mapping[str, Any], cfg: DatasetConfig, rows: Sequence[ManifestRow]) -> None:
        self.recipe = recipe_
        self.rows = list(rows)
        self.classes = list(recipe_["classes"])
        cache = ImageCache(cfg, cfg.resize_to, cfg.interpolation, crop=cfg.image_size)
        self.loader = DataLoader(
            LeafDataset(self.rows, self.classes, create_eval_transform(cfg), cache), batch_size=64, shuffle=False
        )
        self.module = create_module(recipe_)

    def score(self, arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
        load_arrays(self.module.model, arrays)
        self.module.eval()
        logits, labels = [], []
        with torch.inference_mode():
            for x, y in self.loader:
                logits.append(self.module(x).float().numpy())
                labels.append(y.numpy())
        report = compute_report(np.concatenate(logits), np.concatenate(labels), self.classes)
        return {"acc": report.accuracy, "f1_macro": report.f1_macro}


def process_age_s() -> float:
    """Seconds since this process started (Linux ``/proc``); -1 where that cannot be read. In a ClientApp it is the
    start-up a round pays before it trains: interpreter, Flower, torch and Lightning imports, fetching the app."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1.0
