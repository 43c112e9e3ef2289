"""Confusion counts and bounding boxes against NumPy."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from mask_refs import mask_pairs

from liverrt.kernels.counts import (
    PARALLEL_MIN_VOXELS,
    confusion_counts,
    confusion_counts_rows,
    pick,
    union_bbox_3d,
)
from liverrt.kernels.pair import byte_words, scan


def u8(a):
    return np.ascontiguousarray(a).view(np.uint8)


def bbox_ref(m):
    idx = np.argwhere(m)
    if len(idx) == 0:
        return None
    return tuple(v for lo, hi in zip(idx.min(0), idx.max(0), strict=True) for v in (lo, hi))


@settings(max_examples=200, deadline=None)
@given(mask_pairs(ndim=3))
def test_confusion_counts(pair):
    p, g = pair
    tp, fp, fn = confusion_counts(u8(p).ravel(), u8(g).ravel())
    assert (tp, fp, fn) == ((p & g).sum(), (p & ~g).sum(), (~p & g).sum())
    rows = confusion_counts_rows(u8(p).reshape(len(p), -1), u8(g).reshape(len(p), -1))
    assert rows.dtype == np.int64 and rows.shape == (len(p), 3)
    np.testing.assert_array_equal(rows[:, 0], (p & g).sum(axis=(1, 2)))
    np.testing.assert_array_equal(rows[:, 1], (p & ~g).sum(axis=(1, 2)))
    np.testing.assert_array_equal(rows[:, 2], (~p & g).sum(axis=(1, 2)))


@settings(max_examples=200, deadline=None)
@given(mask_pairs(ndim=2, max_side=40))
def test_scan_counts_and_bbox_2d(pair):
    p, g = pair
    r0, r1, c0, c1, tp, fp, fn = scan(byte_words(u8(p)), byte_words(u8(g)))
    assert (tp, fp, fn) == ((p & g).sum(), (p & ~g).sum(), (~p & g).sum())
    ref = bbox_ref(p | g)
    if ref is None:
        assert r1 < 0
    else:
        assert (r0, r1, c0, c1) == ref


@settings(max_examples=200, deadline=None)
@given(mask_pairs(ndim=3))
def test_union_bbox_3d(pair):
    p, g = pair
    assert union_bbox_3d(u8(p), u8(g)) == bbox_ref(p | g)


def test_one_pixel_at_corner():
    p = np.zeros((4, 21), bool)
    p[3, 20] = True
    g = np.zeros_like(p)
    assert scan(byte_words(u8(p)), byte_words(u8(g)))[:4] == (3, 3, 20, 20)
    assert union_bbox_3d(u8(p)[None], u8(g)[None]) == (0, 0, 3, 3, 20, 20)


def test_pick():
    small = np.zeros((4, 8, 8), np.uint8)
    big = np.zeros((2, PARALLEL_MIN_VOXELS), np.uint8)
    assert pick("serial", "parallel", small) == "serial"
    assert pick("serial", "parallel", big[:1]) == "serial"  # one item: nothing to share
    assert pick("serial", "parallel", big) == "parallel"
