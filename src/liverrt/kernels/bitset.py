"""Bit-packed binary images, column-packed: 64 vertically adjacent pixels per ``uint64``.

A packed image is a ``(KR, C)`` ``uint64`` array: bit ``t`` of word ``[w, c]``
is pixel ``(64·w + t, c)``. Keeping the image columns as the contiguous axis
makes every shift, AND and OR below a long loop over columns that the compiler
vectorises, in both directions. Pixels outside the array read as 0
(background); bits past the image height start at 0 and only ever matter as
inputs that read 0, so the operations stay exact for the rows inside.

Square erosion/dilation use the doubling trick: a window of length L takes
about ``log2(L)`` shifted AND/ORs.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.extending import intrinsic

_ZERO = np.uint64(0)


@intrinsic
def popcount(typingctx, x):
    """Number of set bits of a ``uint64`` (LLVM ``ctpop``)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(cache=True, nogil=True)
def pack_crop(m, r0, r1, c0, c1):
    """Column-packed copy of ``m[r0:r1+1, c0:c1+1]`` (``m``: ``(H, W)`` 0/1 ``uint8``)."""
    r = r1 - r0 + 1
    c_max = c1 - c0 + 1
    out = np.zeros(((r + 63) >> 6, c_max), np.uint64)
    for y in range(r):
        t = np.uint64(y & 63)
        row = m[r0 + y, c0 : c1 + 1]
        o = out[y >> 6]
        for c in range(c_max):
            o[c] |= np.uint64(row[c]) << t
    return out


@njit(cache=True, nogil=True)
def count(a):
    """Set bits of a packed image."""
    n = np.uint64(0)  # uint64: int64 + uint64 would give float64
    for v in a.ravel():
        n += popcount(v)
    return np.int64(n)


@njit(cache=True, nogil=True)
def and_count(a, b):
    """Set bits of ``a & b``."""
    n = np.uint64(0)
    fa = a.ravel()
    fb = b.ravel()
    for i in range(fa.shape[0]):
        n += popcount(fa[i] & fb[i])
    return np.int64(n)


# The shifts update ``acc`` in place from a *different* array ``src`` (so the
# loops vectorise). Boolean choices are separate functions, not flag arguments:
# Numba compiles one specialisation per literal argument value, and the flags
# multiplied the compile time of everything built on them.


@njit(cache=True, nogil=True)
def _x_range(c_max, s):
    """Columns ``[lo, hi)`` whose source ``c + s`` lies inside ``[0, c_max)``."""
    lo = min(max(0, -s), c_max)
    return lo, max(min(c_max, c_max - s), lo)


@njit(cache=True, nogil=True)
def x_and(acc, src, s):
    """``acc(y, x) &= src(y, x + s)``; outside = 0."""
    kr, c_max = src.shape
    lo, hi = _x_range(c_max, s)
    for w in range(kr):
        d = acc[w]
        # slices, not src[w, c + s]: indices provably >= 0 let the loop vectorise
        dm = d[lo:hi]
        am = src[w, lo + s : hi + s]
        for c in range(hi - lo):
            dm[c] &= am[c]
        d[:lo] = _ZERO
        d[hi:] = _ZERO


@njit(cache=True, nogil=True)
def x_or(acc, src, s):
    """``acc(y, x) |= src(y, x + s)``; outside = 0."""
    kr, c_max = src.shape
    lo, hi = _x_range(c_max, s)
    for w in range(kr):
        dm = acc[w, lo:hi]
        am = src[w, lo + s : hi + s]
        for c in range(hi - lo):
            dm[c] |= am[c]


@njit(cache=True, nogil=True)
def _y_source(src, w, s, zero):
    """The two source word-rows feeding word-row ``w`` for a shift by ``s`` pixel rows."""
    kr = src.shape[0]
    i = w + (s >> 6)  # floor division, also for negative s
    lo = src[i] if 0 <= i < kr else zero
    hi = src[i + 1] if 0 <= i + 1 < kr else zero
    return lo, hi


@njit(cache=True, nogil=True)
def y_and(acc, src, s):
    """``acc(y, x) &= src(y + s, x)``; outside = 0."""
    kr, c_max = src.shape
    zero = np.zeros(c_max, np.uint64)
    b = np.uint64(s & 63)
    nb = np.uint64(64 - (s & 63))
    for w in range(kr):
        lo, hi = _y_source(src, w, s, zero)
        d = acc[w]
        if b == 0:
            for c in range(c_max):
                d[c] &= lo[c]
        else:
            for c in range(c_max):
                d[c] &= (lo[c] >> b) | (hi[c] << nb)


@njit(cache=True, nogil=True)
def y_or(acc, src, s):
    """``acc(y, x) |= src(y + s, x)``; outside = 0."""
    kr, c_max = src.shape
    zero = np.zeros(c_max, np.uint64)
    b = np.uint64(s & 63)
    nb = np.uint64(64 - (s & 63))
    for w in range(kr):
        lo, hi = _y_source(src, w, s, zero)
        d = acc[w]
        if b == 0:
            for c in range(c_max):
                d[c] |= lo[c]
        else:
            for c in range(c_max):
                d[c] |= (lo[c] >> b) | (hi[c] << nb)


@njit(cache=True, nogil=True)
def _shift_op(acc, src, s, erode, along_y):
    if along_y:
        if erode:
            y_and(acc, src, s)
        else:
            y_or(acc, src, s)
    elif erode:
        x_and(acc, src, s)
    else:
        x_or(acc, src, s)


@njit(cache=True, nogil=True)
def window(src, radius, erode, along_y):
    """AND (``erode``) or OR over the ``2·radius+1`` pixels centred on each pixel, along x or y.

    Doubling: after step k, ``fwd(v)`` covers ``[v, v + 2^k)`` and ``bwd(v)``
    covers ``(v - 2^k, v]``; a last overlapping step reaches ``radius + 1``.
    """
    fwd = src.copy()
    bwd = src.copy()
    tmp = np.empty_like(src)
    length = radius + 1
    p = 1
    while p < length:
        step = min(p, length - p)
        tmp[:] = fwd
        _shift_op(fwd, tmp, step, erode, along_y)
        tmp[:] = bwd
        _shift_op(bwd, tmp, -step, erode, along_y)
        p += step
    if erode:
        fwd &= bwd
    else:
        fwd |= bwd
    return fwd


@njit(cache=True, nogil=True)
def square(src, radius, erode):
    """Erosion (``erode``) or dilation by a ``(2·radius+1)²`` square; outside = 0."""
    across = radius < 0  # False, computed so that it is not a compile-time literal
    return window(window(src, radius, erode, across), radius, erode, not across)


@njit(cache=True, nogil=True)
def contour(m):
    """Pixels of ``m`` with a 4-neighbour outside ``m`` (outside the array = background)."""
    inner = m.copy()
    for s in (-1, 1):
        x_and(inner, m, s)
        y_and(inner, m, s)
    return m & ~inner


@njit(cache=True, nogil=True)
def dilate_disk(m, radius):
    """Dilation by the lattice disk ``dy² + dx² <= radius²``."""
    # rows[t] = OR over |dx| <= t, built incrementally
    rows = np.empty((radius + 1, *m.shape), np.uint64)
    rows[0] = m
    for t in range(1, radius + 1):
        rows[t] = rows[t - 1]
        x_or(rows[t], m, t)
        x_or(rows[t], m, -t)
    out = np.zeros_like(m)
    for dy in range(-radius, radius + 1):
        rem = radius * radius - dy * dy
        t = int(np.sqrt(rem))
        while t * t > rem:
            t -= 1
        while (t + 1) * (t + 1) <= rem:
            t += 1
        y_or(out, rows[t], dy)
    return out
