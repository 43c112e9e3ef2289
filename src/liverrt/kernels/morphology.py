"""Binary morphology on 0/1 ``uint8`` masks: bands, contours, surfaces.

Conventions (pinned by the tests against SciPy):

* ``boundary_band_2d(m, d)``: pixels of ``m`` whose chessboard distance to the
  background is ``<= d``, pixels outside the image counting as background, i.e.
  ``m & ~binary_erosion(m, ones((2d+1, 2d+1)), border_value=0)``.
* ``dilate_square_2d(m, w)``: ``binary_dilation(m, ones((2w+1, 2w+1)))``.
* ``contour_2d`` / ``contour_3d``: pixels of ``m`` with at least one 4- (6-)
  neighbour in the background, outside the image counting as background.
* ``surface_3d``: ``m ^ binary_erosion(m, face-connected, border_value=1)``,
  i.e. outside the array counts as *foreground* (the CHAOS convention).

The square erosion/dilation is separable: a run-length pass along each row,
then a streaming pass down the columns that keeps one counter per column.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from liverrt.kernels.counts import pick


@njit(cache=True, nogil=True)
def _erode_row(row, d, run, out):
    """``out[j] = all(row[j-d : j+d+1])`` with out-of-range pixels = 0."""
    w = row.shape[0]
    c = 0
    for j in range(w):
        c = (c + 1) * row[j]
        run[j] = c
    span = 2 * d + 1
    for j in range(max(0, w - d)):
        out[j] = 1 if run[j + d] >= span else 0
    for j in range(max(0, w - d), w):
        out[j] = 0


@njit(cache=True, nogil=True)
def _dilate_row(row, r, csum, out):
    """``out[j] = any(row[j-r : j+r+1])`` (clipped to the row)."""
    w = row.shape[0]
    c = 0
    csum[0] = 0
    for j in range(w):
        c += row[j]
        csum[j + 1] = c
    for j in range(w):
        hi = min(w, j + r + 1)
        lo = max(0, j - r)
        out[j] = 1 if csum[hi] - csum[lo] > 0 else 0


@njit(cache=True, nogil=True)
def boundary_band_2d(m, d):
    """Boundary band of width ``d`` (>= 0) of an ``(H, W)`` mask; ``uint8`` 0/1."""
    h, w = m.shape
    out = np.empty((h, w), np.uint8)
    span = 2 * d + 1
    cnt = np.zeros(w, np.int64)
    run = np.empty(w, np.int64)
    eh = np.empty(w, np.uint8)
    # cnt[j] = number of consecutive rows ending at row r whose horizontal
    # erosion is 1; row i survives the square erosion iff cnt >= span at r = i + d.
    for r in range(h + d):
        if r < h:
            _erode_row(m[r], d, run, eh)
            for j in range(w):
                cnt[j] = (cnt[j] + 1) * eh[j]
        else:
            cnt[:] = 0
        i = r - d
        if i >= 0:
            for j in range(w):
                out[i, j] = m[i, j] & (cnt[j] < span)
    return out


@njit(cache=True, nogil=True)
def dilate_square_2d(m, r):
    """Dilation of an ``(H, W)`` mask by a ``(2r+1)`` square; ``uint8`` 0/1."""
    h, w = m.shape
    out = np.empty((h, w), np.uint8)
    hor = np.empty((h, w), np.uint8)
    csum = np.empty(w + 1, np.int64)
    for i in range(h):
        _dilate_row(m[i], r, csum, hor[i])
    win = np.zeros(w, np.int64)
    span = 2 * r + 1
    for s in range(h + r):
        if s < h:
            for j in range(w):
                win[j] += hor[s, j]
        old = s - span
        if old >= 0:
            for j in range(w):
                win[j] -= hor[old, j]
        i = s - r
        if i >= 0:
            for j in range(w):
                out[i, j] = win[j] > 0
    return out


@njit(cache=True, nogil=True)
def contour_2d(m):
    """Pixels of an ``(H, W)`` mask with a background 4-neighbour (border = background)."""
    h, w = m.shape
    out = np.zeros((h, w), np.uint8)
    if h < 3 or w < 3:
        out[:, :] = m
        return out
    out[0, :] = m[0, :]
    out[h - 1, :] = m[h - 1, :]
    for i in range(1, h - 1):
        out[i, 0] = m[i, 0]
        out[i, w - 1] = m[i, w - 1]
        for j in range(1, w - 1):
            inner = m[i - 1, j] & m[i + 1, j] & m[i, j - 1] & m[i, j + 1]
            out[i, j] = m[i, j] & (1 - inner)
    return out


def contour_3d(m: np.ndarray) -> np.ndarray:
    """Voxels of a ``(D, H, W)`` mask with a background 6-neighbour (border = background)."""
    return _face_boundary_3d(m, 0)


def surface_3d(m: np.ndarray) -> np.ndarray:
    """CHAOS surface of a ``(D, H, W)`` mask: face neighbours, outside = foreground."""
    return _face_boundary_3d(m, 1)


@njit(cache=True, nogil=True)
def _face_boundary_plane(m, z, outside, out):
    """Plane ``z`` of ``m & ~(all six face neighbours set)``, out-of-array neighbours = ``outside``."""
    d, h, w = m.shape
    for y in range(h):
        for x in range(w):
            if m[z, y, x] == 0:
                continue
            inner = 1
            inner &= m[z - 1, y, x] if z > 0 else outside
            inner &= m[z + 1, y, x] if z < d - 1 else outside
            inner &= m[z, y - 1, x] if y > 0 else outside
            inner &= m[z, y + 1, x] if y < h - 1 else outside
            inner &= m[z, y, x - 1] if x > 0 else outside
            inner &= m[z, y, x + 1] if x < w - 1 else outside
            out[z, y, x] = 1 - inner


@njit(cache=True, nogil=True)
def _face_serial(m, outside, out):
    for z in range(m.shape[0]):
        _face_boundary_plane(m, z, outside, out)


@njit(cache=True, nogil=True, parallel=True)
def _face_parallel(m, outside, out):
    for z in prange(m.shape[0]):
        _face_boundary_plane(m, np.int64(z), outside, out)


def _face_boundary_3d(m: np.ndarray, outside: int) -> np.ndarray:
    out = np.zeros(m.shape, np.uint8)
    pick(_face_serial, _face_parallel, m)(m, np.int64(outside), out)
    return out


@njit(cache=True, nogil=True)
def _band_serial(m, d, out):
    for k in range(m.shape[0]):
        out[k] = boundary_band_2d(m[k], d)


@njit(cache=True, nogil=True, parallel=True)
def _band_parallel(m, d, out):
    for k in prange(m.shape[0]):
        out[k] = boundary_band_2d(m[k], d)


def boundary_band_stack(m: np.ndarray, d: int) -> np.ndarray:
    """:func:`boundary_band_2d` of each slice of an ``(N, H, W)`` stack."""
    out = np.empty(m.shape, np.uint8)
    pick(_band_serial, _band_parallel, m)(m, d, out)
    return out


@njit(cache=True, nogil=True)
def _contour_serial(m, out):
    for k in range(m.shape[0]):
        out[k] = contour_2d(m[k])


@njit(cache=True, nogil=True, parallel=True)
def _contour_parallel(m, out):
    for k in prange(m.shape[0]):
        out[k] = contour_2d(m[k])


def contour_stack(m: np.ndarray) -> np.ndarray:
    """:func:`contour_2d` of each slice of an ``(N, H, W)`` stack."""
    out = np.empty(m.shape, np.uint8)
    pick(_contour_serial, _contour_parallel, m)(m, out)
    return out
