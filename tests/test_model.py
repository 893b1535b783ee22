from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torchvision

from plantdx.errors import ModelError
from plantdx.model import (
    BackboneFreeze,
    PlantClassifier,
    backbone_modules,
    batch_mixing,
    create_model,
    head_module,
    warmup_cosine,
)


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [
        ("plant_cnn", 64, {}),
        ("plant_cnn", 64, {"width": 0.25}),
        ("mobilenet_v3_small", 64, {}),
        ("mobilenet_v3_large", 64, {}),
        ("efficientnet_b0", 64, {}),
        ("resnet50", 32, {}),
        ("vit_b_16", 32, {"image_size": 32}),  # a GPU model: checked at a tiny input only
        ("resnet10t", 32, {}),  # any timm name
        ("timm/mobilenetv3_small_050", 32, {}),
    ],
)
def test_every_named_model_gives_one_logit_per_class(name: str, size: int, kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = create_model(name, 15, **kwargs).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 15)
    assert torch.isfinite(out).all()
    head = head_module(model)
    assert any(p.shape[0] == 15 for p in head.parameters())  # the replaced head is where we think it is
    assert head not in backbone_modules(model)


def test_unknown_model_and_too_few_classes() -> None:
    with pytest.raises(ModelError, match="unknown model"):
        create_model("no_such_net", 3)
    with pytest.raises(ModelError, match="at least 2 classes"):
        create_model("plant_cnn", 1)


def test_pretrained_without_weights_fails_instead_of_training_from_scratch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_get_model = torchvision.models.get_model

    def offline(name: str, weights: Any = None, **kwargs: Any) -> torch.nn.Module:
        if weights is not None:  # what the real call does without internet, without touching the network
            raise urllib.error.URLError("no network")
        return real_get_model(name, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ModelError, match="pretrained_path"):
        create_model("resnet18", 5, pretrained=True)
    with pytest.raises(ModelError, match="no published weights"):
        create_model("plant_cnn", 5, pretrained=True)


def test_pretrained_path_loads_local_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = torchvision.models.resnet18()  # stands in for a downloaded ImageNet checkpoint
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18", 4, pretrained=True, pretrained_path=path)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc[-1].out_features == 4
    with pytest.raises(ModelError, match="does not fit"):
        torch.save({"conv1.weight": source.conv1.weight}, tmp_path / "partial.pth")
        create_model("resnet18", 4, pretrained=True, pretrained_path=tmp_path / "partial.pth")
    with pytest.raises(ModelError, match="does not exist"):
        create_model("resnet18", 4, pretrained=True, pretrained_path=tmp_path / "missing.pth")
    # The path alone (model.pretrained left false, as the README shows) is a file to use, never ignored.
    assert torch.equal(create_model("resnet18", 4, pretrained_path=path).conv1.weight, source.conv1.weight)
    with pytest.raises(ModelError, match="does not exist"):
        create_model("plant_cnn", 4, pretrained_path=tmp_path / "missing.pth")


def _module(**kwargs: Any) -> PlantClassifier:
    defaults: dict[str, Any] = {
        "model_name": "plant_cnn",
        "class_names": ["a", "b", "c"],
        "image_size": 32,
        "width": 0.25,
    }
    return PlantClassifier(**{**defaults, **kwargs})


def _quiet_trainer(tmp_path: Path, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


class _Random(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 32, 32, generator=g), i % 3


def test_backbone_freeze_trains_the_head_first_then_everything(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _module(scheduler="cosine", lr=0.01)
    stem = next(module.model.features.parameters())
    head = module.model.classifier[-1].weight
    before_stem, before_head = stem.detach().clone(), head.detach().clone()
    loader = torch.utils.data.DataLoader(_Random(), batch_size=8)

    class Probe(L.Callback):
        stem_after_epoch0: torch.Tensor | None = None

        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: ARG002
            if trainer.current_epoch == 0:
                self.stem_after_epoch0 = stem.detach().clone()

    probe = Probe()
    trainer = _quiet_trainer(tmp_path, max_epochs=2, callbacks=[BackboneFreeze(unfreeze_at_epoch=1), probe])
    trainer.fit(module, loader)
    assert probe.stem_after_epoch0 is not None
    assert torch.equal(probe.stem_after_epoch0, before_stem)  # frozen during epoch 0
    assert not torch.equal(stem.detach(), before_stem)  # trained after unfreezing
    assert not torch.equal(head.detach(), before_head)
    assert len(trainer.optimizers[0].param_groups) == 2


def test_metrics_per_stage_are_slash_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _module()
    loader = torch.utils.data.DataLoader(_Random(), batch_size=8)
    trainer = _quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader, loader)
    keys = set(trainer.callback_metrics)
    assert {"train/loss", "train/acc", "train/f1_macro", "val/loss", "val/acc", "val/f1_macro"} <= keys
    trainer.test(module, loader, verbose=False)
    keys = set(trainer.callback_metrics)
    assert {"test/acc", "test/f1_macro", "test/precision/a", "test/recall/c"} <= keys
    assert module.test_results["test/confusion"].shape == (3, 3)
    assert int(module.test_results["test/confusion"].sum()) == 16


def test_class_weights_and_label_smoothing_reach_the_loss() -> None:
    module = _module(class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1)
    assert torch.equal(module.criterion.weight, torch.tensor([1.0, 2.0, 3.0]))
    assert module.criterion.label_smoothing == 0.1


def test_batch_mixing_is_off_by_default_and_gives_soft_targets_when_on() -> None:
    assert batch_mixing(3, mixup_alpha=0.0, cutmix_alpha=0.0, p=1.0) is None
    assert _module().mix is None
    torch.manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for kind in ("cutmix", "mixup"):
        mix = batch_mixing(
            3, mixup_alpha=0.4 if kind == "mixup" else 0, cutmix_alpha=1.0 if kind == "cutmix" else 0, p=1
        )
        assert mix is not None
        mixed, target = mix(x, y)
        assert mixed.shape == x.shape and not torch.equal(mixed, x)
        assert target.shape == (8, 3)
        assert torch.allclose(target.sum(dim=1), torch.ones(8))
        assert torch.all(target >= 0)
    half = batch_mixing(3, mixup_alpha=0.2, cutmix_alpha=1.0, p=0.5)
    assert half is not None
    mixed = 0
    for _ in range(40):
        out, target = half(x, y)
        if target.ndim == 1:  # passed untouched: the very images and hard labels
            assert torch.equal(out, x) and torch.equal(target, y)
        else:
            assert target.shape == (8, 3) and not torch.equal(out, x)
            mixed += 1
    assert 8 <= mixed <= 32, mixed  # about half of the batches (binomial, n=40, p=0.5: outside this < 1e-4)


def test_a_mixed_batch_trains_through_class_weights_and_label_smoothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = _module(class_weights=[1.0, 2.0, 3.0], label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0)
    assert module.mix is not None
    before = module.model.classifier[-1].weight.detach().clone()
    loader = torch.utils.data.DataLoader(_Random(), batch_size=8)
    trainer = _quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, loader)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0
    assert not torch.equal(module.model.classifier[-1].weight.detach(), before)


def test_warmup_cosine_schedule_shape() -> None:
    f = warmup_cosine(total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.505, abs=0.01)
    assert f(100) == pytest.approx(0.01)


def test_a_plantdx_checkpoint_can_warm_start_a_model(tmp_path: Path) -> None:
    source = _module(class_weights=[1.0, 1.0, 1.0])
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, tmp_path / "run.ckpt")
    model = create_model("plant_cnn", 3, width=0.25, pretrained=True, pretrained_path=tmp_path / "run.ckpt")
    expected = source.model.state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_warm_starting_from_a_model_of_other_classes_keeps_all_but_the_head(tmp_path: Path) -> None:
    """Fine-tuning a five-class run for seven classes: the body is loaded, the head starts fresh (no traceback)."""
    source = create_model("plant_cnn", 5, width=0.25)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "five.ckpt")
    model = create_model("plant_cnn", 7, width=0.25, pretrained=True, pretrained_path=tmp_path / "five.ckpt")
    body = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert model.state_dict()["classifier.2.weight"].shape == (7, source.state_dict()["classifier.2.weight"].shape[1])


def test_a_torchvision_plantdx_checkpoint_warm_starts_its_own_architecture(tmp_path: Path) -> None:
    """A plantdx ResNet's head is fc.1.* (dropout + linear): it is loaded after the head is replaced, not refused."""
    source = create_model("resnet18", 3, dropout=0.2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "r18.ckpt")
    model = create_model("resnet18", 3, dropout=0.2, pretrained=True, pretrained_path=tmp_path / "r18.ckpt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(ModelError, match="does not fit"):  # a file of another architecture is still refused
        create_model("resnet18", 3, pretrained=True, pretrained_path=_plant_cnn_file(tmp_path))


def _plant_cnn_file(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.pt"
    torch.save(create_model("plant_cnn", 3, width=0.25).state_dict(), path)
    return path


def test_a_body_of_another_shape_is_refused_not_silently_reinitialised(tmp_path: Path) -> None:
    path = tmp_path / "wide.pt"
    torch.save(create_model("plant_cnn", 3, width=0.5).state_dict(), path)
    with pytest.raises(ModelError, match="tensors of another shape"):
        create_model("plant_cnn", 3, width=0.25, pretrained=True, pretrained_path=path)


def test_a_timm_plantdx_checkpoint_warm_starts_its_own_architecture(tmp_path: Path) -> None:
    """The bundled model's second stage starts from the first stage's checkpoint: every tensor, head included,
    must arrive (timm's own file loader took the "model."-prefixed keys for none and trained from random)."""
    source = create_model("efficientnet_lite0", 4, dropout=0.2)
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "lite.ckpt")
    model = create_model("efficientnet_lite0", 4, dropout=0.2, pretrained=True, pretrained_path=tmp_path / "lite.ckpt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())
    with pytest.raises(ModelError, match="does not fit"):
        create_model("efficientnet_lite0", 4, pretrained=True, pretrained_path=_plant_cnn_file(tmp_path))
