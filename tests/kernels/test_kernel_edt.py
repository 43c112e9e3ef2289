"""Exact anisotropic EDT and surface distances against SciPy and brute force."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from mask_refs import (
    edt_ref,
    mask_pairs,
    masks,
    pairwise_min_dist,
    spacings,
    surface_distances_ref,
    surface_ref,
)

from liverrt.kernels.edt import edt_sq, edt_sq_at, surface_distances_3d


def u8(a):
    return np.ascontiguousarray(a).view(np.uint8)


@settings(max_examples=300, deadline=None)
@given(masks(ndim=3, max_side=14), spacings(3))
def test_edt_matches_scipy(feat, spacing):
    got = np.sqrt(edt_sq(u8(feat), np.array(spacing)))
    ref = edt_ref(feat, spacing)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(masks(ndim=2, max_side=20), spacings(2))
def test_edt_2d_as_one_slice(feat, spacing):
    got = np.sqrt(edt_sq(u8(feat)[None], np.array((1.0, *spacing))))[0]
    np.testing.assert_allclose(got, edt_ref(feat, spacing), rtol=0, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(mask_pairs(ndim=3, max_side=10), spacings(3))
def test_edt_at_queries_matches_brute_force(pair, spacing):
    feat, query = pair
    got = np.sqrt(edt_sq_at(u8(feat), u8(query), np.array(spacing)))
    np.testing.assert_allclose(got, pairwise_min_dist(query, feat, spacing), rtol=0, atol=1e-9)


@settings(max_examples=300, deadline=None)
@given(mask_pairs(ndim=3, max_side=12), spacings(3))
def test_surface_distances(pair, spacing):
    p, g = pair
    a, b, n_p, n_g = surface_distances_3d(u8(p), u8(g), np.array(spacing))
    ra, rb = surface_distances_ref(p, g, spacing)
    assert (n_p, n_g) == (surface_ref(p).sum(), surface_ref(g).sum())
    np.testing.assert_allclose(a, ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(b, rb, rtol=0, atol=1e-9)


def test_single_feature_anisotropic():
    feat = np.zeros((3, 4, 5), bool)
    feat[1, 2, 3] = True
    spacing = (2.5, 0.7, 1.3)
    got = np.sqrt(edt_sq(u8(feat), np.array(spacing)))
    z, y, x = np.indices(feat.shape)
    ref = np.sqrt(((z - 1) * 2.5) ** 2 + ((y - 2) * 0.7) ** 2 + ((x - 3) * 1.3) ** 2)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


def test_no_feature_is_inf_and_both_empty():
    empty = np.zeros((2, 3, 4), bool)
    assert np.isinf(edt_sq(u8(empty), np.ones(3))).all()
    a, b, n_p, n_g = surface_distances_3d(u8(empty), u8(empty), np.ones(3))
    assert a.size == b.size == n_p == n_g == 0
    one = empty.copy()
    one[1, 1, 1] = True
    a, b, n_p, n_g = surface_distances_3d(u8(one), u8(empty), np.ones(3))
    assert (n_p, n_g) == (1, 0) and np.isinf(a).all() and b.size == 0


def test_two_regions_and_border():
    p = np.zeros((4, 20, 20), bool)
    g = np.zeros_like(p)
    g[:, 0:6, 0:6] = True  # touches the border: no surface along the array edge
    p[:, 0:6, 0:6] = True
    p[1:3, 14:18, 14:18] = True
    spacing = (3.0, 0.8, 0.8)
    a, b, _, _ = surface_distances_3d(u8(p), u8(g), np.array(spacing))
    ra, rb = surface_distances_ref(p, g, spacing)
    np.testing.assert_allclose(a, ra, atol=1e-9)
    np.testing.assert_allclose(b, rb, atol=1e-9)
    np.testing.assert_allclose(
        a, pairwise_min_dist(surface_ref(p), surface_ref(g), spacing), atol=1e-9
    )
