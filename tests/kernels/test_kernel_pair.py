"""The fused per-slice counts against counts built from the SciPy references."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_refs import band_ref, contour_ref, dilate_ref, mask_pairs

from liverrt.kernels.pair import (
    DO_ALL,
    DO_BAND,
    DO_BOUNDARY_F,
    DO_TRIMAP,
    FIELDS,
    byte_words,
    pair_counts_2d,
    pair_counts_stack,
)


def bw(a):
    return byte_words(np.ascontiguousarray(a).view(np.uint8))


def args(p, g):
    """The four array arguments of the pair kernels."""
    p8, g8 = np.ascontiguousarray(p).view(np.uint8), np.ascontiguousarray(g).view(np.uint8)
    return p8, g8, byte_words(p8), byte_words(g8)


def counts_ref(p, g, d, width, tau):
    bp, bg = band_ref(p, d), band_ref(g, d)
    cp, cg = contour_ref(p), contour_ref(g)
    t = dilate_ref(cg, width)

    def matched(a, b):
        pa, pb = np.argwhere(a), np.argwhere(b)
        if len(pa) == 0 or len(pb) == 0:
            return 0
        d2 = ((pa[:, None] - pb[None]) ** 2).sum(-1)
        return int((d2.min(1) <= tau * tau).sum())

    return np.array(
        [
            (p & g).sum(),
            (p & ~g).sum(),
            (~p & g).sum(),
            (bp & bg).sum(),
            bp.sum(),
            bg.sum(),
            (p & g & t).sum(),
            ((p | g) & t).sum(),
            cp.sum(),
            cg.sum(),
            matched(cp, cg),
            matched(cg, cp),
        ]
    )


def test_fields_and_byte_words():
    assert len(FIELDS) == 12
    m = np.zeros((3, 13), bool)
    m[1, 12] = True
    words = bw(m)
    assert words.dtype == np.uint64 and words.shape == (3, 2)
    assert words[1, 1] == 1 << 32  # byte 12 = byte 4 of the second word
    assert bw(np.ones((2, 16), bool)).base is not None  # a view when W % 8 == 0


@settings(max_examples=300, deadline=None)
@given(mask_pairs(ndim=2, max_side=20), st.integers(0, 6), st.integers(0, 6), st.integers(1, 5))
def test_pair_counts(pair, d, width, tau):
    p, g = pair
    got = pair_counts_2d(*args(p, g), d, width, tau, DO_ALL)
    np.testing.assert_array_equal(got, counts_ref(p, g, d, width, tau))


@settings(max_examples=100, deadline=None)
@given(mask_pairs(ndim=3, max_side=14), st.integers(1, 4), st.integers(0, 4), st.integers(1, 3))
def test_pair_counts_stack_and_flags(pair, d, width, tau):
    p, g = pair
    got = pair_counts_stack(*args(p, g), d, width, tau, DO_ALL)
    ref = np.stack([counts_ref(p[k], g[k], d, width, tau) for k in range(len(p))])
    np.testing.assert_array_equal(got, ref)
    parts = {DO_BAND: slice(3, 6), DO_TRIMAP: slice(6, 8), DO_BOUNDARY_F: slice(8, 12)}
    for flag, cols in parts.items():
        one = pair_counts_stack(*args(p, g), d, width, tau, flag)
        np.testing.assert_array_equal(one[:, :3], ref[:, :3])
        np.testing.assert_array_equal(one[:, cols], ref[:, cols])
        others = np.ones(12, bool)
        others[:3] = False
        others[cols] = False
        assert not one[:, others].any()


def test_two_regions_far_apart():
    p = np.zeros((30, 40), bool)
    g = np.zeros_like(p)
    p[2:8, 2:8] = True
    g[2:8, 2:8] = True
    p[20:28, 30:39] = True  # a false-positive region far from the ground truth
    for d, width, tau in [(2, 2, 2), (14, 14, 6), (40, 70, 30)]:
        got = pair_counts_2d(*args(p, g), d, width, tau, DO_ALL)
        np.testing.assert_array_equal(got, counts_ref(p, g, d, width, tau))


def test_wide_slices_cross_word_boundaries():
    rng = np.random.default_rng(4)
    for w in (63, 64, 65, 130, 200):
        p = rng.random((9, w)) < 0.6
        g = rng.random((9, w)) < 0.6
        got = pair_counts_2d(*args(p, g), 3, 70, 5, DO_ALL)
        np.testing.assert_array_equal(got, counts_ref(p, g, 3, 70, 5))
