"""Confusion counts and bounding boxes of binary masks, and the serial/parallel choice.

All kernels take C-contiguous ``uint8`` arrays holding 0/1 (a bool array viewed
as ``uint8``) and return scalars or small arrays.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

# Below this many voxels a batched kernel runs on the calling thread: waking the
# thread pool costs more than it saves (and much more on a busy machine).
PARALLEL_MIN_VOXELS = 1 << 17


def pick(serial, parallel, arr: np.ndarray):
    """``parallel`` for a batch ``arr`` worth the thread pool, else ``serial``.

    Each batched kernel comes as a serial and a ``prange`` twin chosen here, in
    Python, so the costly parallel compile happens only when it is used.
    """
    worth = arr.size >= PARALLEL_MIN_VOXELS and arr.shape[0] > 1 and numba.get_num_threads() > 1
    return parallel if worth else serial


@njit(cache=True, nogil=True)
def confusion_counts(p, g):
    """``(tp, fp, fn)`` of two flat 0/1 ``uint8`` arrays of equal length."""
    tp = 0
    sp = 0
    sg = 0
    for i in range(p.shape[0]):
        a = np.int64(p[i])
        b = np.int64(g[i])
        tp += a & b
        sp += a
        sg += b
    return tp, sp - tp, sg - tp


@njit(cache=True, nogil=True)
def _rows_serial(p, g, out):
    for k in range(p.shape[0]):
        out[k] = confusion_counts(p[k], g[k])


@njit(cache=True, nogil=True, parallel=True)
def _rows_parallel(p, g, out):
    for k in prange(p.shape[0]):
        out[k] = confusion_counts(p[k], g[k])


def confusion_counts_rows(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``(N, 3)`` int64 ``(tp, fp, fn)`` per row of two ``(N, M)`` 0/1 ``uint8`` arrays."""
    out = np.empty((p.shape[0], 3), np.int64)
    pick(_rows_serial, _rows_parallel, p)(p, g, out)
    return out


@njit(cache=True, nogil=True)
def _bbox_plane(p, g, lim):
    """``lim[:] = (y0, y1, x0, x1)`` of ``p | g`` for one ``(H, W)`` plane (``y1 < 0``: empty)."""
    h, w = p.shape
    y0 = h
    y1 = -1
    x0 = w
    x1 = -1
    for y in range(h):
        anyv = 0
        for x in range(w):
            anyv |= p[y, x] | g[y, x]
        if anyv:
            y0 = min(y0, y)
            y1 = y
            x = 0
            while (p[y, x] | g[y, x]) == 0:
                x += 1
            x0 = min(x0, x)
            x = w - 1
            while (p[y, x] | g[y, x]) == 0:
                x -= 1
            x1 = max(x1, x)
    lim[0] = y0
    lim[1] = y1
    lim[2] = x0
    lim[3] = x1


@njit(cache=True, nogil=True)
def _bbox_serial(p, g, lim):
    for z in range(p.shape[0]):
        _bbox_plane(p[z], g[z], lim[z])


@njit(cache=True, nogil=True, parallel=True)
def _bbox_parallel(p, g, lim):
    for z in prange(p.shape[0]):
        _bbox_plane(p[z], g[z], lim[z])


def union_bbox_3d(p: np.ndarray, g: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    """Inclusive bounding box ``(z0, z1, y0, y1, x0, x1)`` of ``p | g`` (``(D, H, W)``); ``None`` if empty."""
    lim = np.empty((p.shape[0], 4), np.int64)
    pick(_bbox_serial, _bbox_parallel, p)(p, g, lim)
    planes = np.flatnonzero(lim[:, 1] >= 0)
    if planes.size == 0:
        return None
    used = lim[planes]
    return (
        int(planes[0]),
        int(planes[-1]),
        int(used[:, 0].min()),
        int(used[:, 1].max()),
        int(used[:, 2].min()),
        int(used[:, 3].max()),
    )
