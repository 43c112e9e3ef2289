"""Instance-level scores for livers that appear as several separate regions in one slice.

The study's hardest slices show the liver as two (or more) separate regions;
a semantic mask can cover both and still merge or miss one. These functions
say whether each true region was found as its own instance.
"""

from __future__ import annotations

import numpy as np

from liverrt.errors import InputError
from liverrt.metrics.postprocess import label


def region_count(mask: np.ndarray, min_area: int = 1) -> np.ndarray:
    """Per-slice number of 8-connected regions of at least ``min_area`` pixels in ``(N, H, W)``."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise InputError(f"region_count: got shape {m.shape}, expected (H, W) or (N, H, W).")
    labels, counts = label(m, 8, per_slice=True)
    out = np.zeros(m.shape[0], np.int64)
    for i in range(m.shape[0]):
        if counts[i]:
            areas = np.bincount(labels[i].ravel(), minlength=int(counts[i]) + 1)[1:]
            out[i] = int((areas >= min_area).sum())
    return out


def instance_iou_matrix(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU between every predicted ``(P, H, W)`` and true ``(T, H, W)`` instance mask -> ``(P, T)``."""
    p, t = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if len(p) == 0 or len(t) == 0:
        return np.zeros((len(p), len(t)))
    if p.shape[1:] != t.shape[1:]:
        raise InputError(f"instance masks: got {p.shape} and {t.shape}, expected (P, H, W) and (T, H, W).")
    p = p.reshape(len(p), -1).astype(np.float64)
    t = t.reshape(len(t), -1).astype(np.float64)
    inter = p @ t.T
    union = p.sum(1)[:, None] + t.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def match_instances(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict[str, int]:
    """Greedy one-to-one matching by decreasing IoU (pairs with IoU >= ``iou_threshold``).

    Returns ``{"matched", "pred", "truth"}`` counts. With IoU > 0.5 a match is
    unique whatever the order, so greedy equals optimal there.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise InputError(f"iou_threshold: got {iou_threshold}, expected a value in (0, 1].")
    iou = instance_iou_matrix(pred, truth)
    matched = 0
    if iou.size:
        pairs = np.argwhere(iou >= iou_threshold)
        order = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")
        used_p, used_t = set(), set()
        for i, j in pairs[order]:
            if i not in used_p and j not in used_t:
                used_p.add(int(i))
                used_t.add(int(j))
                matched += 1
    return {"matched": matched, "pred": int(iou.shape[0]), "truth": int(iou.shape[1])}


def instances_from_labels(labels: np.ndarray) -> np.ndarray:
    """An ``(H, W)`` label map (0 = background) -> ``(K, H, W)`` bool masks of its non-zero labels."""
    ids = [i for i in np.unique(labels) if i != 0]
    if not ids:
        return np.zeros((0, *labels.shape), bool)
    return np.stack([labels == i for i in ids])
