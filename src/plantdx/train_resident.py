"""Training with the whole dataset resident on the accelerator: for a GPU lease of minutes, not hours.

``plantdx train`` needs MLflow, pydantic and albumentations and feeds the GPU from CPU workers one image at a
time; the GPU machine lent here for minutes has PyTorch but none of those three. Here every image is decoded once
(with the same PIL resize as serving, ``plantdx.images``), kept on the device as uint8, and augmented there a
batch at a time: one affine sample for crop, flips, rot90 and rotation, then per-image colour jitter, blur and
noise, following the ``standard`` recipe of ``plantdx.data.transforms`` (not its JPEG and shadow steps). Several
candidates train at once, one process each, under a wall-clock budget, and a later phase can distil an ensemble
of the earlier phases' models into a small student.

Only torch, numpy and PIL are needed (``plantdx.model`` and ``plantdx.images``; no pydantic, albumentations or
MLflow), so a bare GPU machine with PyTorch runs it: ``python -m plantdx.train_resident JOB.json``. It writes
plain state dicts (``create_model`` loads them) and a ``resident.json`` record; it does not track in MLflow or
make bundles: a model worth shipping goes on as ``model.pretrained_path`` of a tracked ``plantdx train`` run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plantdx.evaluate import compute_report, softmax
from plantdx.images import center_crop, load_rgb, resize_shorter

log = logging.getLogger(__name__)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class Candidate:
    """One model to train; ``teachers`` (names from an earlier phase) make it a distilled student."""

    name: str
    model: str = "plant_cnn"
    width: float = 1.0
    dropout: float = 0.3
    image_size: int = 160
    seed: int = 0
    lr: float = 0.003
    weight_decay: float = 0.05
    label_smoothing: float = 0.05
    batch_size: int = 32
    warmup_epochs: float = 5.0
    max_epochs: int = 300
    epochs: int | None = None  # fixed length; None = as many as the phase's budget allows, up to max_epochs
    teachers: list[str] = field(default_factory=list)
    distill_weight: float = 0.7  # of the KL to the teachers' mean probabilities; the rest is the label loss

    @property
    def resize(self) -> int:
        return resize_to(self.image_size)


def resize_to(crop: int) -> int:
    """``DatasetConfig.resize_to``: the crop is 224/256 of the shorter side."""
    return round(crop * 256 / 224)


@dataclass(frozen=True)
class Row:
    path: str
    label: int
    split: str


def read_rows(manifest: Path, classes: Sequence[str]) -> list[Row]:
    """The project's manifest CSV (path, label, split, ...), without importing its pydantic-based reader."""
    index = {name: i for i, name in enumerate(classes)}
    with manifest.open(newline="") as fh:
        return [Row(r["path"], index[r["label"]], r["split"]) for r in csv.DictReader(fh)]


def _decode(args: tuple[str, int]) -> np.ndarray:
    path, resize = args
    return resize_shorter(load_rgb(Path(path), resize), resize, "bilinear")


def decode_all(root: Path, rows: Sequence[Row], resize: int, workers: int) -> np.ndarray:
    """N x H x W x 3 uint8, each image exactly as ``ImageCache`` would hold it (shorter side ``resize``)."""
    jobs = [(str(root / r.path), resize) for r in rows]
    with ProcessPoolExecutor(workers) as pool:
        images = list(pool.map(_decode, jobs, chunksize=32))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:  # non-square photos: centre-crop to a square so they stack
        side = min(min(s[0], s[1]) for s in shapes)
        images = [center_crop(im, side) for im in images]
    return np.stack(images)


# ---------------------------------------------------------------------------------------------------- augmentation


@dataclass
class AugmentParams:
    """One batch's random draws, shared by every resolution that looks at it (student and teachers agree).

    Everything stays on the device and nothing is read back each step (no ``.item()``, ``bool(any)`` or
    ``linalg.inv`` with its error check): a host sync per step makes each process wait out the others' kernels
    when several share one GPU.
    """

    theta: torch.Tensor  # B x 2 x 3, output -> input normalised coordinates
    jitter: torch.Tensor  # B x 4: brightness, contrast, saturation, hue (identity where not applied)
    blur: torch.Tensor  # B x 1 x 1 x 1: 1 where blurred
    noise: torch.Tensor  # B x 1 x 1 x 1: std in 0-255 units, 0 where not applied


def sample_augment(n: int, gen: torch.Generator, device: torch.device) -> AugmentParams:
    """Draws for ``RandomResizedCrop(scale 0.6-1, ratio 0.85-1.18)``, flips, rot90, ``Affine`` (p 0.3),
    ``ColorJitter`` (p 0.6), blur (p 0.15) and Gaussian noise (p 0.15), as in the ``standard`` recipe."""

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)

    def coin(p: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=device) < p

    zero, one = torch.zeros(n, device=device), torch.ones(n, device=device)
    area, log_ratio = u(0.6, 1.0), u(math.log(0.85), math.log(1.18))
    w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    cx, cy = u(-1, 1) * (1 - w), u(-1, 1) * (1 - h)
    crop = _mat(w, zero, cx, zero, h, cy)
    flips = _mat(torch.where(coin(0.5), -one, one), zero, zero, zero, torch.where(coin(0.5), -one, one), zero)
    k = torch.where(coin(0.5), torch.randint(1, 4, (n,), generator=gen, device=device).float(), zero)
    rot90 = _rotation(k * (math.pi / 2), one, zero, zero)
    affine_on = coin(0.3)
    angle = torch.where(affine_on, u(-20, 20) * math.pi / 180, zero)
    scale = torch.where(affine_on, u(0.9, 1.1), one)
    tx = torch.where(affine_on, u(-0.1, 0.1), zero)  # 5 % of the side = 0.1 in [-1, 1] coordinates
    ty = torch.where(affine_on, u(-0.1, 0.1), zero)
    theta = crop @ flips @ rot90 @ _similarity_inverse(angle, scale, tx, ty)
    jitter_on = coin(0.6)
    jitter = torch.stack(
        [
            torch.where(jitter_on, u(0.75, 1.25), one),
            torch.where(jitter_on, u(0.75, 1.25), one),
            torch.where(jitter_on, u(0.85, 1.15), one),
            torch.where(jitter_on, u(-0.03, 0.03), zero),
        ],
        dim=1,
    )
    blur = coin(0.15).float()[:, None, None, None]
    noise = torch.where(coin(0.15), u(0.02, 0.06) * 255.0, zero)[:, None, None, None]
    return AugmentParams(theta[:, :2, :], jitter, blur, noise)


def _mat(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    bottom = torch.zeros_like(a)
    return torch.stack(
        [torch.stack([a, b, c], 1), torch.stack([d, e, f], 1), torch.stack([bottom, bottom, bottom + 1], 1)], 1
    )


def _rotation(angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    return _mat(cos, -sin, tx, sin, cos, ty)


def _similarity_inverse(angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_rotation``, in closed form (``linalg.inv`` checks for errors, which syncs with the host)."""
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return _mat(cos, sin, -(cos * tx + sin * ty), -sin, cos, sin * tx - cos * ty)


def apply_augment(images: torch.Tensor, params: AugmentParams, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 B x 3 x S x S on the device -> normalised float B x 3 x size x size."""
    x = images.float()
    grid = F.affine_grid(params.theta, [x.shape[0], 3, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # black borders
    x = colour_jitter(x, params.jitter)
    x = x + params.blur * (_blur(x) - x)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    x = (x + noise * params.noise).clamp(0, 255)
    return normalise(x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_RGB = np.linalg.inv(_YIQ)


def colour_jitter(x: torch.Tensor, jitter: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (a rotation in YIQ), on 0-255 floats."""
    b, c, s, hue = (jitter[:, i, None, None, None] for i in range(4))
    x = (x * b).clamp(0, 255)
    mean = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 255)
    gray = _gray(x)
    x = (gray + (x - gray) * s).clamp(0, 255)
    yiq = torch.tensor(_YIQ, device=x.device, dtype=x.dtype)
    rgb = torch.tensor(_RGB, device=x.device, dtype=x.dtype)
    t = torch.einsum("ij,bjhw->bihw", yiq, x)
    angle = hue.squeeze(-1).squeeze(-1).squeeze(-1) * 2 * math.pi
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    i, q = t[:, 1], t[:, 2]
    t = torch.stack([t[:, 0], i * cos - q * sin, i * sin + q * cos], dim=1)
    return torch.einsum("ij,bjhw->bihw", rgb, t).clamp(0, 255)


def _blur(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=x.device, dtype=x.dtype)
    kernel = (k1[:, None] * k1[None, :]) / 256.0
    weight = kernel.expand(3, 1, 5, 5).contiguous()
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), weight, groups=3)


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype)[None, :, None, None] * 255.0
    std = torch.tensor(STD, device=x.device, dtype=x.dtype)[None, :, None, None] * 255.0
    return (x - mean) / std


def eval_view(images: torch.Tensor, size: int) -> torch.Tensor:
    """The eval transform: centre crop (offsets ``(dim - size) // 2``, as albumentations), normalise."""
    s = images.shape[-1]
    top = (s - size) // 2
    return normalise(images[:, :, top : top + size, top : top + size].float())


# ------------------------------------------------------------------------------------------------------- training


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse frequency with mean 1, as ``plantdx.data.datamodule.class_weights``."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    return torch.where(counts > 0, labels.numel() / (num_classes * counts.clamp(min=1)), 0.0)


def val_scores(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    """Accuracy and macro-F1 as ``plantdx train`` reports them (``compute_report``); NaN with no val images."""
    if labels.size == 0:
        return {"val_acc": math.nan, "val_f1_macro": math.nan}
    report = compute_report(logits, labels, classes)
    return {"val_acc": report.accuracy, "val_f1_macro": report.f1_macro}


def build(c: Candidate, num_classes: int) -> nn.Module:
    from plantdx.model import create_model

    return create_model(c.model, num_classes, dropout=c.dropout, width=c.width, image_size=c.image_size)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, size: int, batch: int = 256) -> torch.Tensor:
    model.eval()
    if images.shape[0] == 0:
        return torch.zeros((0, 0), device=images.device)
    out = []
    for i in range(0, images.shape[0], batch):
        with _autocast(images.device):
            out.append(model(eval_view(images[i : i + batch], size).contiguous(memory_format=torch.channels_last)))
    return torch.cat(out).float()


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


PROBE_EPOCHS = 2


def plan_epochs(budget_s: float, elapsed_s: float, last_epoch_s: float, max_epochs: int) -> int:
    """How many epochs fit the budget, judged by the last probe epoch alone.

    The first epoch pays for CUDA start-up and cuDNN's autotuning: timing both probe epochs on an H100 predicted
    about 8.5 s an epoch where 2.7 s followed, and a run sized by it used 80 s of a 251 s budget.
    """
    fit = PROBE_EPOCHS + int(max(0.0, budget_s - elapsed_s) / max(last_epoch_s, 1e-6))
    return max(PROBE_EPOCHS + 4, min(max_epochs, fit))


def train_candidate(
    c: Candidate,
    stores: dict[int, torch.Tensor],
    labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    teachers: Sequence[tuple[Candidate, nn.Module]],
    budget_s: float,
    num_classes: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """AdamW + one-cycle as ``PlantClassifier``, after ``PROBE_EPOCHS`` at the schedule's starting rate.

    The probe epochs time the run, so that with ``epochs`` unset the one-cycle schedule can be sized to the budget;
    with ``epochs`` set they are the same warm start and the schedule covers the rest.
    """
    device = labels.device
    torch.manual_seed(c.seed)
    gen = torch.Generator(device=device).manual_seed(c.seed)
    model = build(c, num_classes).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr / 25, weight_decay=c.weight_decay, fused=device.type == "cuda")
    criterion = nn.CrossEntropyLoss(weight=class_weights(labels, num_classes), label_smoothing=c.label_smoothing)
    n = labels.numel()
    steps_per_epoch = math.ceil(n / c.batch_size)
    started = epoch_started = time.perf_counter()
    history: list[dict[str, float]] = []
    scheduler: Any = None
    epochs = c.epochs or c.max_epochs
    epoch = 0
    while epoch < epochs:
        if epoch == PROBE_EPOCHS and scheduler is None:
            if c.epochs is None:
                now = time.perf_counter()
                epochs = plan_epochs(budget_s, now - started, now - epoch_started, c.max_epochs)
            total = (epochs - PROBE_EPOCHS) * steps_per_epoch
            warmup = max(2, round(c.warmup_epochs * steps_per_epoch))
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                opt, max_lr=c.lr, total_steps=total, pct_start=min(0.5, warmup / total)
            )
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = order[i * c.batch_size : (i + 1) * c.batch_size]
            params = sample_augment(idx.numel(), gen, device)
            x = apply_augment(stores[c.resize][idx], params, c.image_size, gen)
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            with _autocast(device):
                logits = model(x)
                loss = criterion(logits.float(), y)
                if teachers:
                    with torch.no_grad():
                        probs = torch.stack(
                            [
                                t(apply_augment(stores[tc.resize][idx], params, tc.image_size, gen)).float().softmax(1)
                                for tc, t in teachers
                            ]
                        ).mean(0)
                    kl = F.kl_div(logits.float().log_softmax(1), probs, reduction="batchmean")
                    loss = c.distill_weight * kl + (1 - c.distill_weight) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach()
        epoch += 1
        if epoch % 25 == 0 or epoch == epochs:
            pred = predict(model, val_images, c.image_size).argmax(1)
            acc = float((pred == val_labels).float().mean())
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": float(loss_sum) / steps_per_epoch,
                    "val_acc": acc,
                    "elapsed_s": time.perf_counter() - started,
                }
            )
            log.info(f"[{c.name}] epoch {epoch}/{epochs} loss {history[-1]['train_loss']:.4f} val_acc {acc:.4f}")
    return model, {"epochs": epochs, "wall_s": time.perf_counter() - started, "history": history}


# ---------------------------------------------------------------------------------------------------- orchestration


@dataclass
class Job:
    """What a lease runs: the data, its split, and phases of candidates trained side by side under a budget."""

    data_root: str
    manifest: str
    classes: list[str]
    phases: list[dict[str, Any]]  # {"budget_s": float, "candidates": [Candidate fields]}
    out: str
    work: str = "/tmp/plantdx-resident"
    workers: int = 8
    allow_missing: bool = False  # a smoke run on part of the data
    teacher_margin: float = 0.01  # students learn from earlier models within this val accuracy of the best

    @classmethod
    def load(cls, path: Path) -> Job:
        return cls(**json.loads(path.read_text()))


def prepare(job: Job) -> dict[str, Any]:
    """Decode train and val once per resolution into ``work`` (.npy), shared by the candidate processes."""
    work = Path(job.work)
    work.mkdir(parents=True, exist_ok=True)
    root = Path(job.data_root)
    rows = [r for r in read_rows(Path(job.manifest), job.classes) if r.split in ("train", "val")]
    if job.allow_missing:
        rows = [r for r in rows if (root / r.path).is_file()]
    resizes = sorted({Candidate(**c).resize for p in job.phases for c in p["candidates"]})
    started = time.perf_counter()
    for split in ("train", "val"):
        part = [r for r in rows if r.split == split]
        np.save(work / f"{split}_labels.npy", np.array([r.label for r in part], dtype=np.int64))
        for resize in resizes:
            np.save(work / f"{split}_{resize}.npy", decode_all(root, part, resize, job.workers))
    info = {
        "train_images": sum(r.split == "train" for r in rows),
        "val_images": sum(r.split == "val" for r in rows),
        "decode_s": round(time.perf_counter() - started, 1),
    }
    log.info(f"decoded {info}")
    return info


def _load_split(
    work: Path, split: str, resizes: set[int], device: torch.device
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    stores = {
        r: torch.from_numpy(np.load(work / f"{split}_{r}.npy")).permute(0, 3, 1, 2).contiguous().to(device)
        for r in resizes
    }
    labels = torch.from_numpy(np.load(work / f"{split}_labels.npy")).to(device)
    return stores, labels


def run_candidate(job: Job, phase: int, name: str) -> None:
    """One process: train one candidate, write its weights, its val logits and a record."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = next(p for p in job.phases[phase]["candidates"] if p["name"] == name)
    c = Candidate(**spec)
    out, work = Path(job.out), Path(job.work)
    teachers: list[tuple[Candidate, nn.Module]] = []
    for t in c.teachers:
        tspec = next(Candidate(**p) for ph in job.phases[:phase] for p in ph["candidates"] if p["name"] == t)
        net = build(tspec, len(job.classes))
        net.load_state_dict(torch.load(out / f"{t}.pt", map_location="cpu", weights_only=True))
        teachers.append((tspec, net.to(device).eval().to(memory_format=torch.channels_last)))
    resizes = {c.resize} | {tc.resize for tc, _ in teachers}
    stores, labels = _load_split(work, "train", resizes, device)
    val_stores, val_labels = _load_split(work, "val", {c.resize}, device)
    model, record = train_candidate(
        c,
        stores,
        labels,
        val_stores[c.resize],
        val_labels,
        teachers,
        float(job.phases[phase]["budget_s"]),
        len(job.classes),
    )
    logits = predict(model, val_stores[c.resize], c.image_size)
    np.save(work / f"{name}_val_logits.npy", logits.cpu().numpy())
    torch.save({k: v.float().cpu() for k, v in model.state_dict().items()}, out / f"{name}.pt")
    record.update(
        candidate=asdict(c),
        **val_scores(logits.cpu().numpy(), val_labels.cpu().numpy(), job.classes),
        params=sum(p.numel() for p in model.parameters()),
        device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        torch=torch.__version__,
    )
    (work / f"{name}.json").write_text(json.dumps(record, indent=2))


def run_job(job: Job, job_path: Path) -> dict[str, Any]:
    Path(job.out).mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"prepare": prepare(job), "phases": [], "failed": []}
    work = Path(job.work)
    val_labels = np.load(work / "val_labels.npy")
    done: dict[str, dict[str, Any]] = {}
    for i, phase in enumerate(job.phases):
        for spec in phase["candidates"]:  # "auto" teachers: every earlier model near the best on val
            if spec.get("teachers") == "auto":
                if not done:
                    raise RuntimeError(f"{spec['name']}: no model of an earlier phase finished, so none can teach")
                best = max(r["val_acc"] for r in done.values())
                spec["teachers"] = sorted(n for n, r in done.items() if r["val_acc"] >= best - job.teacher_margin)
        job_path.write_text(json.dumps(asdict(job), indent=2))
        started = time.perf_counter()
        procs = [
            subprocess.Popen([sys.executable, "-m", "plantdx.train_resident", str(job_path), str(i), spec["name"]])
            for spec in phase["candidates"]
        ]
        codes = [p.wait() for p in procs]
        results = {}
        for spec, code in zip(phase["candidates"], codes, strict=True):
            path = work / f"{spec['name']}.json"
            if code == 0 and path.is_file():
                results[spec["name"]] = json.loads(path.read_text())
            else:
                log.warning(f"candidate {spec['name']} failed (exit {code})")
                summary["failed"].append(spec["name"])
        done.update(results)
        names = list(results)
        if len(names) > 1:
            probs = np.mean([softmax(np.load(work / f"{n}_val_logits.npy")) for n in names], axis=0)
            ens = {"members": names, **val_scores(np.log(probs + 1e-12), val_labels, job.classes)}
        else:
            ens = None
        summary["phases"].append(
            {"wall_s": round(time.perf_counter() - started, 1), "results": results, "ensemble": ens}
        )
        for n, r in results.items():
            log.info(
                f"phase {i} {n}: {r['epochs']} epochs in {r['wall_s']:.0f} s, val acc {r['val_acc']:.4f} "
                f"macro-F1 {r['val_f1_macro']:.4f}"
            )
        if ens:
            log.info(f"phase {i} ensemble: val acc {ens['val_acc']:.4f} macro-F1 {ens['val_f1_macro']:.4f}")
    (Path(job.out) / "resident.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    if len(argv) == 1:
        path = Path(argv[0])
        summary = run_job(Job.load(path), path.with_suffix(".resolved.json"))
        return 1 if summary["failed"] else 0
    if len(argv) == 3:
        torch.set_num_threads(int(os.environ.get("PLANTDX_RESIDENT_THREADS", "2")))
        run_candidate(Job.load(Path(argv[0])), int(argv[1]), argv[2])
        return 0
    print("usage: python -m plantdx.train_resident JOB.json", file=sys.stderr)  # noqa: T201
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
