"""Input checks shared by the metric functions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from liverrt.errors import InputError


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


def check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a prediction/ground-truth pair: binary, equal shapes, 2D or 3D."""
    p, g = as_mask(pred, "pred"), as_mask(gt, "gt")
    if p.shape != g.shape:
        raise InputError(f"Shape mismatch: pred {p.shape} vs gt {g.shape}; expected equal shapes.")
    if p.ndim not in (2, 3):
        raise InputError(f"pred/gt: got {p.ndim} dimensions, expected (H, W) or (D, H, W).")
    return p, g


def check_single(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """Validate one binary mask of shape ``(H, W)`` or ``(D, H, W)``."""
    m = as_mask(mask, name)
    if m.ndim not in (2, 3):
        raise InputError(
            f"{name}: got {m.ndim} dimensions (shape {m.shape}), expected (H, W) or (D, H, W)."
        )
    return m


def u8(mask: np.ndarray) -> np.ndarray:
    """A bool mask as a C-contiguous 0/1 ``uint8`` array (a view when possible)."""
    return np.ascontiguousarray(mask).view(np.uint8)


def as_stack(mask: np.ndarray) -> np.ndarray:
    """``uint8`` ``(N, H, W)`` view of a 2D or 3D bool mask."""
    m = u8(mask)
    return m[None] if m.ndim == 2 else m


def check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    """Validate ``spacing`` (one positive finite mm value per axis) as float64 ``(dz, dy, dx)``.

    2D spacing ``(dy, dx)`` is returned as ``(1.0, dy, dx)``.
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(f"spacing: got {spacing!r}, expected {ndim} numbers in mm.") from exc
    if len(values) != ndim:
        raise InputError(
            f"spacing: got {len(values)} values {values}, expected {ndim} (one per array axis)."
        )
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"spacing: got {values}, expected positive finite millimetres.")
    if ndim == 2:
        values = (1.0, *values)
    return np.array(values, dtype=np.float64)


def check_positive_int(value: int, name: str, minimum: int = 1) -> int:
    """An integer parameter ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise InputError(f"{name}: got {value!r}, expected an integer >= {minimum}.")
    return int(value)
