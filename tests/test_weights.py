"""The ImageNet weights of EfficientNet-Lite0 come from a package, renamed into timm's model by an explicit key map.

The map is proved right the way a wrong one would show: the ImageNet head, loaded with it, names the object in
photos of ImageNet classes among the non-leaf photos (airliners, grand pianos, soccer balls, ...); scrambled, the
same weights do no better than chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from plantdx.config import shared_data_dir
from plantdx.errors import ModelError
from plantdx.model import create_model
from plantdx.weights import PACKAGED, lite_key_map, load_packaged

LITE0 = PACKAGED["efficientnet_lite0"]
# Caltech-101 categories of ../shared/data/nonleaf/ that are ImageNet-1k classes, with those classes' indices.
IMAGENET = {
    "accordion": [401], "airplanes": [404], "barrel": [427], "beaver": [337], "binocular": [447], "cannon": [471],
    "cellphone": [487], "dalmatian": [251], "electric_guitar": [546], "elephant": [385, 386], "flamingo": [130],
    "grand_piano": [579], "laptop": [620], "llama": [355], "panda": [388], "pizza": [963], "revolver": [763],
    "saxophone": [776], "schooner": [780], "soccer_ball": [805], "starfish": [327], "strawberry": [949],
    "trilobite": [69], "umbrella": [879],
}  # fmt: skip


def test_every_tensor_maps_once_to_a_tensor_of_the_same_shape() -> None:
    model = timm.create_model("efficientnet_lite0")
    state = torch.load(LITE0.path(), map_location="cpu", weights_only=True)
    names = lite_key_map(state, model)
    weights = [k for k in state if not k.endswith("num_batches_tracked")]
    assert len(weights) == 247 and set(names) == set(weights)
    assert len(set(names.values())) == len(names)  # one to one
    own = model.state_dict()
    assert all(own[names[k]].shape == state[k].shape for k in weights)
    assert set(names.values()) == {k for k in own if not k.endswith("num_batches_tracked")}  # nothing left empty
    assert names["_blocks.0._project_conv.weight"] == "blocks.0.0.conv_pw.weight"  # the first stage names differ
    assert names["_blocks.1._project_conv.weight"] == "blocks.1.0.conv_pwl.weight"
    assert names["_blocks.15._expand_conv.weight"] == "blocks.6.0.conv_pw.weight"  # block 15 = stage 6's first
    assert names["_fc.weight"] == "classifier.weight"


def test_the_model_factory_warm_starts_from_the_package() -> None:
    model = create_model("efficientnet_lite0", 16, pretrained=True)
    packaged = torch.load(LITE0.path(), map_location="cpu", weights_only=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], packaged["_conv_stem.weight"])
    assert model.state_dict()["classifier.weight"].shape == (16, 1280)  # a new head for the 16 classes
    with pytest.raises(ModelError, match="does not fit"):
        load_packaged(timm.create_model("efficientnet_lite1"), LITE0)


def _top5_hits(model: torch.nn.Module, photos: list[tuple[Path, list[int]]]) -> float:
    mean, std = np.float32(LITE0.mean[0]), np.float32(LITE0.std[0])
    hits = []
    for path, classes in photos:
        image = Image.open(path).convert("RGB")
        scale = 256 / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        x = (np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255 - mean) / std
        with torch.inference_mode():
            top5 = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).topk(5).indices[0].tolist()
        hits.append(any(c in top5 for c in classes))
    return float(np.mean(hits))


@pytest.mark.realdata
@pytest.mark.slow
def test_the_imagenet_head_names_imagenet_objects_and_a_wrong_map_does_not() -> None:
    root = shared_data_dir() / "nonleaf"
    assert root.is_dir(), f"{root} not found: the non-leaf photos are part of the shared data"
    photos = [(p, classes) for name, classes in IMAGENET.items() for p in sorted((root / name).glob("*.jpg"))[:4]]
    assert len(photos) == 4 * len(IMAGENET)
    model = timm.create_model("efficientnet_lite0").eval()
    load_packaged(model, LITE0, keep_head=True)
    right = _top5_hits(model, photos)
    # The same tensors with the first two blocks of stage 5 swapped in the map, an off-by-one a hand-written map
    # makes: what still fits by shape loads (225 of 247), the rest keeps its random start, and chance is what it
    # gives (5 of 1000). Swapping two residual blocks deeper in a stage would not show: those barely matter.
    state = torch.load(LITE0.path(), map_location="cpu", weights_only=True)
    names = lite_key_map(state, model)
    swap = {"blocks.5.0.": "blocks.5.1.", "blocks.5.1.": "blocks.5.0."}
    scrambled = timm.create_model("efficientnet_lite0").eval()
    moved = {}
    for key, target in names.items():
        prefix = next((p for p in swap if target.startswith(p)), None)
        moved[key] = swap[prefix] + target[len(prefix) :] if prefix else target
    own = scrambled.state_dict()
    fits = {moved[k]: v for k, v in state.items() if k in moved and moved[k] in own and own[moved[k]].shape == v.shape}
    scrambled.load_state_dict(fits, strict=False)
    wrong = _top5_hits(scrambled, photos)
    assert right >= 0.8, f"top-5 hit rate {right:.0%} on {len(photos)} photos of ImageNet classes"
    assert wrong <= 0.15, f"a scrambled map still hit {wrong:.0%}"
