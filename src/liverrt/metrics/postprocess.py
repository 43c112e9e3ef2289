"""Mask post-processing: connected components, keep-largest-k, hole filling.

Connectivity is given as the number of neighbours: 4 or 8 for ``(H, W)``
masks, 6, 18 or 26 for ``(D, H, W)`` masks (``None`` = the full one, 8 / 26).
With ``per_slice=True`` a ``(D, H, W)`` mask is processed slice by slice with
a 2D connectivity (4 or 8), in parallel.
"""

from __future__ import annotations

import numpy as np

from liverrt.errors import InputError
from liverrt.kernels.label import (
    backward_offsets,
    fill_holes_stack,
    label_3d,
    label_stack_2d,
    largest_components_3d,
    largest_components_stack_2d,
)
from liverrt.metrics._validate import as_stack, check_positive_int, check_single

__all__ = ["fill_holes", "label", "largest_components"]

_ALLOWED = {2: (4, 8), 3: (6, 18, 26)}


def _offsets(ndim: int, connectivity: int | None) -> np.ndarray:
    allowed = _ALLOWED[ndim]
    if connectivity is None:
        connectivity = allowed[-1]
    if connectivity not in allowed:
        raise InputError(
            f"connectivity: got {connectivity!r} for a {ndim}D labelling, expected one of {allowed}."
        )
    return backward_offsets(ndim, int(connectivity))


def label(
    mask: np.ndarray, connectivity: int | None = None, *, per_slice: bool = False
) -> tuple[np.ndarray, int | np.ndarray]:
    """Connected components of a 2D or 3D mask.

    Returns ``(labels, n)``: int32 labels of the mask's shape, 0 = background,
    components numbered 1..n in the raster order of their first voxel (as
    ``scipy.ndimage.label``). With ``per_slice=True`` (3D input) each slice is
    labelled on its own and ``n`` is an int64 ``(D,)`` array of counts.
    """
    m = check_single(mask)
    if per_slice and m.ndim == 3:
        labels, counts = label_stack_2d(as_stack(m), _offsets(2, connectivity))
        return labels, counts
    labels, n = label_3d(as_stack(m), _offsets(m.ndim, connectivity))
    return labels.reshape(m.shape), int(n)


def largest_components(
    mask: np.ndarray, k: int = 1, connectivity: int | None = None, *, per_slice: bool = False
) -> np.ndarray:
    """Bool mask keeping the ``k`` largest connected components (ties: first in raster order)."""
    m = check_single(mask)
    k = check_positive_int(k, "k")
    if per_slice and m.ndim == 3:
        out = largest_components_stack_2d(as_stack(m), _offsets(2, connectivity), k)
    else:
        out = largest_components_3d(as_stack(m), _offsets(m.ndim, connectivity), k)
    return out.view(bool).reshape(m.shape)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Bool mask with its holes filled, per 2D slice.

    A hole is a background region not 4-connected to the slice border
    (``scipy.ndimage.binary_fill_holes`` on each slice).
    """
    m = check_single(mask)
    return fill_holes_stack(as_stack(m)).view(bool).reshape(m.shape)
