"""Training loop for the study's U-Net (Dice + BCE, Adam, augmentations)."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from liverrt.data.preprocess import PreprocessSpec
from liverrt.data.splits import case_split
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.models import build
from liverrt.training.augment import AugmentConfig, augment_batch
from liverrt.training.checkpoint import save_checkpoint
from liverrt.training.losses import dice_bce_loss
from liverrt.training.slices import SliceSet, build_slice_set, volume_scores

log = logging.getLogger(__name__)

#: progress callback: (stage, done, total, info)
Progress = Callable[[str, int, int, dict], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a U-Net training run (stored in the checkpoint)."""

    model: str = "unet_paper"
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    schedule: str = "cosine"  # "cosine" (linear warm-up, cosine decay to 5% of lr) or "constant"
    warmup_steps: int = 50
    weight_decay: float = 0.0
    bce_weight: float = 1.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    threshold: float = 0.5
    max_minutes: float | None = None
    steps_per_epoch: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    width_scale: float | None = None
    dropout_scale: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    best_metrics: dict
    history: list[dict]
    split: dict
    seconds: float


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate after ``step`` optimiser steps."""
    if config.schedule not in ("cosine", "constant"):
        raise InputError(f"schedule: got {config.schedule!r}, expected 'cosine' or 'constant'.")
    warmup = min(config.warmup_steps, max(total_steps // 10, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        t = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    return factor


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"Device {name!r} requested but CUDA is not available here; expected 'cpu' or 'auto'.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise InputError(f"Unknown device {name!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'.") from None


@torch.no_grad()
def predict_slices(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> np.ndarray:
    """Probabilities (N, S, S) float32 for (N, 1, S, S) inputs, in eval mode."""
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(torch.sigmoid(model(x[i : i + batch_size].to(device)))[:, 0].float().cpu())
    return torch.cat(out).numpy()


def evaluate_slices(model: torch.nn.Module, val: SliceSet, device: torch.device, cfg: TrainConfig) -> dict[str, float]:
    prob = predict_slices(model, val.x, device, max(cfg.batch_size, 8))
    return volume_scores(prob >= cfg.threshold, val.y[:, 0].numpy() >= 0.5, val.case_index.numpy(), len(val.case_ids))


def train_unet(
    volumes: list[Volume],
    out_dir: Path,
    *,
    spec: PreprocessSpec,
    config: TrainConfig = TrainConfig(),
    val_volumes: list[Volume] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the U-Net; writes ``best.pt``, ``last.pt`` and ``train_log.csv`` into ``out_dir``.

    Cases are split by case id (``config.val_fraction``, ``config.seed``)
    unless ``val_volumes`` is given. The best checkpoint is the one with the
    highest validation volume Mask IoU.
    """
    if config.lr <= 0 or config.epochs < 1 or config.batch_size < 1:
        raise InputError(
            f"TrainConfig: got lr={config.lr}, epochs={config.epochs}, batch_size={config.batch_size}; "
            "expected lr > 0 and at least one epoch and one slice per batch."
        )
    t_start = time.perf_counter()
    device = resolve_device(config.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)

    if val_volumes is None:
        ids = [v.case_id for v in volumes]
        train_ids, val_ids = case_split(ids, val_fraction=config.val_fraction, seed=config.seed)
        train_vols = [v for v in volumes if v.case_id in train_ids]
        val_vols = [v for v in volumes if v.case_id in val_ids]
    else:
        train_vols, val_vols = list(volumes), list(val_volumes)
        overlap = {v.case_id for v in train_vols} & {v.case_id for v in val_vols}
        if overlap:
            raise InputError(f"Cases {sorted(overlap)} are in both training and validation; expected disjoint cases.")
    split = {"train": [v.case_id for v in train_vols], "val": [v.case_id for v in val_vols]}
    log.info("split: %d train cases, %d val cases", len(train_vols), len(val_vols))

    train_set = build_slice_set(train_vols, spec)
    val_set = build_slice_set(val_vols, spec)
    model = build(config.model, width_scale=config.width_scale, dropout_scale=config.dropout_scale).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)

    n = len(train_set)
    steps = config.steps_per_epoch or max(1, n // config.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(config, steps * config.epochs))
    history: list[dict] = []
    best: dict = {"mask_iou": -1.0}
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    ckpt_meta = {"model_name": config.model, "spec": spec, "split": split, "train_config": config.to_dict()}
    deadline = None if config.max_minutes is None else t_start + 60.0 * config.max_minutes
    total_steps = steps * config.epochs

    for epoch in range(1, config.epochs + 1):
        model.train()
        t_epoch = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        losses = []
        for step in range(steps):
            idx = order[(step * config.batch_size) % n :][: config.batch_size]
            if idx.numel() < config.batch_size:  # wrap around for a full batch
                idx = torch.cat([idx, order[: config.batch_size - idx.numel()]])
            x, y = augment_batch(train_set.x[idx], train_set.y[idx], config.augment, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = dice_bce_loss(model(x), y, bce_weight=config.bce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress:
                progress("train", (epoch - 1) * steps + step + 1, total_steps, {"epoch": epoch, "loss": losses[-1]})
        scores = evaluate_slices(model, val_set, device, config)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "lr": opt.param_groups[0]["lr"],
            "val_mask_iou": scores["mask_iou"],
            "val_dice": scores["dice"],
            "val_slice_mask_iou": scores["slice_mask_iou"],
            "seconds": time.perf_counter() - t_epoch,
        }
        history.append(row)
        log.info(
            "epoch %d/%d loss %.4f val IoU %.4f Dice %.4f (%.1fs)",
            epoch, config.epochs, row["loss"], row["val_mask_iou"], row["val_dice"], row["seconds"],
        )
        metrics = {"epoch": epoch, **{k: v for k, v in row.items() if k.startswith("val_")}}
        if scores["mask_iou"] > best["mask_iou"]:
            best = {"mask_iou": scores["mask_iou"], **metrics}
            save_checkpoint(best_path, model, model_name=config.model, spec=spec, metrics=metrics,
                            split=split, train_config=ckpt_meta["train_config"])
        if progress:
            progress("epoch", epoch, config.epochs, row)
        if deadline is not None and time.perf_counter() > deadline and epoch < config.epochs:
            log.warning("time budget of %.1f min reached after epoch %d; stopping", config.max_minutes, epoch)
            break
    save_checkpoint(last_path, model, model_name=config.model, spec=spec, metrics=history[-1],
                    split=split, train_config=ckpt_meta["train_config"])
    _write_log(history, out_dir / "train_log.csv")
    return TrainResult(best_path, last_path, best, history, split, time.perf_counter() - t_start)


def _write_log(history: list[dict], path: Path) -> None:
    from liverrt.data.io import atomic_path

    with atomic_path(path, suffix=".csv") as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
