"""Dataset-level accumulation: per-case and per-slice scores, NaN/inf-aware means.

Two stages: :meth:`MetricAccumulator.update` counts (per-slice integer counts
and one surface-distance pass per case); :meth:`MetricAccumulator.compute`
derives every score from what was stored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from liverrt.errors import InputError
from liverrt.metrics._validate import check_pair, check_spacing
from liverrt.metrics.boundary import SLICE_SCORES, slice_counts, slice_mean, slice_scores
from liverrt.metrics.overlap import dice_from_counts, iou_from_counts, ravd_from_counts
from liverrt.metrics.surface import SurfaceDistances

__all__ = ["MetricAccumulator", "VOLUME_METRICS", "reduce_mean"]

VOLUME_METRICS: tuple[str, ...] = ("dice", "mask_iou", "ravd", "assd", "mssd", "hd95")

_INF_REASON = {
    "ravd": "inf: ground truth empty, prediction not",
    "assd": "inf: exactly one of prediction/ground truth has no surface",
    "mssd": "inf: exactly one of prediction/ground truth has no surface",
    "hd95": "inf: exactly one of prediction/ground truth has no surface",
}


def reduce_mean(
    values: Sequence[float], ids: Sequence[str], *, inf_reason: str = "inf"
) -> tuple[float, list[dict[str, str]]]:
    """Mean of the finite ``values`` and the excluded ones as ``{"case_id", "reason"}``.

    NaN and ±inf are left out of the mean and listed; the mean is NaN when no
    value is finite.
    """
    kept: list[float] = []
    excluded: list[dict[str, str]] = []
    for cid, v in zip(ids, values, strict=True):
        v = float(v)
        if math.isnan(v):
            excluded.append({"case_id": cid, "reason": "nan: undefined"})
        elif math.isinf(v):
            excluded.append({"case_id": cid, "reason": inf_reason})
        else:
            kept.append(v)
    return (float(np.mean(kept)) if kept else float("nan")), excluded


@dataclass(frozen=True, eq=False)
class _Case:
    counts: np.ndarray  # (N, 12) int64 slice counts
    surface: dict[str, float]


class MetricAccumulator:
    """Collects cases and reports volume, slice-averaged and per-slice metrics.

    Args:
        dilation_ratio: Boundary-IoU band ratio (band width d, see ``boundary``).
        trimap_width: trimap half-width in pixels (``None`` = d).
        tolerance_ratio: boundary-F tolerance ratio.
        surface: compute ASSD/MSSD/HD95 (the slowest part); when ``False``
            those are NaN and excluded from the means.
    """

    def __init__(
        self,
        *,
        dilation_ratio: float = 0.02,
        trimap_width: int | None = None,
        tolerance_ratio: float = 0.008,
        surface: bool = True,
    ) -> None:
        self.dilation_ratio = dilation_ratio
        self.trimap_width = trimap_width
        self.tolerance_ratio = tolerance_ratio
        self.surface = surface
        self._cases: dict[str, _Case] = {}

    def __len__(self) -> int:
        return len(self._cases)

    def reset(self) -> None:
        """Forget every case."""
        self._cases.clear()

    def update(
        self, case_id: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
    ) -> None:
        """Count one case: ``(H, W)`` or ``(D, H, W)`` masks, ``spacing`` in mm per axis."""
        case_id = str(case_id)
        if case_id in self._cases:
            raise InputError(
                f"case_id {case_id!r}: already added; expected each case once (or reset())."
            )
        p, g = check_pair(pred, gt)
        check_spacing(spacing, p.ndim)
        counts = slice_counts(
            p,
            g,
            dilation_ratio=self.dilation_ratio,
            trimap_width=self.trimap_width,
            tolerance_ratio=self.tolerance_ratio,
        )
        if self.surface:
            surf = SurfaceDistances.compute(p, g, spacing).scores()
        else:
            surf = {"assd": math.nan, "mssd": math.nan, "hd95": math.nan}
        self._cases[case_id] = _Case(counts, surf)

    def compute(self) -> dict:
        """Scores of every case and their means.

        Returns a dict with:

        * ``"cases"``: ``{case_id: {"volume": {dice, mask_iou, ravd, assd, mssd,
          hd95}, "slices": {mask_iou, dice, f_measure, boundary_iou,
          trimap_iou, boundary_f, n}}}``; slice metrics are means over the
          ``n`` slices where P or G is non-empty (1.0 when ``n == 0``);
        * ``"slices"``: one row per slice ``{case_id, slice, counted, <scores>}``;
        * ``"mean"``: ``{"volume": ..., "slices": ...}`` means over cases and
          ``"slices_pooled"``: means over all counted slices of all cases;
        * ``"excluded"``: ``{"volume.hd95": [{"case_id", "reason"}], ...}``,
          the values left out of a mean (NaN or inf), with the reason;
        * ``"n_cases"``.
        """
        ids = list(self._cases)
        cases: dict[str, dict] = {}
        rows: list[dict] = []
        pooled: dict[str, list[np.ndarray]] = {k: [] for k in SLICE_SCORES}
        for cid in ids:
            rec = self._cases[cid]
            tp, fp, fn = (int(v) for v in rec.counts[:, :3].sum(axis=0))
            volume = {
                "dice": dice_from_counts(tp, fp, fn),
                "mask_iou": iou_from_counts(tp, fp, fn),
                "ravd": ravd_from_counts(tp, fp, fn),
                **rec.surface,
            }
            s = slice_scores(rec.counts)
            nonempty = s["nonempty"]
            slices: dict[str, float] = {k: slice_mean(s[k], nonempty) for k in SLICE_SCORES}
            slices["n"] = int(nonempty.sum())
            cases[cid] = {"volume": volume, "slices": slices}
            for i in range(rec.counts.shape[0]):
                row = {"case_id": cid, "slice": i, "counted": bool(nonempty[i])}
                row.update({k: float(s[k][i]) for k in SLICE_SCORES})
                rows.append(row)
            for k in SLICE_SCORES:
                pooled[k].append(s[k][nonempty])
        mean: dict[str, dict[str, float]] = {"volume": {}, "slices": {}, "slices_pooled": {}}
        excluded: dict[str, list[dict[str, str]]] = {}
        for k in VOLUME_METRICS:
            vals = [cases[c]["volume"][k] for c in ids]
            mean["volume"][k], ex = reduce_mean(vals, ids, inf_reason=_INF_REASON.get(k, "inf"))
            if ex:
                excluded[f"volume.{k}"] = ex
        for k in SLICE_SCORES:
            vals = [cases[c]["slices"][k] for c in ids]
            mean["slices"][k], ex = reduce_mean(vals, ids)
            if ex:
                excluded[f"slices.{k}"] = ex
            allv = np.concatenate(pooled[k]) if pooled[k] else np.empty(0)
            mean["slices_pooled"][k] = float(allv.mean()) if allv.size else float("nan")
        mean["slices_pooled"]["n"] = int(sum(cases[c]["slices"]["n"] for c in ids))
        return {
            "cases": cases,
            "slices": rows,
            "mean": mean,
            "excluded": excluded,
            "n_cases": len(ids),
        }
