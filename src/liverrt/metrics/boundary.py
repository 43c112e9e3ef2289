"""Per-slice boundary metrics: Boundary IoU, Trimap IoU, boundary F (and the overlap scores).

Definitions for one 2D slice, masks P (prediction) and G (ground truth) of
shape ``(H, W)``, diagonal ``diag = sqrt(H² + W²)``:

* **boundary band** of a mask (Boundary IoU, Cheng et al., CVPR 2021): its
  pixels whose chessboard distance to the background is ``<= d``, the image
  border counting as background (the mask minus its erosion by a
  ``(2d+1)²`` square after zero padding), with
  ``d = max(1, round(dilation_ratio × diag))`` (Python's ``round``, as in
  boundary-iou-api; 14 for 512×512 at the default 0.02).
  ``boundary_iou`` = IoU of the two bands; both bands empty → 1.0.
* **contour** of a mask: its pixels with at least one 4-neighbour in the
  background, the image border counting as background.
* ``trimap_iou(width)``: T = pixels within chessboard distance ``width`` of G's
  contour (default ``width = d``); score = |P∩G∩T| / |(P∪G)∩T|; G empty → 1.0
  if P is empty, else 0.0.
* ``boundary_f`` (DAVIS style): ``τ = max(1, ceil(tolerance_ratio × diag))``
  (6 for 512×512 at the default 0.008); precision = share of P's contour
  pixels within Euclidean distance ``τ`` (``dy² + dx² <= τ²``) of a G contour
  pixel, recall the reverse; F = 2PR / (P + R), 0 when P = R = 0; both
  contours empty → 1.0, exactly one empty → 0.0.

For ``(D, H, W)`` input each slice is scored on its own (d, τ from ``(H, W)``)
and the functions return the mean over the slices where P or G is non-empty;
when there is no such slice the result is 1.0 (both empty). ``slice_metrics``
returns the per-slice values; ``slice_counts`` the integer counts they are
derived from (two stages: count once, derive every score from the counts).
"""

from __future__ import annotations

import math

import numpy as np

from liverrt.errors import InputError
from liverrt.kernels import morphology
from liverrt.kernels.pair import (
    DO_ALL,
    DO_BAND,
    DO_BOUNDARY_F,
    DO_TRIMAP,
    FIELDS,
    SCORES,
    byte_words,
    pair_counts_stack,
    scores_from_counts,
)
from liverrt.metrics._validate import as_stack, check_pair, check_single

__all__ = [
    "SLICE_COUNT_FIELDS",
    "SLICE_SCORES",
    "band_width",
    "boundary_band",
    "boundary_f",
    "boundary_iou",
    "boundary_tolerance",
    "contour",
    "slice_counts",
    "slice_mean",
    "slice_metrics",
    "slice_scores",
    "table6_scores",
    "trimap_iou",
]

SLICE_COUNT_FIELDS: tuple[str, ...] = FIELDS
SLICE_SCORES: tuple[str, ...] = SCORES


def _check_ratio(value: float, name: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name}: got {value!r}, expected a positive finite ratio.")
    return v


def _check_width(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise InputError(f"{name}: got {value!r}, expected an integer >= 0 (pixels).")
    return int(value)


def band_width(shape: tuple[int, ...], dilation_ratio: float = 0.02) -> int:
    """Boundary-IoU band width ``d = max(1, round(dilation_ratio × diag))`` of a slice shape."""
    h, w = shape[-2:]
    return max(1, int(round(_check_ratio(dilation_ratio, "dilation_ratio") * math.hypot(h, w))))


def boundary_tolerance(shape: tuple[int, ...], tolerance_ratio: float = 0.008) -> int:
    """Boundary-F tolerance ``τ = max(1, ceil(tolerance_ratio × diag))`` in pixels."""
    h, w = shape[-2:]
    return max(
        1, int(math.ceil(_check_ratio(tolerance_ratio, "tolerance_ratio") * math.hypot(h, w)))
    )


def _counts(
    pred: np.ndarray,
    gt: np.ndarray,
    flags: int,
    dilation_ratio: float,
    trimap_width: int | None,
    tolerance_ratio: float,
) -> np.ndarray:
    p, g = check_pair(pred, gt)
    d = band_width(p.shape, dilation_ratio)
    width = d if trimap_width is None else _check_width(trimap_width, "trimap width")
    tau = boundary_tolerance(p.shape, tolerance_ratio)
    p8, g8 = as_stack(p), as_stack(g)
    return pair_counts_stack(p8, g8, byte_words(p8), byte_words(g8), d, width, tau, flags)


def slice_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    dilation_ratio: float = 0.02,
    trimap_width: int | None = None,
    tolerance_ratio: float = 0.008,
) -> np.ndarray:
    """``(N, 12)`` int64 per-slice counts, columns :data:`SLICE_COUNT_FIELDS`.

    ``N = 1`` for ``(H, W)`` input and ``D`` for ``(D, H, W)``. Columns: tp, fp,
    fn; band ∩ / band P / band G; trimap |P∩G∩T| / |(P∪G)∩T|; contour pixels
    of P and G and how many of each are matched within τ.
    """
    return _counts(pred, gt, DO_ALL, dilation_ratio, trimap_width, tolerance_ratio)


def slice_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from :func:`slice_counts` rows: one float64 ``(N,)`` array per metric.

    Keys: :data:`SLICE_SCORES` plus ``"nonempty"`` (bool, P or G non-empty).
    Empty-mask values as in the module docstring.
    """
    c = np.ascontiguousarray(counts, dtype=np.int64).reshape(-1, len(SLICE_COUNT_FIELDS))
    table = scores_from_counts(c)
    out = {k: table[:, i] for i, k in enumerate(SLICE_SCORES)}
    out["nonempty"] = c[:, :3].any(axis=1)
    return out


def slice_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    dilation_ratio: float = 0.02,
    trimap_width: int | None = None,
    tolerance_ratio: float = 0.008,
) -> dict[str, np.ndarray]:
    """Per-slice :data:`SLICE_SCORES` (and ``"nonempty"``) of a 2D or 3D pair, ``(N,)`` each."""
    return slice_scores(
        slice_counts(
            pred,
            gt,
            dilation_ratio=dilation_ratio,
            trimap_width=trimap_width,
            tolerance_ratio=tolerance_ratio,
        )
    )


def slice_mean(values: np.ndarray, nonempty: np.ndarray) -> float:
    """Mean of per-slice ``values`` over the ``nonempty`` slices; 1.0 when there is none."""
    values = np.asarray(values, dtype=np.float64)
    nonempty = np.asarray(nonempty, dtype=bool)
    return float(values[nonempty].mean()) if nonempty.any() else 1.0


def table6_scores(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    dilation_ratio: float = 0.02,
    trimap_width: int | None = None,
    tolerance_ratio: float = 0.008,
) -> dict[str, float]:
    """All :data:`SLICE_SCORES` in one pass, plus ``"n"`` (slices where P or G is non-empty).

    For ``(H, W)`` input the slice's scores; for ``(D, H, W)`` their mean over
    the non-empty slices (1.0 each when there is none).
    """
    counts = _counts(pred, gt, DO_ALL, dilation_ratio, trimap_width, tolerance_ratio)
    table = scores_from_counts(counts)
    nonempty = counts[:, :3].any(axis=1)
    n = int(nonempty.sum())
    means = table[nonempty].mean(axis=0) if n else np.ones(len(SLICE_SCORES))
    out: dict[str, float] = dict(zip(SLICE_SCORES, means.tolist(), strict=True))
    out["n"] = n
    return out


def _one(
    pred: np.ndarray,
    gt: np.ndarray,
    flags: int,
    key: str,
    dilation_ratio: float = 0.02,
    trimap_width: int | None = None,
    tolerance_ratio: float = 0.008,
) -> float:
    s = slice_scores(_counts(pred, gt, flags, dilation_ratio, trimap_width, tolerance_ratio))
    return slice_mean(s[key], s["nonempty"])


def boundary_iou(pred: np.ndarray, gt: np.ndarray, *, dilation_ratio: float = 0.02) -> float:
    """IoU of the two boundary bands (module docstring); both empty → 1.0; 3D: slice mean."""
    return _one(pred, gt, DO_BAND, "boundary_iou", dilation_ratio=dilation_ratio)


def trimap_iou(
    pred: np.ndarray, gt: np.ndarray, *, width: int | None = None, dilation_ratio: float = 0.02
) -> float:
    """|P∩G∩T| / |(P∪G)∩T|, T = within chessboard ``width`` (default d) of G's contour; 3D: slice mean."""
    return _one(
        pred, gt, DO_TRIMAP, "trimap_iou", dilation_ratio=dilation_ratio, trimap_width=width
    )


def boundary_f(pred: np.ndarray, gt: np.ndarray, *, tolerance_ratio: float = 0.008) -> float:
    """DAVIS-style contour F-measure with tolerance τ (module docstring); 3D: slice mean."""
    return _one(pred, gt, DO_BOUNDARY_F, "boundary_f", tolerance_ratio=tolerance_ratio)


def boundary_band(
    mask: np.ndarray, *, dilation_ratio: float = 0.02, width: int | None = None
) -> np.ndarray:
    """Bool boundary band of a mask (per slice for 3D), width ``width`` or ``d`` from ``dilation_ratio``."""
    m = check_single(mask)
    width = band_width(m.shape, dilation_ratio) if width is None else _check_width(width, "width")
    out = morphology.boundary_band_stack(as_stack(m), width).view(bool)
    return out.reshape(m.shape)


def contour(mask: np.ndarray) -> np.ndarray:
    """Bool contour: pixels with a background 4-neighbour (6-neighbour for 3D), border = background."""
    m = check_single(mask)
    if m.ndim == 2:
        return morphology.contour_2d(as_stack(m)[0]).view(bool)
    return morphology.contour_3d(as_stack(m)).view(bool)
