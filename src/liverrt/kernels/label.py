"""Connected components (union-find), keep-largest-k and 2D hole filling.

Labels are int32, 0 = background, components numbered 1..n in the raster order
of their first voxel (the numbering ``scipy.ndimage.label`` produces).
Masks are C-contiguous 0/1 ``uint8`` ``(D, H, W)`` arrays; a 2D mask is passed
as ``(1, H, W)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from liverrt.kernels.counts import pick


def backward_offsets(ndim: int, connectivity: int) -> np.ndarray:
    """``(K, 3)`` int64 neighbour offsets that precede a voxel in raster order.

    ``ndim=2``: connectivity 4 or 8; ``ndim=3``: 6, 18 or 26 (rank 1, 2, 3).
    """
    rank = {(2, 4): 1, (2, 8): 2, (3, 6): 1, (3, 18): 2, (3, 26): 3}[(ndim, connectivity)]
    offs = []
    zs = (-1, 0, 1) if ndim == 3 else (0,)
    for dz in zs:
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dz, dy, dx) >= (0, 0, 0):
                    continue
                if abs(dz) + abs(dy) + abs(dx) <= rank:
                    offs.append((dz, dy, dx))
    return np.array(offs, dtype=np.int64).reshape(-1, 3)


@njit(cache=True, nogil=True)
def _find(parent, a):
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True, nogil=True)
def label_3d(m, offs):
    """``(labels, n)`` of a ``(D, H, W)`` mask with the neighbour set ``offs``."""
    d, h, w = m.shape
    n_fg = 0
    for v in m.ravel():
        n_fg += v
    labels = np.zeros((d, h, w), np.int32)
    parent = np.empty(n_fg + 1, np.int32)
    parent[0] = 0
    nxt = 1
    k_max = offs.shape[0]
    for z in range(d):
        for y in range(h):
            for x in range(w):
                if m[z, y, x] == 0:
                    continue
                cur = 0
                for k in range(k_max):
                    zz = z + offs[k, 0]
                    yy = y + offs[k, 1]
                    xx = x + offs[k, 2]
                    if zz < 0 or yy < 0 or yy >= h or xx < 0 or xx >= w:
                        continue
                    lab = labels[zz, yy, xx]
                    if lab == 0:
                        continue
                    r = _find(parent, lab)
                    if cur == 0:
                        cur = r
                    elif r != cur:
                        if r < cur:
                            parent[cur] = r
                            cur = r
                        else:
                            parent[r] = cur
                if cur == 0:
                    parent[nxt] = nxt
                    cur = nxt
                    nxt += 1
                labels[z, y, x] = cur
    # parent[l] <= l throughout, so one increasing sweep resolves every root
    final = np.zeros(nxt, np.int32)
    n = 0
    for lab in range(1, nxt):
        if parent[lab] == lab:
            n += 1
            final[lab] = n
        else:
            final[lab] = final[parent[lab]]
    flat = labels.ravel()
    for i in range(flat.shape[0]):
        flat[i] = final[flat[i]]
    return labels, n


@njit(cache=True, nogil=True)
def _label_slice(m, k, offs, labels, counts):
    h, w = m.shape[1:]
    lab, n = label_3d(m[k].reshape((1, h, w)), offs)
    labels[k] = lab[0]
    counts[k] = n


@njit(cache=True, nogil=True)
def _label_serial(m, offs, labels, counts):
    for k in range(m.shape[0]):
        _label_slice(m, k, offs, labels, counts)


@njit(cache=True, nogil=True, parallel=True)
def _label_parallel(m, offs, labels, counts):
    for k in prange(m.shape[0]):
        _label_slice(m, np.int64(k), offs, labels, counts)


def label_stack_2d(m: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice labels of an ``(N, H, W)`` stack; returns ``(labels, counts[N])``."""
    labels = np.empty(m.shape, np.int32)
    counts = np.empty(m.shape[0], np.int64)
    pick(_label_serial, _label_parallel, m)(m, offs, labels, counts)
    return labels, counts


@njit(cache=True, nogil=True)
def keep_largest(labels, n, k):
    """0/1 ``uint8`` mask of the ``k`` largest of ``n`` labelled components.

    Ties go to the lower label (the component met first in raster order).
    """
    sizes = np.zeros(n + 1, np.int64)
    flat = labels.ravel()
    for i in range(flat.shape[0]):
        sizes[flat[i]] += 1
    keep = np.zeros(n + 1, np.uint8)
    if k >= n:
        keep[1:] = 1
    else:
        for _ in range(k):
            best = 0
            best_size = -1
            for lab in range(1, n + 1):
                if keep[lab] == 0 and sizes[lab] > best_size:
                    best_size = sizes[lab]
                    best = lab
            keep[best] = 1
    out = np.empty(labels.shape, np.uint8)
    oflat = out.ravel()
    for i in range(flat.shape[0]):
        oflat[i] = keep[flat[i]]
    return out


@njit(cache=True, nogil=True)
def largest_components_3d(m, offs, k):
    """``k`` largest components of a ``(D, H, W)`` mask (``offs`` connectivity)."""
    labels, n = label_3d(m, offs)
    return keep_largest(labels, n, k)


@njit(cache=True, nogil=True)
def _largest_serial(m, offs, k, out):
    h, w = m.shape[1:]
    for s in range(m.shape[0]):
        out[s] = largest_components_3d(m[s].reshape((1, h, w)), offs, k)[0]


@njit(cache=True, nogil=True, parallel=True)
def _largest_parallel(m, offs, k, out):
    h, w = m.shape[1:]
    for s in prange(m.shape[0]):
        out[s] = largest_components_3d(m[s].reshape((1, h, w)), offs, k)[0]


def largest_components_stack_2d(m: np.ndarray, offs: np.ndarray, k: int) -> np.ndarray:
    """:func:`largest_components_3d` of each slice of an ``(N, H, W)`` stack."""
    out = np.empty(m.shape, np.uint8)
    pick(_largest_serial, _largest_parallel, m)(m, offs, k, out)
    return out


@njit(cache=True, nogil=True)
def fill_holes_2d(m):
    """``m`` with every background region not 4-connected to the image border filled."""
    h, w = m.shape
    reached = np.zeros((h, w), np.uint8)
    stack = np.empty(h * w, np.int64)
    top = 0
    for i in range(h):
        for j in (0, w - 1):
            if m[i, j] == 0 and reached[i, j] == 0:
                reached[i, j] = 1
                stack[top] = i * w + j
                top += 1
    for j in range(w):
        for i in (0, h - 1):
            if m[i, j] == 0 and reached[i, j] == 0:
                reached[i, j] = 1
                stack[top] = i * w + j
                top += 1
    while top > 0:
        top -= 1
        p = stack[top]
        i = p // w
        j = p - i * w
        if i > 0 and m[i - 1, j] == 0 and reached[i - 1, j] == 0:
            reached[i - 1, j] = 1
            stack[top] = p - w
            top += 1
        if i < h - 1 and m[i + 1, j] == 0 and reached[i + 1, j] == 0:
            reached[i + 1, j] = 1
            stack[top] = p + w
            top += 1
        if j > 0 and m[i, j - 1] == 0 and reached[i, j - 1] == 0:
            reached[i, j - 1] = 1
            stack[top] = p - 1
            top += 1
        if j < w - 1 and m[i, j + 1] == 0 and reached[i, j + 1] == 0:
            reached[i, j + 1] = 1
            stack[top] = p + 1
            top += 1
    out = np.empty((h, w), np.uint8)
    for i in range(h):
        for j in range(w):
            out[i, j] = 1 - reached[i, j]
    return out


@njit(cache=True, nogil=True)
def _fill_serial(m, out):
    for k in range(m.shape[0]):
        out[k] = fill_holes_2d(m[k])


@njit(cache=True, nogil=True, parallel=True)
def _fill_parallel(m, out):
    for k in prange(m.shape[0]):
        out[k] = fill_holes_2d(m[k])


def fill_holes_stack(m: np.ndarray) -> np.ndarray:
    """:func:`fill_holes_2d` of each slice of an ``(N, H, W)`` stack."""
    out = np.empty(m.shape, np.uint8)
    pick(_fill_serial, _fill_parallel, m)(m, out)
    return out
