"""Volumes -> preprocessed slice tensors for training and validation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from liverrt.data.preprocess import PreprocessSpec, mask_to_input, to_input
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.metrics import dice_from_counts, iou_from_counts, per_slice_counts


@dataclass
class SliceSet:
    """All slices of some cases on the network grid.

    ``x``: (N, 1, S, S) float32 in [0, 1]; ``y``: (N, 1, S, S) float32 0/1;
    ``case_index``: (N,) index into ``case_ids``.
    """

    x: torch.Tensor
    y: torch.Tensor
    case_index: torch.Tensor
    case_ids: list[str]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def build_slice_set(volumes: list[Volume], spec: PreprocessSpec) -> SliceSet:
    xs, ys, idx = [], [], []
    for i, vol in enumerate(volumes):
        if vol.mask is None:
            raise InputError(f"Case {vol.case_id} ({vol.source}) has no liver mask; training needs labelled cases.")
        x, placement = to_input(vol.image, vol.intensity, spec, vol.spacing)
        xs.append(torch.from_numpy(x))
        ys.append(torch.from_numpy(mask_to_input(vol.mask, placement)))
        idx.append(torch.full((x.shape[0],), i, dtype=torch.long))
    if not xs:
        raise InputError("No labelled cases to build a training set from.")
    return SliceSet(torch.cat(xs), torch.cat(ys), torch.cat(idx), [v.case_id for v in volumes])


def volume_scores(pred: np.ndarray, target: np.ndarray, case_index: np.ndarray, n_cases: int) -> dict[str, float]:
    """Mean over cases of volume Mask IoU and Dice (both empty -> 1), plus slice-mean IoU.

    ``pred``/``target``: (N, S, S) bool on the network grid. The slice mean
    covers slices where prediction or truth is non-empty.
    """
    counts = per_slice_counts(pred, target)  # (N, 3) tp, fp, fn
    per_case = [counts[case_index == c].sum(axis=0) for c in range(n_cases)]
    ious = [iou_from_counts(*c) for c in per_case]
    dices = [dice_from_counts(*c) for c in per_case]
    nz = counts.sum(axis=1) > 0
    slice_iou = float(np.mean([iou_from_counts(*c) for c in counts[nz]])) if nz.any() else 1.0
    return {"mask_iou": float(np.mean(ious)), "dice": float(np.mean(dices)), "slice_mask_iou": slice_iou}
