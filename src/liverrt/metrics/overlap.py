"""Overlap scores from voxel counts: IoU, Dice, pixel F-measure, RAVD.

For masks P (prediction) and G (ground truth), bool or 0/1, ``(H, W)`` or
``(D, H, W)``, counted over all voxels:

* ``mask_iou`` = |P∩G| / |P∪G|; both empty → 1.0;
* ``dice`` = 2|P∩G| / (|P| + |G|); both empty → 1.0;
* ``f_measure`` = pixel F1 = 2·precision·recall / (precision + recall), which
  equals Dice (the study's "F-measure" column tracks it); both empty → 1.0;
* ``ravd`` = |ΣG − ΣP| / ΣG × 100 (percent); G empty → 0.0 if P is empty,
  else ``inf``.
"""

from __future__ import annotations

import numpy as np

from liverrt.errors import InputError
from liverrt.kernels.counts import confusion_counts, confusion_counts_rows
from liverrt.metrics._validate import check_pair, u8


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` voxel counts of a prediction against the ground truth."""
    p, g = check_pair(pred, gt)
    tp, fp, fn = confusion_counts(u8(p).reshape(-1), u8(g).reshape(-1))
    return int(tp), int(fp), int(fn)


def per_slice_counts(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """``(D, 3)`` int64 array of per-slice ``(tp, fp, fn)`` for ``(D, H, W)`` masks."""
    p, g = check_pair(pred, gt)
    if p.ndim != 3:
        raise InputError(f"per_slice_counts: got shape {p.shape}, expected (D, H, W).")
    d = p.shape[0]
    return confusion_counts_rows(u8(p).reshape(d, -1), u8(g).reshape(d, -1))


def iou_from_counts(tp: float, fp: float, fn: float) -> float:
    """tp / (tp + fp + fn); 1.0 when the union is empty."""
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def dice_from_counts(tp: float, fp: float, fn: float) -> float:
    """2tp / (2tp + fp + fn); 1.0 when both masks are empty."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2 * tp / denom


def per_slice_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice of each slice of ``(D, H, W)`` masks, from :func:`per_slice_counts`; 1.0 where both are empty."""
    tp, fp, fn = per_slice_counts(pred, gt).T.astype(np.float64)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def ravd_from_counts(tp: float, fp: float, fn: float) -> float:
    """|ΣG − ΣP| / ΣG × 100; 0.0 when both are empty, ``inf`` when only G is."""
    vol_g = tp + fn
    vol_p = tp + fp
    if vol_g == 0:
        return 0.0 if vol_p == 0 else float("inf")
    return abs(vol_g - vol_p) / vol_g * 100.0


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """|P∩G| / |P∪G| over all voxels; 1.0 when both masks are empty."""
    return iou_from_counts(*overlap_counts(pred, gt))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """2|P∩G| / (|P|+|G|) over all voxels; 1.0 when both masks are empty."""
    return dice_from_counts(*overlap_counts(pred, gt))


def f_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    """Pixel F1 (= Dice) over all voxels; 1.0 when both masks are empty."""
    return dice_from_counts(*overlap_counts(pred, gt))


def ravd(pred: np.ndarray, gt: np.ndarray) -> float:
    """Relative absolute volume difference in percent, |ΣG − ΣP| / ΣG × 100.

    0.0 when both masks are empty; ``inf`` when only the ground truth is empty.
    """
    return ravd_from_counts(*overlap_counts(pred, gt))
