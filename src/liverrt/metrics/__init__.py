"""Segmentation metrics, surface distances and mask post-processing.

Masks are bool (or 0/1 integer) arrays of shape ``(H, W)`` or ``(D, H, W)``;
prediction P and ground truth G must have the same shape (never broadcast).
Bad input raises :class:`liverrt.errors.InputError`. The heavy lifting is done
by the Numba kernels in :mod:`liverrt.kernels`, except connected components and
keep-largest, which call ``scipy.ndimage.label`` (as fast or faster on 512x512x200
volumes: benchmarks/RESULTS.md, 2026-12-06).

Definitions (details and empty-mask values in each module's docstring):

* overlap (:mod:`.overlap`, over all voxels): ``mask_iou`` = |P∩G|/|P∪G|,
  ``dice`` = 2|P∩G|/(|P|+|G|), ``f_measure`` = pixel F1 (= Dice; the study's
  "F-measure" column), each 1.0 when both are empty; ``ravd`` =
  |ΣG − ΣP|/ΣG × 100, 0 when both are empty, inf when only G is;
* per slice (:mod:`.boundary`; 3D input → mean over slices where P or G is
  non-empty): ``boundary_iou`` (band width d = max(1, round(0.02 × diag))),
  ``trimap_iou`` (band of chessboard width d around G's 4-contour),
  ``boundary_f`` (DAVIS, τ = max(1, ceil(0.008 × diag)));
* surface distances in mm (:mod:`.surface`, CHAOS surfaces, explicit
  ``spacing``): ``assd``, ``mssd``, ``hd95``; 0 both empty, inf one empty;
* post-processing (:mod:`.postprocess`): ``label``, ``largest_components``, ``smooth_z``,
  ``fill_holes``;
* :class:`MetricAccumulator` for datasets (``update`` / ``compute`` / ``reset``).
"""

from __future__ import annotations

from liverrt.metrics._validate import as_mask
from liverrt.metrics.accumulator import VOLUME_METRICS, MetricAccumulator, reduce_mean
from liverrt.metrics.boundary import (
    SLICE_COUNT_FIELDS,
    SLICE_SCORES,
    band_width,
    boundary_band,
    boundary_f,
    boundary_iou,
    boundary_tolerance,
    contour,
    slice_counts,
    slice_mean,
    slice_metrics,
    slice_scores,
    table6_scores,
    trimap_iou,
)
from liverrt.metrics.overlap import (
    dice,
    dice_from_counts,
    f_measure,
    iou_from_counts,
    mask_iou,
    overlap_counts,
    per_slice_counts,
    per_slice_dice,
    ravd,
    ravd_from_counts,
)
from liverrt.metrics.postprocess import (
    fill_holes,
    label,
    label_by_area,
    largest_components,
    smooth_z,
)
from liverrt.metrics.surface import (
    SurfaceDistances,
    assd,
    hd95,
    mssd,
    surface,
    surface_distances,
)

__all__ = [
    "SLICE_COUNT_FIELDS",
    "SLICE_SCORES",
    "VOLUME_METRICS",
    "MetricAccumulator",
    "SurfaceDistances",
    "as_mask",
    "assd",
    "band_width",
    "boundary_band",
    "boundary_f",
    "boundary_iou",
    "boundary_tolerance",
    "contour",
    "dice",
    "dice_from_counts",
    "per_slice_dice",
    "f_measure",
    "fill_holes",
    "hd95",
    "iou_from_counts",
    "label",
    "label_by_area",
    "largest_components",
    "smooth_z",
    "mask_iou",
    "mssd",
    "overlap_counts",
    "per_slice_counts",
    "ravd",
    "ravd_from_counts",
    "reduce_mean",
    "slice_counts",
    "slice_mean",
    "slice_metrics",
    "slice_scores",
    "surface",
    "surface_distances",
    "table6_scores",
    "trimap_iou",
]
