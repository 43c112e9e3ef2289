"""One fused pass per 2D slice that counts everything the Table-6 metrics need.

``pair_counts_2d`` returns an ``int64[12]`` vector (see ``FIELDS``); every score is
derived from those counts afterwards (two stages: count once, derive scores).
A first pass over the slice (popcounts of 8-pixel byte words) gives the
confusion counts and the bounding box of ``pred | gt``; everything else runs
on that box, bit-packed (:mod:`.bitset`). Outside the box both masks are
background, so no counted quantity (bands, contours, distances between contour
pixels) changes: the box edge borders only background or the image border,
and both read as background.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from liverrt.kernels import bitset
from liverrt.kernels.counts import pick

FIELDS = (
    "tp",
    "fp",
    "fn",
    "band_inter",
    "band_pred",
    "band_gt",
    "trimap_inter",
    "trimap_union",
    "contour_pred",
    "contour_gt",
    "contour_pred_matched",
    "contour_gt_matched",
)
N_FIELDS = len(FIELDS)
SCORES = ("mask_iou", "dice", "f_measure", "boundary_iou", "trimap_iou", "boundary_f")

DO_BAND = 1
DO_TRIMAP = 2
DO_BOUNDARY_F = 4
DO_ALL = DO_BAND | DO_TRIMAP | DO_BOUNDARY_F


def byte_words(mask_u8: np.ndarray) -> np.ndarray:
    """``(..., ceil(W/8))`` ``uint64`` "byte words" of a 0/1 ``uint8`` mask (a view when ``W % 8 == 0``)."""
    m = np.ascontiguousarray(mask_u8)
    w = m.shape[-1]
    if w % 8:
        padded = np.zeros((*m.shape[:-1], (w + 7) // 8 * 8), np.uint8)
        padded[..., :w] = m
        m = padded
    words = m.view(np.dtype("<u8"))
    return words if words.dtype.isnative else words.astype(np.uint64)


@njit(cache=True, nogil=True)
def scan(pw, gw):
    """``(r0, r1, c0, c1, tp, fp, fn)`` of two ``(H, ceil(W/8))`` byte-word masks.

    Inclusive bounding box of ``pred | gt`` in pixels (``r1 < 0`` when both are
    empty) and the confusion counts; each 0/1 byte counts one, so a popcount
    of 8 bytes is their sum.
    """
    h, w8 = pw.shape
    colany = np.zeros(w8, np.uint64)
    r0 = h
    r1 = -1
    tp = np.uint64(0)  # uint64 throughout: mixing with int64 would give float64
    sp = np.uint64(0)
    sg = np.uint64(0)
    for y in range(h):
        pr = pw[y]
        gr = gw[y]
        a_s = np.uint64(0)
        b_s = np.uint64(0)
        t_s = np.uint64(0)
        for j in range(w8):
            a = pr[j]
            b = gr[j]
            a_s += bitset.popcount(a)
            b_s += bitset.popcount(b)
            t_s += bitset.popcount(a & b)
        if a_s + b_s > 0:
            r0 = min(r0, y)
            r1 = y
            for j in range(w8):
                colany[j] |= pr[j] | gr[j]
        tp += t_s
        sp += a_s
        sg += b_s
    c0 = 0
    c1 = -1
    if r1 >= 0:
        j = 0
        while colany[j] == 0:
            j += 1
        c0 = 8 * j
        while (colany[j] >> np.uint64(8 * (c0 - 8 * j))) & np.uint64(0xFF) == 0:
            c0 += 1
        j = w8 - 1
        while colany[j] == 0:
            j -= 1
        c1 = 8 * j + 7
        while (colany[j] >> np.uint64(8 * (c1 - 8 * j))) & np.uint64(0xFF) == 0:
            c1 -= 1
    return r0, r1, c0, c1, np.int64(tp), np.int64(sp - tp), np.int64(sg - tp)


@njit(cache=True, nogil=True)
def pair_counts_2d(p8, g8, pw, gw, d, trimap_width, tau, flags):
    """Counts of one ``(H, W)`` slice pair.

    Args:
        p8, g8: prediction and ground truth, 0/1 ``uint8``, C-contiguous.
        pw, gw: the same masks as ``(H, ceil(W/8))`` byte words (:func:`byte_words`).
        d: boundary-band width (chessboard distance) for Boundary IoU.
        trimap_width: trimap band half-width around the ground-truth contour.
        tau: boundary-F tolerance (Euclidean, pixels).
        flags: parts to compute (``DO_BAND | DO_TRIMAP | DO_BOUNDARY_F``);
            fields of skipped parts are 0.
    """
    out = np.zeros(12, np.int64)
    r0, r1, c0, c1, tp, fp, fn = scan(pw, gw)
    out[0] = tp
    out[1] = fp
    out[2] = fn
    if r1 < 0:
        return out
    pc = bitset.pack_crop(p8, r0, r1, c0, c1)
    gc = bitset.pack_crop(g8, r0, r1, c0, c1)
    erode = d >= 0  # True, computed so that it is not a compile-time literal
    if flags & DO_BAND:
        bp = pc & ~bitset.square(pc, d, erode)
        bg = gc & ~bitset.square(gc, d, erode)
        out[3] = bitset.and_count(bp, bg)
        out[4] = bitset.count(bp)
        out[5] = bitset.count(bg)
    if flags & (DO_TRIMAP | DO_BOUNDARY_F):
        cg = bitset.contour(gc)
        if flags & DO_TRIMAP:
            t = bitset.square(cg, trimap_width, not erode)
            out[6] = bitset.and_count(pc & gc, t)
            out[7] = bitset.and_count(pc | gc, t)
        if flags & DO_BOUNDARY_F:
            cp = bitset.contour(pc)
            out[8] = bitset.count(cp)
            out[9] = bitset.count(cg)
            out[10] = bitset.and_count(cp, bitset.dilate_disk(cg, tau))
            out[11] = bitset.and_count(cg, bitset.dilate_disk(cp, tau))
    return out


@njit(cache=True, nogil=True)
def _stack_serial(p8, g8, pw, gw, d, trimap_width, tau, flags, out):
    for k in range(p8.shape[0]):
        out[k] = pair_counts_2d(p8[k], g8[k], pw[k], gw[k], d, trimap_width, tau, flags)


@njit(cache=True, nogil=True, parallel=True)
def _stack_parallel(p8, g8, pw, gw, d, trimap_width, tau, flags, out):
    for k in prange(p8.shape[0]):
        out[k] = pair_counts_2d(p8[k], g8[k], pw[k], gw[k], d, trimap_width, tau, flags)


def pair_counts_stack(
    p8, g8, pw, gw, d: int, trimap_width: int, tau: int, flags: int
) -> np.ndarray:
    """``(N, 12)`` :func:`pair_counts_2d` of each slice of ``(N, H, W)`` stacks (and their byte words)."""
    out = np.empty((p8.shape[0], N_FIELDS), np.int64)
    pick(_stack_serial, _stack_parallel, p8)(p8, g8, pw, gw, d, trimap_width, tau, flags, out)
    return out


@njit(cache=True, nogil=True)
def _ratio(num, den, empty):
    return num / den if den > 0 else empty


@njit(cache=True, nogil=True)
def scores_from_counts(counts):
    """``(N, 6)`` float64 scores (columns ``SCORES``) from ``(N, 12)`` counts (``FIELDS``).

    Empty-mask values: IoU, Dice, F-measure and Boundary IoU 1.0 when both are
    empty; Trimap IoU 1.0/0.0 when G is empty and P is/isn't; boundary F 1.0
    when both contours are empty, 0.0 when exactly one is.
    """
    n = counts.shape[0]
    out = np.empty((n, 6), np.float64)
    for k in range(n):
        tp, fp, fn, bi, bp, bg, ti, tu, cp, cg, mp, mg = counts[k]
        out[k, 0] = _ratio(float(tp), float(tp + fp + fn), 1.0)
        out[k, 1] = _ratio(2.0 * tp, float(2 * tp + fp + fn), 1.0)
        out[k, 2] = out[k, 1]
        out[k, 3] = _ratio(float(bi), float(bp + bg - bi), 1.0)
        if tp + fn == 0:
            out[k, 4] = 1.0 if fp == 0 else 0.0
        else:
            out[k, 4] = _ratio(float(ti), float(tu), 1.0)
        if cp == 0 and cg == 0:
            out[k, 5] = 1.0
        elif cp == 0 or cg == 0:
            out[k, 5] = 0.0
        else:
            prec = mp / cp
            rec = mg / cg
            out[k, 5] = _ratio(2.0 * prec * rec, prec + rec, 0.0)
    return out
