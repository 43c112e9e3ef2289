"""Segmentation metrics (first version: overlap scores).

Masks are bool (or 0/1 uint8) arrays of shape ``(H, W)`` or ``(D, H, W)``;
prediction and ground truth must have the same shape (never broadcast).

* ``mask_iou`` = |P∩G| / |P∪G|, 1.0 when both are empty;
* ``dice`` = 2|P∩G| / (|P| + |G|), 1.0 when both are empty.
"""

from __future__ import annotations

import numpy as np

from liverrt.errors import InputError

__all__ = ["as_mask", "mask_iou", "dice", "overlap_counts", "per_slice_counts"]


def as_mask(arr: np.ndarray, name: str) -> np.ndarray:
    """Validate a binary mask and return it as bool (no copy for bool input)."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "uif":
        raise InputError(f"{name}: got dtype {arr.dtype}, expected a bool or 0/1 integer mask.")
    if arr.size and not np.isin(arr, (0, 1)).all():
        values = np.unique(arr)[:5]
        raise InputError(f"{name}: got values {values.tolist()}..., expected a binary mask of 0/1.")
    return arr.astype(bool)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"Shape mismatch: pred {p.shape} vs gt {g.shape}; expected equal shapes.")
    if p.ndim not in (2, 3):
        raise InputError(f"pred/gt: got {p.ndim} dimensions, expected (H, W) or (D, H, W).")
    return p, g


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` voxel counts of a prediction against the ground truth."""
    p, g = _check_pair(pred, gt)
    tp = int(np.count_nonzero(p & g))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(g)) - tp


def per_slice_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(D, 3)`` int64 array of per-slice ``(tp, fp, fn)`` for ``(D, H, W)`` masks."""
    p, g = _check_pair(pred, gt)
    if p.ndim != 3:
        raise InputError(f"per_slice_counts: got shape {p.shape}, expected (D, H, W).")
    tp = np.count_nonzero(p & g, axis=(1, 2))
    fp = np.count_nonzero(p, axis=(1, 2)) - tp
    fn = np.count_nonzero(g, axis=(1, 2)) - tp
    return np.stack([tp, fp, fn], axis=1).astype(np.int64)


def iou_from_counts(tp: float, fp: float, fn: float) -> float:
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def dice_from_counts(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P∪G| over all voxels; 1.0 when both masks are empty."""
    return iou_from_counts(*overlap_counts(pred, gt))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|) over all voxels; 1.0 when both masks are empty."""
    return dice_from_counts(*overlap_counts(pred, gt))
