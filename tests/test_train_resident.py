from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plantdx.config import DatasetConfig
from plantdx.data.datamodule import PlantDataModule
from plantdx.data.datamodule import class_weights as datamodule_class_weights
from plantdx.data.split import manifest_for, write_manifest
from plantdx.model import create_model
from plantdx.train_resident import (
    MEAN,
    PROBE_EPOCHS,
    STD,
    AugmentParams,
    Candidate,
    Job,
    _rotation,
    _similarity_inverse,
    apply_augment,
    build,
    class_weights,
    colour_jitter,
    decode_all,
    eval_view,
    main,
    plan_epochs,
    read_rows,
    resize_to,
    run_job,
    sample_augment,
)

CPU = torch.device("cpu")


def _identity(n: int) -> AugmentParams:
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(n, 2, 3).clone()
    jitter = torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(n, 4).clone()
    return AugmentParams(theta, jitter, torch.zeros(n, 1, 1, 1), torch.zeros(n, 1, 1, 1))


def test_resize_matches_the_dataset_config() -> None:
    for size in (32, 128, 160, 224):
        assert resize_to(size) == DatasetConfig(image_size=size).resize_to


def test_similarity_inverse_is_the_matrix_inverse() -> None:
    gen = torch.Generator().manual_seed(0)
    angle, scale = torch.rand(6, generator=gen) * 6, 0.5 + torch.rand(6, generator=gen)
    tx, ty = torch.rand(6, generator=gen) - 0.5, torch.rand(6, generator=gen) - 0.5
    expected = torch.linalg.inv(_rotation(angle, scale, tx, ty))
    assert torch.allclose(_similarity_inverse(angle, scale, tx, ty), expected, atol=1e-5)


def test_identity_augmentation_is_the_eval_view() -> None:
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    out = apply_augment(images, _identity(3), 20, torch.Generator().manual_seed(0))
    assert torch.allclose(out, eval_view(images, 20), atol=1e-4)


def test_colour_jitter_identity_and_brightness() -> None:
    x = torch.rand(2, 3, 8, 8) * 200
    same = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 2)
    assert torch.allclose(colour_jitter(x, same), x, atol=1e-3)
    brighter = torch.tensor([[1.2, 1.0, 1.0, 0.0]] * 2)
    assert torch.allclose(colour_jitter(x, brighter), (x * 1.2).clamp(0, 255), atol=1e-3)


def test_sampled_augmentation_is_seeded_and_in_range() -> None:
    images = torch.randint(0, 256, (64, 3, 37, 37), dtype=torch.uint8)

    def draw(seed: int) -> tuple[AugmentParams, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        params = sample_augment(64, gen, CPU)
        return params, apply_augment(images, params, 32, gen)

    params, out = draw(1)
    again = draw(1)[1]
    assert out.shape == (64, 3, 32, 32) and torch.equal(out, again)
    assert not torch.equal(out, draw(2)[1])
    b, c, s, h = params.jitter.T
    assert ((b >= 0.75) & (b <= 1.25)).all() and ((c >= 0.75) & (c <= 1.25)).all()
    assert ((s >= 0.85) & (s <= 1.15)).all() and (h.abs() <= 0.03).all()
    assert 0 < int((params.jitter[:, 0] != 1).sum()) < 64  # jitter applied to some, not all (p = 0.6)
    assert set(params.blur.flatten().tolist()) <= {0.0, 1.0}
    mean, std = torch.tensor(MEAN)[None, :, None, None], torch.tensor(STD)[None, :, None, None]
    assert (out >= -mean / std - 1e-4).all() and (out <= (1 - mean) / std + 1e-4).all()  # pixels stay in 0-255


def test_eval_view_matches_the_datamodule(tiny_dataset: Path) -> None:
    """Images decoded here and centre-cropped give the tensors ``plantdx train`` validates on."""
    cfg = DatasetConfig(root=tiny_dataset, image_size=32, batch_size=64, num_workers=0, min_images_per_class=3)
    manifest = manifest_for(cfg)
    dm = PlantDataModule(cfg, manifest)
    dm.setup("fit")
    expected = torch.cat([x for x, _ in dm.val_dataloader()])
    rows = read_rows(write_manifest(manifest, tiny_dataset.parent / "m.csv"), manifest.classes)
    val = [r for r in rows if r.split == "val"]
    stored = torch.from_numpy(decode_all(tiny_dataset, val, resize_to(32), workers=1)).permute(0, 3, 1, 2)
    assert torch.allclose(eval_view(stored, 32), expected, atol=1e-5)
    assert [r.label for r in val] == [manifest.classes.index(r.label) for r in manifest.split("val")]


def test_class_weights_match_the_datamodule() -> None:
    labels = [0, 0, 0, 1, 2, 2]
    ours = class_weights(torch.tensor(labels), 4)
    assert torch.allclose(ours, datamodule_class_weights(labels, 4))


def test_plan_epochs_uses_the_last_probe_epoch() -> None:
    assert plan_epochs(100, elapsed_s=10, last_epoch_s=2, max_epochs=300) == PROBE_EPOCHS + 45
    assert plan_epochs(100, elapsed_s=10, last_epoch_s=0.01, max_epochs=300) == 300
    assert plan_epochs(5, elapsed_s=10, last_epoch_s=2, max_epochs=300) == PROBE_EPOCHS + 4


@pytest.mark.slow
def test_importing_needs_neither_pydantic_nor_albumentations_nor_mlflow() -> None:
    """What lets it run on a bare GPU machine that has PyTorch and nothing of plantdx's other dependencies."""
    code = (
        "import sys, plantdx.train_resident as r; r.build(r.Candidate(name='x', image_size=32), 3); "
        "print([m for m in ('pydantic', 'albumentations', 'mlflow', 'plantdx.config') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_job_trains_side_by_side_then_distils(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = DatasetConfig(root=tiny_dataset, min_images_per_class=3)
    manifest = manifest_for(cfg)
    small = {"image_size": 32, "batch_size": 8, "dropout": 0.0}
    job = Job(
        data_root=str(tiny_dataset),
        manifest=str(write_manifest(manifest, tmp_path / "manifest.csv")),
        classes=manifest.classes,
        phases=[
            {
                "budget_s": 60,
                "candidates": [
                    {"name": "a", "epochs": PROBE_EPOCHS + 1, **small},
                    {"name": "b", "epochs": PROBE_EPOCHS + 1, "width": 0.5, "seed": 1, **small},
                ],
            },
            {"budget_s": 60, "candidates": [{"name": "s", "epochs": PROBE_EPOCHS + 1, "teachers": "auto", **small}]},
        ],
        out=str(tmp_path / "out"),
        work=str(tmp_path / "work"),
        workers=1,
        teacher_margin=1.0,  # both first-phase models teach, however they scored
    )
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job.__dict__))
    summary = run_job(Job.load(job_path), tmp_path / "job.resolved.json")

    assert summary["prepare"]["train_images"] == len(manifest.split("train"))
    assert summary["failed"] == []
    first, second = summary["phases"]
    assert set(first["results"]) == {"a", "b"} and first["ensemble"]["members"] == ["a", "b"]
    student = second["results"]["s"]
    assert student["candidate"]["teachers"] == ["a", "b"]
    assert student["epochs"] == PROBE_EPOCHS + 1 and 0.0 <= student["val_acc"] <= 1.0
    assert json.loads((tmp_path / "out" / "resident.json").read_text()) == summary
    model = create_model("plant_cnn", len(manifest.classes), width=0.5)
    model.load_state_dict(torch.load(tmp_path / "out" / "b.pt", weights_only=True))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert np.load(tmp_path / "work" / "s_val_logits.npy").shape == (len(manifest.split("val")), len(manifest.classes))


@pytest.mark.slow
def test_a_failed_candidate_is_reported_and_fails_the_job(tiny_dataset: Path, tmp_path: Path) -> None:
    cfg = DatasetConfig(root=tiny_dataset, min_images_per_class=3)
    manifest = manifest_for(cfg)
    job_path = tmp_path / "job.json"
    job_path.write_text(
        json.dumps(
            {
                "data_root": str(tiny_dataset),
                "manifest": str(write_manifest(manifest, tmp_path / "manifest.csv")),
                "classes": manifest.classes,
                "phases": [{"budget_s": 10, "candidates": [{"name": "bad", "model": "no_such_model"}]}],
                "out": str(tmp_path / "out"),
                "work": str(tmp_path / "work"),
                "workers": 1,
            }
        )
    )
    assert main([str(job_path)]) == 1
    summary = json.loads((tmp_path / "out" / "resident.json").read_text())
    assert summary["failed"] == ["bad"] and summary["phases"][0]["results"] == {}


RECORDED_JOBS = sorted((Path(__file__).parents[1] / "configs" / "resident").glob("*.json"))


@pytest.mark.parametrize("path", RECORDED_JOBS, ids=lambda p: p.name)
def test_recorded_jobs_still_load(path: Path) -> None:
    """The jobs that ran on leases are the record behind the README's table: each must still parse and build."""
    job = Job.load(path)
    assert job.classes == sorted(job.classes) and len(set(job.classes)) == len(job.classes)
    names: list[str] = []
    for phase in job.phases:
        assert phase["budget_s"] > 0
        for spec in phase["candidates"]:
            candidate = Candidate(**spec)
            names.append(candidate.name)
            net = build(candidate, len(job.classes))
            logits = net.eval()(torch.zeros(1, 3, 32, 32))
            assert logits.shape == (1, len(job.classes))
    assert len(set(names)) == len(names)
