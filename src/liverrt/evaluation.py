"""Compare predicted masks with ground truth, case by case (``liverrt eval``).

Predictions and ground truth are NIfTI masks, PNG mask folders, case folders
holding either, or roots of such case folders; cases are matched by name.
JSON layout::

    {"cases": [{"id", "volume": {"dice", "mask_iou"}, "slices": {"mask_iou", "dice", "n"}}],
     "mean": {"volume": {...}, "slices": {...}}, "unmatched": {...}}

Slice metrics are averaged over slices where prediction or truth is non-empty.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from liverrt.data.sources import find_masks, read_mask
from liverrt.errors import InputError
from liverrt.metrics import dice_from_counts, iou_from_counts, overlap_counts, per_slice_counts


def case_metrics(pred: np.ndarray, gt: np.ndarray) -> dict:
    if pred.shape != gt.shape:
        raise InputError(f"Shape mismatch: pred {pred.shape} vs gt {gt.shape}; expected equal shapes.")
    tp, fp, fn = overlap_counts(pred, gt)
    counts = per_slice_counts(pred, gt)
    nz = counts.sum(axis=1) > 0
    s_iou = [iou_from_counts(*c) for c in counts[nz]]
    s_dice = [dice_from_counts(*c) for c in counts[nz]]
    return {
        "volume": {"dice": dice_from_counts(tp, fp, fn), "mask_iou": iou_from_counts(tp, fp, fn)},
        "slices": {
            "mask_iou": float(np.mean(s_iou)) if s_iou else 1.0,
            "dice": float(np.mean(s_dice)) if s_dice else 1.0,
            "n": int(nz.sum()),
        },
    }


def _nanmean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def evaluate(pred: Path, gt: Path) -> dict:
    """Match cases by name and compute per-case and mean metrics."""
    preds, gts = find_masks(pred), find_masks(gt)
    single = len(preds) == 1 and len(gts) == 1  # one volume against one volume: names need not match
    if single:
        (gid, gpath), ppath = next(iter(gts.items())), next(iter(preds.values()))
        pairs = [(gid, ppath, gpath)]
    else:
        pairs = [(cid, preds[cid], gts[cid]) for cid in gts if cid in preds]
    if not pairs:
        raise InputError(
            f"No case names match between {pred} ({sorted(preds)[:5]}) and {gt} ({sorted(gts)[:5]}); "
            "expected the same case folder or file names."
        )
    cases = []
    for cid, ppath, gpath in pairs:
        p, g = read_mask(ppath, cid), read_mask(gpath, cid)
        if p.mask.shape != g.mask.shape:
            raise InputError(
                f"Case {cid}: prediction {ppath} has shape {p.mask.shape}, ground truth {gpath} has "
                f"{g.mask.shape}; expected equal shapes (D, H, W)."
            )
        cases.append({"id": cid, "pred": str(ppath), "gt": str(gpath), **case_metrics(p.mask, g.mask)})
    mean = {
        group: {k: _nanmean([c[group][k] for c in cases]) for k in cases[0][group] if k != "n"}
        for group in ("volume", "slices")
    }
    return {
        "cases": cases,
        "mean": mean,
        "unmatched": {"pred": [] if single else sorted(set(preds) - set(gts)),
                      "gt": [] if single else sorted(set(gts) - set(preds))},
    }


def markdown_table(result: dict) -> str:
    lines = ["| case | Dice (vol) | Mask IoU (vol) | Mask IoU (slice mean) | slices |", "|---|---|---|---|---|"]
    for c in result["cases"]:
        lines.append(f"| {c['id']} | {c['volume']['dice']:.4f} | {c['volume']['mask_iou']:.4f} | "
                     f"{c['slices']['mask_iou']:.4f} | {c['slices']['n']} |")
    m = result["mean"]
    lines.append(f"| **mean** | {m['volume']['dice']:.4f} | {m['volume']['mask_iou']:.4f} | "
                 f"{m['slices']['mask_iou']:.4f} | |")
    return "\n".join(lines)
