"""Training loop for the study's U-Net (Dice + BCE, Adam, augmentations)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from liverrt.artifacts.checkpoint import read_checkpoint
from liverrt.data.preprocess import PreprocessSpec
from liverrt.data.splits import case_split
from liverrt.data.volume import Volume
from liverrt.device import resolve_device  # noqa: F401  (re-exported, as above)
from liverrt.errors import InputError
from liverrt.models import build
from liverrt.training.augment import augment_batch
from liverrt.training.loop import (  # noqa: F401  (re-exported: the U-Net API predates the shared loop)
    Progress,
    Task,
    TrainConfig,
    TrainResult,
    fit,
    lr_factor,
)
from liverrt.training.losses import dice_bce_loss
from liverrt.training.slices import build_slice_set, volume_scores

log = logging.getLogger(__name__)


class UNetTask(Task):
    """The study's U-Net: Dice + BCE on augmented slices, validated by volume Mask IoU."""

    name = "unet"
    model_name = "unet_paper"
    monitor = "val_mask_iou"
    curve_metrics = ("val_mask_iou", "val_dice")

    def __init__(self, train_vols: list[Volume], val_vols: list[Volume], spec: PreprocessSpec, split: dict,
                 config: TrainConfig) -> None:
        super().__init__(spec, split)
        self.config = config
        self.model_name = config.model
        self.train_set = build_slice_set(train_vols, spec)
        self.val_set = build_slice_set(val_vols, spec)
        if not bool((self.train_set.y > 0).any()):
            raise InputError(f"The {len(train_vols)} training case(s) have no liver in any slice; expected "
                             "annotated slices (check --label, or the mask files).")

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return build(config.model, width_scale=config.width_scale, dropout_scale=config.dropout_scale,
                     in_channels=self.spec.channels, **config.model_options)

    def __len__(self) -> int:
        return len(self.train_set)

    def batch(self, index, generator, device, memory_format):
        x, y = augment_batch(self.train_set.x[index], self.train_set.y[index], self.config.augment, generator)
        return (x.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                y.to(device, non_blocking=True))

    def loss(self, model, batch):
        x, y = batch
        return dice_bce_loss(model(x).float(), y, bce_weight=self.config.bce_weight), {}

    def validate(self, model, device):
        prob = predict_slices(model, self.val_set.x, device, max(self.config.batch_size, 8))
        scores = volume_scores(prob >= self.config.threshold, self.val_set.y[:, 0].numpy() >= 0.5,
                               self.val_set.case_index.numpy(), len(self.val_set.case_ids))
        return {"val_mask_iou": scores["mask_iou"], "val_dice": scores["dice"],
                "val_slice_mask_iou": scores["slice_mask_iou"]}

    def describe(self) -> dict:
        return {"bce_weight": self.config.bce_weight}


@torch.no_grad()
def predict_slices(model: torch.nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> np.ndarray:
    """Probabilities (N, S, S) float32 for (N, 1, S, S) inputs, in eval mode."""
    model.eval()
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(torch.sigmoid(model(x[i : i + batch_size].to(device)).float())[:, 0].cpu())
    return torch.cat(out).numpy()


def split_volumes(volumes: list[Volume], val_volumes: list[Volume] | None, config: TrainConfig,
                  split: dict | None = None) -> tuple[list[Volume], list[Volume], dict]:
    """Training and validation cases: ``val_volumes``, a stored ``split``, or a seeded case-level split."""
    if val_volumes is not None:
        train_vols, val_vols = list(volumes), list(val_volumes)
        overlap = {v.case_id for v in train_vols} & {v.case_id for v in val_vols}
        if overlap:
            raise InputError(f"Cases {sorted(overlap)} are in both training and validation; expected disjoint cases.")
    elif split is not None:
        by_id = {v.case_id: v for v in volumes}
        missing = [c for c in split["train"] + split["val"] if c not in by_id]
        if missing:
            raise InputError(f"The stored split names cases {missing[:5]} that are not in the data; expected the "
                             "same dataset as the run being resumed.")
        train_vols = [by_id[c] for c in split["train"]]
        val_vols = [by_id[c] for c in split["val"]]
    else:
        ids = [v.case_id for v in volumes]
        train_ids, val_ids = case_split(ids, val_fraction=config.val_fraction, seed=config.seed)
        train_vols = [v for v in volumes if v.case_id in train_ids]
        val_vols = [v for v in volumes if v.case_id in val_ids]
    split = {"train": [v.case_id for v in train_vols], "val": [v.case_id for v in val_vols]}
    log.info("split: %d train cases, %d val cases", len(train_vols), len(val_vols))
    return train_vols, val_vols, split


def stored_split(out_dir: Path) -> dict | None:
    """The case split of the run in ``out_dir`` (from its last.pt), for ``--resume``."""
    path = Path(out_dir) / "last.pt"
    if not path.is_file():
        raise InputError(f"--resume: {path} does not exist; expected the last.pt of an earlier run in this folder.")
    split = read_checkpoint(path).get("split") or None
    return split if split and split.get("train") else None


def train_unet(
    volumes: list[Volume],
    out_dir: Path,
    *,
    spec: PreprocessSpec,
    config: TrainConfig | None = None,
    val_volumes: list[Volume] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> TrainResult:
    """Train the U-Net; writes ``best.pt``, ``last.pt``, ``train_log.csv`` and ``curves.png`` into ``out_dir``.

    Cases are split by case id (``config.val_fraction``, ``config.seed``)
    unless ``val_volumes`` is given; a resumed run reuses its stored split.
    The best checkpoint is the one with the highest validation volume Mask IoU.
    """
    config = config or TrainConfig()
    split = stored_split(out_dir) if resume and val_volumes is None else None
    train_vols, val_vols, split = split_volumes(volumes, val_volumes, config, split)
    task = UNetTask(train_vols, val_vols, spec, split, config)
    return fit(task, out_dir, config, resume=resume, progress=progress)
