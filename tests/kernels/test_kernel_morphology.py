"""Bands, square dilation, contours and CHAOS surfaces against scipy.ndimage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_refs import band_ref, contour_ref, dilate_ref, masks, surface_ref

from liverrt.kernels.morphology import (
    boundary_band_2d,
    boundary_band_stack,
    contour_2d,
    contour_3d,
    contour_stack,
    dilate_square_2d,
    surface_3d,
)


def u8(a):
    return np.ascontiguousarray(a).view(np.uint8)


@settings(max_examples=300, deadline=None)
@given(masks(ndim=2, max_side=20), st.integers(0, 12))
def test_boundary_band(m, d):
    np.testing.assert_array_equal(boundary_band_2d(u8(m), d).view(bool), band_ref(m, d))


@settings(max_examples=100, deadline=None)
@given(masks(ndim=3, max_side=14), st.integers(0, 5))
def test_boundary_band_stack(m, d):
    ref = np.stack([band_ref(s, d) for s in m])
    np.testing.assert_array_equal(boundary_band_stack(u8(m), d).view(bool), ref)


@settings(max_examples=300, deadline=None)
@given(masks(ndim=2, max_side=20), st.integers(0, 12))
def test_dilate_square(m, r):
    np.testing.assert_array_equal(dilate_square_2d(u8(m), r).view(bool), dilate_ref(m, r))


@settings(max_examples=300, deadline=None)
@given(masks(ndim=2, max_side=20))
def test_contour_2d(m):
    np.testing.assert_array_equal(contour_2d(u8(m)).view(bool), contour_ref(m))


@settings(max_examples=200, deadline=None)
@given(masks(ndim=3, max_side=12))
def test_contour_3d_and_stack(m):
    np.testing.assert_array_equal(contour_3d(u8(m)).view(bool), contour_ref(m))
    ref2d = np.stack([contour_ref(s) for s in m])
    np.testing.assert_array_equal(contour_stack(u8(m)).view(bool), ref2d)


@settings(max_examples=200, deadline=None)
@given(masks(ndim=3, max_side=12))
def test_surface_3d(m):
    np.testing.assert_array_equal(surface_3d(u8(m)).view(bool), surface_ref(m))


@settings(max_examples=100, deadline=None)
@given(masks(ndim=2, max_side=16))
def test_surface_of_2d_mask_as_one_slice(m):
    np.testing.assert_array_equal(surface_3d(u8(m)[None])[0].view(bool), surface_ref(m))


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2), (3, 3), (9, 11)])
def test_full_and_empty_masks(shape):
    full, empty = np.ones(shape, bool), np.zeros(shape, bool)
    for m in (full, empty):
        for d in (0, 1, 3):
            np.testing.assert_array_equal(boundary_band_2d(u8(m), d).view(bool), band_ref(m, d))
            np.testing.assert_array_equal(dilate_square_2d(u8(m), d).view(bool), dilate_ref(m, d))
        np.testing.assert_array_equal(contour_2d(u8(m)).view(bool), contour_ref(m))
        np.testing.assert_array_equal(surface_3d(u8(m)[None])[0].view(bool), surface_ref(m))
    # a full image: every pixel within d of the border is band, the surface is empty
    assert not surface_3d(u8(full)[None]).any()
    assert contour_2d(u8(full)).sum() == full.sum() - max(0, shape[0] - 2) * max(0, shape[1] - 2)


def test_one_pixel_and_border_touching():
    m = np.zeros((6, 6), bool)
    m[0, 0] = True
    assert boundary_band_2d(u8(m), 2).view(bool)[0, 0]
    assert contour_2d(u8(m)).view(bool)[0, 0]
    # the CHAOS surface ignores the array edge: a one-pixel mask in the corner is still surface
    assert surface_3d(u8(m)[None]).view(bool)[0, 0, 0]
    m[:, :3] = True  # touches three borders
    np.testing.assert_array_equal(boundary_band_2d(u8(m), 1).view(bool), band_ref(m, 1))
    np.testing.assert_array_equal(surface_3d(u8(m)[None])[0].view(bool), surface_ref(m))
