"""Surface distances in millimetres (CHAOS convention): ASSD, MSSD, HD95.

* **surface** of a mask M: ``M xor erosion(M)`` with the face-connected
  structuring element (4-neighbours in 2D, 6 in 3D), voxels outside the array
  counted as foreground (``binary_erosion(..., border_value=1)``): a mask
  touching the array edge has no surface along that edge.
* distances are Euclidean between voxel centres, in mm, with ``spacing`` =
  one value per array axis (``(dz, dy, dx)`` or ``(dy, dx)``), computed with
  an exact distance transform.
* ``pred_to_gt``: for every surface voxel of P, the distance to the nearest
  surface voxel of G (raster order); ``gt_to_pred`` the reverse.
* ``assd`` = mean of both directed sets pooled; ``mssd`` = their maximum;
  ``hd95`` = max of the two directed 95th percentiles (NumPy's default linear
  interpolation).
* Both surfaces empty (both masks empty) → 0.0; exactly one empty → ``inf``.
  A mask filling the whole array has an empty surface under this convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from liverrt.kernels.edt import surface_distances_3d
from liverrt.kernels.morphology import surface_3d
from liverrt.metrics._validate import as_stack, check_pair, check_single, check_spacing

__all__ = ["SurfaceDistances", "assd", "hd95", "mssd", "surface", "surface_distances"]


def surface(mask: np.ndarray) -> np.ndarray:
    """Bool CHAOS surface of a 2D or 3D mask (outside the array counts as foreground)."""
    m = check_single(mask)
    return surface_3d(as_stack(m)).view(bool).reshape(m.shape)


@dataclass(frozen=True, eq=False)
class SurfaceDistances:
    """Both directed surface-distance sets of one pair, and the scores derived from them.

    Attributes:
        pred_to_gt: float64 ``(n_pred_surface,)`` mm, ``inf`` each when G has no surface.
        gt_to_pred: float64 ``(n_gt_surface,)`` mm, ``inf`` each when P has no surface.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray

    @classmethod
    def compute(
        cls, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
    ) -> SurfaceDistances:
        """One distance pass for ``(H, W)`` or ``(D, H, W)`` masks; ``spacing`` in mm per axis."""
        p, g = check_pair(pred, gt)
        sp = check_spacing(spacing, p.ndim)
        a, b, _, _ = surface_distances_3d(as_stack(p), as_stack(g), sp)
        return cls(a, b)

    @property
    def _state(self) -> str:
        n_p, n_g = self.pred_to_gt.size, self.gt_to_pred.size
        if n_p == 0 and n_g == 0:
            return "both_empty"
        if n_p == 0 or n_g == 0:
            return "one_empty"
        return "ok"

    @property
    def assd(self) -> float:
        """Mean of both directed sets pooled (mm)."""
        state = self._state
        if state != "ok":
            return 0.0 if state == "both_empty" else float("inf")
        total = self.pred_to_gt.sum() + self.gt_to_pred.sum()
        return float(total / (self.pred_to_gt.size + self.gt_to_pred.size))

    @property
    def mssd(self) -> float:
        """Maximum over both directed sets (mm)."""
        state = self._state
        if state != "ok":
            return 0.0 if state == "both_empty" else float("inf")
        return float(max(self.pred_to_gt.max(), self.gt_to_pred.max()))

    @property
    def hd95(self) -> float:
        """Max of the two directed 95th percentiles (mm, linear interpolation)."""
        state = self._state
        if state != "ok":
            return 0.0 if state == "both_empty" else float("inf")
        return float(max(np.percentile(self.pred_to_gt, 95), np.percentile(self.gt_to_pred, 95)))

    def scores(self) -> dict[str, float]:
        """``{"assd", "mssd", "hd95"}`` in mm."""
        return {"assd": self.assd, "mssd": self.mssd, "hd95": self.hd95}


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """``(pred_to_gt, gt_to_pred)`` directed surface distances in mm (see module docstring)."""
    sd = SurfaceDistances.compute(pred, gt, spacing)
    return sd.pred_to_gt, sd.gt_to_pred


def assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Average symmetric surface distance (mm); 0.0 both empty, ``inf`` one empty."""
    return SurfaceDistances.compute(pred, gt, spacing).assd


def mssd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Maximum symmetric surface distance (mm, Hausdorff); 0.0 both empty, ``inf`` one empty."""
    return SurfaceDistances.compute(pred, gt, spacing).mssd


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (mm); 0.0 both empty, ``inf`` one empty."""
    return SurfaceDistances.compute(pred, gt, spacing).hd95
