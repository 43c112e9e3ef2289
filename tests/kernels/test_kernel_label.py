"""Connected components, keep-largest-k and hole filling against scipy.ndimage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_refs import largest_ref, masks, structure
from scipy import ndimage as ndi

from liverrt.kernels.label import (
    backward_offsets,
    fill_holes_2d,
    fill_holes_stack,
    keep_largest,
    label_3d,
    label_stack_2d,
    largest_components_3d,
    largest_components_stack_2d,
)


def u8(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize(
    ("ndim", "conn", "n"), [(2, 4, 2), (2, 8, 4), (3, 6, 3), (3, 18, 9), (3, 26, 13)]
)
def test_backward_offsets(ndim, conn, n):
    offs = backward_offsets(ndim, conn)
    assert offs.shape == (n, 3)
    assert all(tuple(o) < (0, 0, 0) for o in offs)


@settings(max_examples=200, deadline=None)
@given(masks(ndim=2, max_side=20), st.sampled_from([4, 8]))
def test_label_2d_matches_scipy(m, conn):
    labels, n = label_3d(u8(m)[None], backward_offsets(2, conn))
    ref, nref = ndi.label(m, structure(2, conn))
    assert n == nref
    np.testing.assert_array_equal(labels[0], ref)


@settings(max_examples=200, deadline=None)
@given(masks(ndim=3, max_side=10), st.sampled_from([6, 18, 26]))
def test_label_3d_matches_scipy(m, conn):
    labels, n = label_3d(u8(m), backward_offsets(3, conn))
    ref, nref = ndi.label(m, structure(3, conn))
    assert n == nref and labels.dtype == np.int32
    np.testing.assert_array_equal(labels, ref)


@settings(max_examples=100, deadline=None)
@given(masks(ndim=3, max_side=12), st.sampled_from([4, 8]))
def test_label_stack(m, conn):
    labels, counts = label_stack_2d(u8(m), backward_offsets(2, conn))
    for k in range(len(m)):
        ref, nref = ndi.label(m[k], structure(2, conn))
        assert counts[k] == nref
        np.testing.assert_array_equal(labels[k], ref)


@settings(max_examples=200, deadline=None)
@given(masks(ndim=3, max_side=10), st.sampled_from([6, 26]), st.integers(1, 4))
def test_largest_components_3d(m, conn, k):
    got = largest_components_3d(u8(m), backward_offsets(3, conn), k).view(bool)
    np.testing.assert_array_equal(got, largest_ref(m, k, conn))


@settings(max_examples=100, deadline=None)
@given(masks(ndim=3, max_side=12), st.integers(1, 3))
def test_largest_components_stack(m, k):
    got = largest_components_stack_2d(u8(m), backward_offsets(2, 8), k).view(bool)
    ref = np.stack([largest_ref(s, k, 8) for s in m])
    np.testing.assert_array_equal(got, ref)


def test_keep_largest_ties_go_to_the_first_component():
    m = np.zeros((1, 5, 9), bool)
    m[0, 1:3, 0:2] = True  # 4 px, label 1
    m[0, 1:3, 4:6] = True  # 4 px, label 2
    m[0, 4, 8] = True  # 1 px, label 3
    labels, n = label_3d(u8(m), backward_offsets(2, 8))
    kept = keep_largest(labels, n, 1).view(bool)
    np.testing.assert_array_equal(kept, labels == 1)
    assert keep_largest(labels, n, 5).view(bool).sum() == m.sum()


@settings(max_examples=300, deadline=None)
@given(masks(ndim=2, max_side=20))
def test_fill_holes_2d(m):
    np.testing.assert_array_equal(fill_holes_2d(u8(m)).view(bool), ndi.binary_fill_holes(m))


@settings(max_examples=100, deadline=None)
@given(masks(ndim=3, max_side=12))
def test_fill_holes_stack(m):
    ref = np.stack([ndi.binary_fill_holes(s) for s in m])
    np.testing.assert_array_equal(fill_holes_stack(u8(m)).view(bool), ref)


def test_fill_holes_ring_and_border_gap():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    m[3, 3] = False  # a hole
    assert fill_holes_2d(u8(m)).view(bool)[3, 3]
    m[3, 1:4] = False  # now connected to the outside
    m[3, 0] = False
    np.testing.assert_array_equal(fill_holes_2d(u8(m)).view(bool), ndi.binary_fill_holes(m))
    # a diagonal (8-connected) gap does not let the background leak: 4-connectivity
    d = np.zeros((5, 5), bool)
    d[1, 1:4] = d[3, 1:4] = d[2, 1] = d[2, 3] = True
    d[1, 3] = False
    d[0, 4] = False
    np.testing.assert_array_equal(fill_holes_2d(u8(d)).view(bool), ndi.binary_fill_holes(d))
