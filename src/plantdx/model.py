"""Models: one factory over torchvision, timm and plantdx's own small CNN; the LightningModule that trains them."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from plantdx.errors import ModelError
from plantdx.weights import PACKAGED, load_packaged

log = logging.getLogger(__name__)

PLANT_CNN = "plant_cnn"
TORCHVISION_MODELS = frozenset(torchvision.models.list_models(module=torchvision.models))
_HEAD_ATTRS = ("fc", "heads", "classifier", "head")


class SqueezeExcitation(nn.Module):
    """Channel attention: reweights feature maps by a learned summary of the whole image."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate: torch.Tensor = self.gate(x)
        return x * gate


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class PlantCNN(nn.Module):
    """The design document's CNN: conv blocks 64/128/256 (BN, ReLU, max-pool) with squeeze-excitation.

    A stride-2 stem and a max-pool first: at full resolution the 64-channel block cost ~9 img/s of training on
    two cores; downsampling by 4 before it makes the network trainable on a CPU.
    """

    def __init__(self, num_classes: int, width: float = 1.0, dropout: float = 0.3) -> None:
        super().__init__()
        w = [max(8, round(c * width)) for c in (32, 64, 128, 256)]
        layers: list[nn.Module] = [*_conv_bn_relu(3, w[0], stride=2), nn.MaxPool2d(2)]
        for cin, cout in zip(w[:-1], w[1:], strict=True):
            layers += [
                *_conv_bn_relu(cin, cout),
                *_conv_bn_relu(cout, cout),
                SqueezeExcitation(cout),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(w[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.pool(self.features(x)))
        return logits


def _read_local_weights(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state dict in a weights file or checkpoint, and whether it is a plantdx checkpoint (head replaced)."""
    if not path.is_file():
        raise ModelError(f"pretrained_path {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"pretrained_path {path} holds no state dict")
    if state and all(k.startswith("model.") or k.startswith("criterion.") for k in state):
        # A plantdx Lightning checkpoint: the network's weights sit under "model."
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}, True
    return state, False


def _load_local_weights(model: nn.Module, path: Path, name: str, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load the file into ``model``. A classifier head of another shape (trained for other classes) keeps the
    model's own initialisation, with a log line; any other tensor of another shape, or missing, is refused."""
    if state is None:
        state, _ = _read_local_weights(path)
    own = model.state_dict()
    resized = sorted(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    body = [k for k in resized if k.split(".")[0] not in _HEAD_ATTRS]
    if body:
        shapes = ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in body[:3])
        raise ModelError(f"{path} does not fit {name}: {len(body)} tensors of another shape, e.g. {shapes}")
    if resized:
        log.info(f"{path}: a head of another shape ({resized}) keeps {name}'s own initialisation")
    result = model.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=False)
    missing = [k for k in result.missing_keys if k not in resized]
    if missing:
        raise ModelError(f"{path} does not fit {name}: {len(missing)} missing keys, e.g. {missing[:3]}")


def _replace_head(net: nn.Module, name: str, num_classes: int, dropout: float) -> None:
    model: Any = net  # torchvision heads are plain attributes that differ per family
    if name.startswith("vit_"):
        head = model.heads.head
        model.heads.head = nn.Linear(head.in_features, num_classes)
    elif isinstance(getattr(model, "fc", None), nn.Linear):  # ResNet family
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, num_classes))
    elif isinstance(getattr(model, "classifier", None), nn.Sequential):  # MobileNet, EfficientNet, ConvNeXt
        last = model.classifier[-1]
        if not isinstance(last, nn.Linear):
            raise ModelError(f"don't know how to replace the head of {name}")
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)
        for module in model.classifier:
            if isinstance(module, nn.Dropout):
                module.p = dropout
    else:
        raise ModelError(f"don't know how to replace the head of {name}; use its timm version")


def _create_torchvision(
    name: str,
    num_classes: int,
    pretrained: bool,
    pretrained_path: Path | None,
    dropout: float,
    image_size: int | None,
) -> nn.Module:
    kwargs: dict[str, Any] = {}
    head_replaced = False
    if name.startswith("vit_") and image_size is not None and not pretrained:
        kwargs["image_size"] = image_size
    if pretrained and pretrained_path is None:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model = torchvision.models.get_model(name, weights=weights, **kwargs)
        except Exception as exc:  # offline, proxy, corrupt cache: all mean "no weights"
            raise ModelError(
                f"could not load pretrained weights {weights} for {name} ({type(exc).__name__}: {exc}); "
                "set model.pretrained_path to a local file, or model.pretrained=false to train from scratch"
            ) from None
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        if pretrained and pretrained_path is not None:
            state, ours = _read_local_weights(pretrained_path)
            if ours:  # a plantdx run of this model: its head is already ours (e.g. fc.1.*), so replace ours first
                _replace_head(model, name, num_classes, dropout)
                head_replaced = True
            _load_local_weights(model, pretrained_path, name, state)
    if not head_replaced:
        _replace_head(model, name, num_classes, dropout)
    net: nn.Module = model
    return net


def _create_timm(
    name: str,
    num_classes: int,
    pretrained: bool,
    pretrained_path: Path | None,
    dropout: float,
    image_size: int | None,
) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ModelError(f"unknown model {name!r}: not plant_cnn, a torchvision model or a timm model")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": dropout}
    if image_size is not None and "vit" in name:
        kwargs["img_size"] = image_size
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if pretrained and pretrained_path is not None:
        # A weights file or a plantdx checkpoint, read by our loader: timm's file loader would take a Lightning
        # checkpoint's "model."-prefixed keys for no keys at all.
        local: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
        _load_local_weights(local, pretrained_path, name)
        return local
    if pretrained and pretrained_path is None and name in PACKAGED:  # weights installed as a package, no download
        packaged: nn.Module = timm.create_model(name, pretrained=False, **kwargs)
        counts = load_packaged(packaged, PACKAGED[name])
        log.info(f"{name}: {counts['loaded']} ImageNet tensors from {PACKAGED[name].distribution}")
        return packaged
    try:
        model: nn.Module = timm.create_model(name, pretrained=pretrained, **kwargs)
        return model
    except Exception as exc:
        if not pretrained:
            raise
        raise ModelError(
            f"could not load pretrained weights for timm model {name} ({type(exc).__name__}: {exc}); "
            "set model.pretrained_path to a local file, or model.pretrained=false to train from scratch"
        ) from None


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    pretrained_path: Path | None = None,
    dropout: float = 0.2,
    width: float = 1.0,
    image_size: int | None = None,
) -> nn.Module:
    """Build a classifier with ``num_classes`` outputs.

    ``pretrained=True`` takes the torchvision/timm weights (downloaded where there is internet) or
    ``pretrained_path``; when neither can be had it raises instead of silently training from scratch.
    ``timm/<name>`` forces timm for names both libraries know.
    """
    if num_classes < 2:
        raise ModelError(f"need at least 2 classes, got {num_classes}")
    pretrained = pretrained or pretrained_path is not None  # a local weights file given is a file to use
    if name == PLANT_CNN:
        if pretrained and pretrained_path is None:
            raise ModelError("plant_cnn has no published weights; give model.pretrained_path or pretrained=false")
        model: nn.Module = PlantCNN(num_classes, width=width, dropout=dropout)
        if pretrained and pretrained_path is not None:
            _load_local_weights(model, pretrained_path, name)
        return model
    if name.startswith("timm/"):
        return _create_timm(name.removeprefix("timm/"), num_classes, pretrained, pretrained_path, dropout, image_size)
    if name in TORCHVISION_MODELS:
        return _create_torchvision(name, num_classes, pretrained, pretrained_path, dropout, image_size)
    return _create_timm(name, num_classes, pretrained, pretrained_path, dropout, image_size)


def head_module(model: nn.Module) -> nn.Module:
    """The top-level child that holds the classifier (what stays trainable while the backbone is frozen)."""
    get_classifier = getattr(model, "get_classifier", None)  # timm
    target = get_classifier() if callable(get_classifier) else None
    for attr in _HEAD_ATTRS:
        child = getattr(model, attr, None)
        if isinstance(child, nn.Module) and (target is None or _contains(child, target)):
            return child
    if target is not None:
        for child in model.children():
            if _contains(child, target):
                return child
    raise ModelError(f"cannot find the classification head of {type(model).__name__}")


def _contains(parent: nn.Module, module: nn.Module) -> bool:
    return any(m is module for m in parent.modules())


def backbone_modules(model: nn.Module) -> list[nn.Module]:
    head = head_module(model)
    return [child for child in model.children() if child is not head]


def _inner(pl_module: L.LightningModule) -> nn.Module:
    model = pl_module.model
    if not isinstance(model, nn.Module):
        raise ModelError("BackboneFreeze needs a LightningModule with a .model network")
    return model


class BackboneFreeze(BaseFinetuning):
    """Train the new head alone for ``unfreeze_at_epoch`` epochs, then the whole network at a lower LR."""

    def __init__(self, unfreeze_at_epoch: int, initial_denom_lr: float = 10.0) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.initial_denom_lr = initial_denom_lr

    def freeze_before_training(self, pl_module: L.LightningModule) -> None:
        self.freeze(backbone_modules(_inner(pl_module)), train_bn=True)

    def finetune_function(self, pl_module: L.LightningModule, current_epoch: int, optimizer: Optimizer) -> None:
        if current_epoch == self.unfreeze_at_epoch:
            self.unfreeze_and_add_param_group(
                backbone_modules(_inner(pl_module)),
                optimizer,
                initial_denom_lr=self.initial_denom_lr,
                train_bn=True,
            )
        # The LambdaLR schedule must drive the new group too, also after a resume: the checkpoint restores the
        # group and the schedule's base LRs, but not its lambdas.
        for config in pl_module.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if not hasattr(scheduler, "lr_lambdas"):
                continue
            while len(scheduler.lr_lambdas) < len(optimizer.param_groups):
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
            while len(scheduler.base_lrs) < len(optimizer.param_groups):
                # The group's current lr is already scaled by the schedule; its base is the peak over the denominator.
                scheduler.base_lrs.append(scheduler.base_lrs[0] / self.initial_denom_lr)


def _stage_metrics(num_classes: int, per_class: bool) -> MetricCollection:
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
    }
    if per_class:
        metrics["precision"] = MulticlassPrecision(num_classes, average=None)
        metrics["recall"] = MulticlassRecall(num_classes, average=None)
        metrics["confusion"] = MulticlassConfusionMatrix(num_classes)
    return MetricCollection(metrics)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR factor per step: linear warm-up, then cosine decay to 1% of the peak."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def batch_mixing(num_classes: int, *, mixup_alpha: float, cutmix_alpha: float, p: float) -> nn.Module | None:
    """MixUp and/or CutMix on a training batch (torchvision's), or None when both are off.

    They act on whole batches, after the per-image augmentation, so they live in the training step, not the
    dataset. With both on, each mixed batch gets one of the two, as timm does.
    """
    from torchvision.transforms import v2

    mixers: list[nn.Module] = []
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if not mixers or p <= 0:
        return None
    mixer = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
    return v2.RandomApply([mixer], p=p) if p < 1 else mixer


class PlantClassifier(L.LightningModule):
    """Loss, optimiser, schedule and one set of torchmetrics per stage around a plain ``nn.Module``."""

    def __init__(
        self,
        *,
        model_name: str,
        class_names: Sequence[str],
        image_size: int,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        dropout: float = 0.2,
        width: float = 1.0,
        lr: float = 3e-3,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        scheduler: str = "onecycle",
        warmup_epochs: float = 1.0,
        class_weights: Sequence[float] | None = None,
        data_hash: str | None = None,
        trained_on_val: bool | None = None,  # a refit, kept in the checkpoint so export refuses it wherever it is
        # (None: a checkpoint from before this was recorded)
        train_fraction: float | None = None,  # the share of each class it learnt from, and the seed that drew it:
        domain_train_fraction: dict[str, float] | None = None,  # (and the shares of single domains)
        data_seed: int | None = None,  # evaluate --split train scores those images wherever the file goes
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        num_classes = len(self.class_names)
        self.model = create_model(
            model_name,
            num_classes,
            pretrained=pretrained,
            pretrained_path=Path(pretrained_path) if pretrained_path else None,
            dropout=dropout,
            width=width,
            image_size=image_size,
        )
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.mix = batch_mixing(num_classes, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, p=mix_prob)
        self.train_metrics = _stage_metrics(num_classes, per_class=False).clone(prefix="train/")
        self.val_metrics = _stage_metrics(num_classes, per_class=True).clone(prefix="val/")
        self.test_metrics = _stage_metrics(num_classes, per_class=True).clone(prefix="test/")
        self.test_results: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x)
        return logits

    def on_fit_start(self) -> None:
        # NHWC: oneDNN's convolutions on a CPU run 1.2-2x faster so (EfficientNet-Lite0 at 160-224 px, 2 cores),
        # and cuDNN's with tensor cores too. The weights are the same numbers: export and checkpoints see no change.
        self.model.to(memory_format=torch.channels_last)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        target: torch.Tensor = y
        if self.mix is not None:
            x, target = self.mix(x, y)
            if target.ndim == 2:  # mixed: soft targets; the metrics score against the larger share
                y = target.argmax(dim=1)
        logits = self(x)
        loss: torch.Tensor = self.criterion(logits, target)
        self.train_metrics.update(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute(), sync_dist=True)
        self.train_metrics.reset()

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", self.criterion(logits, y), on_epoch=True, prog_bar=True, sync_dist=True)
        metrics.update(logits, y)

    def _log_eval(self, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        values = metrics.compute()
        metrics.reset()
        scalars = {k: v for k, v in values.items() if v.ndim == 0}
        self.log_dict(scalars, prog_bar=True, sync_dist=True)
        return values

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_eval(self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        values = self._log_eval(self.test_metrics)
        for kind in ("precision", "recall"):
            per_class = values[f"test/{kind}"]
            for name, value in zip(self.class_names, per_class, strict=True):
                self.log(f"test/{kind}/{name}", value, sync_dist=True)
        self.test_results = {k: v.detach().cpu() for k, v in values.items()}

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits: torch.Tensor = self(batch[0])
        return logits

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = max(1, round(hp.warmup_epochs * steps_per_epoch))
        if hp.scheduler == "onecycle" and total >= 4:  # OneCycleLR divides by zero on shorter runs
            if any(isinstance(cb, BackboneFreeze) for cb in self.trainer.callbacks):  # type: ignore[attr-defined]
                raise ModelError("scheduler onecycle cannot take the unfrozen backbone's new param group; use cosine")
            scheduler: Any = torch.optim.lr_scheduler.OneCycleLR(
                optimizer, max_lr=hp.lr, total_steps=total, pct_start=min(0.5, max(2, warmup) / total)
            )
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def load_checkpoint(path: Path) -> PlantClassifier:
    """A plantdx Lightning checkpoint for inference, or one clear error: torch's own for a truncated or foreign
    file (``PytorchStreamReader failed``, ``KeyError: 105``) names neither the file nor the problem."""
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        return PlantClassifier.load_from_checkpoint(path, map_location="cpu", pretrained=False, pretrained_path=None)
    except Exception as exc:  # corrupt, foreign, or from an incompatible plantdx: the message tells which
        raise ModelError(f"cannot load {path} as a plantdx checkpoint ({type(exc).__name__}: {exc})") from exc
