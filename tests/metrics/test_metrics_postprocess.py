"""label, largest_components and fill_holes through the public API."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_refs import largest_ref, masks, structure
from scipy import ndimage as ndi

from liverrt.errors import InputError
from liverrt.metrics import fill_holes, label, largest_components


@settings(max_examples=100, deadline=None)
@given(masks(ndim=2, max_side=20), st.sampled_from([None, 4, 8]), st.integers(1, 3))
def test_2d(m, conn, k):
    c = 8 if conn is None else conn
    labels, n = label(m, conn)
    ref, nref = ndi.label(m, structure(2, c))
    assert n == nref and labels.shape == m.shape
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(largest_components(m, k, conn), largest_ref(m, k, c))
    np.testing.assert_array_equal(fill_holes(m), ndi.binary_fill_holes(m))


@settings(max_examples=100, deadline=None)
@given(masks(ndim=3, max_side=12), st.sampled_from([None, 6, 18, 26]), st.integers(1, 3))
def test_3d(m, conn, k):
    c = 26 if conn is None else conn
    labels, n = label(m, conn)
    ref, nref = ndi.label(m, structure(3, c))
    assert n == nref
    np.testing.assert_array_equal(labels, ref)
    np.testing.assert_array_equal(largest_components(m, k, conn), largest_ref(m, k, c))
    np.testing.assert_array_equal(fill_holes(m), np.stack([ndi.binary_fill_holes(s) for s in m]))


@settings(max_examples=50, deadline=None)
@given(masks(ndim=3, max_side=12), st.sampled_from([4, 8]))
def test_per_slice(m, conn):
    labels, counts = label(m, conn, per_slice=True)
    assert counts.shape == (m.shape[0],)
    kept = largest_components(m, 1, conn, per_slice=True)
    for s in range(m.shape[0]):
        ref, nref = ndi.label(m[s], structure(2, conn))
        assert counts[s] == nref
        np.testing.assert_array_equal(labels[s], ref)
        np.testing.assert_array_equal(kept[s], largest_ref(m[s], 1, conn))


def test_two_regions_keep_largest():
    m = np.zeros((2, 10, 10), bool)
    m[0, 0:3, 0:3] = True
    m[1, 6:10, 6:10] = True
    assert label(m, 26)[1] == 2
    kept = largest_components(m)
    assert kept.sum() == 16 and kept[1, 9, 9]
    assert largest_components(m, 2).sum() == m.sum()
    assert not largest_components(np.zeros((5, 5), bool)).any()


@pytest.mark.parametrize(
    ("mask", "conn"),
    [(np.zeros((4, 4), bool), 6), (np.zeros((2, 4, 4), bool), 8), (np.zeros((4, 4), bool), 5)],
)
def test_bad_connectivity(mask, conn):
    with pytest.raises(InputError, match="connectivity"):
        label(mask, conn)
    with pytest.raises(InputError, match="connectivity"):
        largest_components(mask, 1, conn)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_k(k):
    with pytest.raises(InputError, match="k:"):
        largest_components(np.zeros((4, 4), bool), k)
