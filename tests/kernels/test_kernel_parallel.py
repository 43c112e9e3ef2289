"""The thread-pool paths (inputs above PARALLEL_MIN_VOXELS) give the serial results."""

from __future__ import annotations

import numpy as np
import pytest
from mask_refs import (
    band_ref,
    contour_ref,
    dilate_ref,
    edt_ref,
    liver_blob,
    surface_distances_ref,
    surface_ref,
)
from scipy import ndimage as ndi

from liverrt.kernels import counts, edt, label, morphology, pair

SHAPE = (6, 150, 160)  # 144,000 voxels


@pytest.fixture(scope="module")
def stack():
    g = liver_blob(SHAPE, seed=11)
    p = liver_blob(SHAPE, seed=11, jitter=2.0)
    assert counts.pick("serial", "parallel", p) == "parallel"
    return p, g


def u8(a):
    return np.ascontiguousarray(a).view(np.uint8)


def test_counts_and_bbox(stack):
    p, g = stack
    rows = counts.confusion_counts_rows(u8(p).reshape(6, -1), u8(g).reshape(6, -1))
    np.testing.assert_array_equal(rows[:, 0], (p & g).sum(axis=(1, 2)))
    idx = np.argwhere(p | g)
    box = counts.union_bbox_3d(u8(p), u8(g))
    assert box == tuple(
        int(v) for lo, hi in zip(idx.min(0), idx.max(0), strict=True) for v in (lo, hi)
    )


def test_morphology(stack):
    p, _ = stack
    np.testing.assert_array_equal(
        morphology.boundary_band_stack(u8(p), 3).view(bool), np.stack([band_ref(s, 3) for s in p])
    )
    np.testing.assert_array_equal(
        morphology.contour_stack(u8(p)).view(bool), np.stack([contour_ref(s) for s in p])
    )
    np.testing.assert_array_equal(morphology.contour_3d(u8(p)).view(bool), contour_ref(p))
    np.testing.assert_array_equal(morphology.surface_3d(u8(p)).view(bool), surface_ref(p))


def test_pair_counts(stack):
    p, g = stack
    p8, g8 = u8(p), u8(g)
    pw, gw = pair.byte_words(p8), pair.byte_words(g8)
    got = pair.pair_counts_stack(p8, g8, pw, gw, 4, 3, 2, pair.DO_ALL)
    for k in range(len(p)):
        one = pair.pair_counts_2d(p8[k], g8[k], pw[k], gw[k], 4, 3, 2, pair.DO_ALL)
        np.testing.assert_array_equal(got[k], one)
        t = dilate_ref(contour_ref(g[k]), 3)
        assert got[k, 7] == ((p[k] | g[k]) & t).sum()
        assert got[k, 3] == (band_ref(p[k], 4) & band_ref(g[k], 4)).sum()


def test_edt_and_surface_distances(stack):
    p, g = stack
    spacing = (2.5, 0.8, 0.7)
    feat = surface_ref(g)
    got = np.sqrt(edt.edt_sq(u8(feat), np.array(spacing)))
    np.testing.assert_allclose(got, edt_ref(feat, spacing), rtol=0, atol=1e-9)
    a, b, _, _ = edt.surface_distances_3d(u8(p), u8(g), np.array(spacing))
    ra, rb = surface_distances_ref(p, g, spacing)
    np.testing.assert_allclose(a, ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(b, rb, rtol=0, atol=1e-9)


def test_label_fill_largest(stack):
    p, _ = stack
    m = p ^ (np.random.default_rng(0).random(p.shape) < 0.05)
    offs = label.backward_offsets(2, 8)
    labels, ns = label.label_stack_2d(u8(m), offs)
    kept = label.largest_components_stack_2d(u8(m), offs, 2).view(bool)
    filled = label.fill_holes_stack(u8(m)).view(bool)
    s8 = ndi.generate_binary_structure(2, 2)
    for k in range(len(m)):
        ref, n = ndi.label(m[k], s8)
        assert ns[k] == n
        np.testing.assert_array_equal(labels[k], ref)
        sizes = np.bincount(ref.ravel())[1:]
        keep = np.argsort(-sizes, kind="stable")[:2] + 1
        np.testing.assert_array_equal(kept[k], np.isin(ref, keep))
        np.testing.assert_array_equal(filled[k], ndi.binary_fill_holes(m[k]))
    lab3, n3 = label.label_3d(u8(m), label.backward_offsets(3, 26))
    ref3, nref3 = ndi.label(m, ndi.generate_binary_structure(3, 3))
    assert n3 == nref3
    np.testing.assert_array_equal(lab3, ref3)
