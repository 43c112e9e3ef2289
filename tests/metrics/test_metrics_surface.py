"""ASSD, MSSD, HD95 and the directed surface distances (CHAOS convention)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from mask_refs import (
    liver_blob,
    mask_pairs,
    pairwise_min_dist,
    spacings,
    surface_distances_ref,
    surface_ref,
    surface_scores_ref,
)

from liverrt.metrics import SurfaceDistances, assd, hd95, mssd, surface, surface_distances


def _check(p, g, spacing):
    sd = SurfaceDistances.compute(p, g, spacing)
    ra, rb = surface_distances_ref(p, g, spacing)
    np.testing.assert_allclose(sd.pred_to_gt, ra, rtol=0, atol=1e-9)
    np.testing.assert_allclose(sd.gt_to_pred, rb, rtol=0, atol=1e-9)
    ref = surface_scores_ref(p, g, spacing)
    for k, v in sd.scores().items():
        assert v == pytest.approx(ref[k], abs=1e-9), k


@settings(max_examples=200, deadline=None)
@given(mask_pairs(ndim=3, max_side=12), spacings(3))
def test_3d_matches_reference(pair, spacing):
    _check(*pair, spacing)


@settings(max_examples=150, deadline=None)
@given(mask_pairs(ndim=2, max_side=20), spacings(2))
def test_2d_matches_reference(pair, spacing):
    _check(*pair, spacing)


def test_functions_agree_with_one_pass():
    g = liver_blob((12, 40, 44), seed=2)
    p = liver_blob((12, 40, 44), seed=2, jitter=2.0)
    spacing = (2.5, 0.75, 0.75)
    sd = SurfaceDistances.compute(p, g, spacing)
    assert assd(p, g, spacing) == sd.assd
    assert mssd(p, g, spacing) == sd.mssd
    assert hd95(p, g, spacing) == sd.hd95
    a, b = surface_distances(p, g, spacing)
    np.testing.assert_array_equal(a, sd.pred_to_gt)
    # brute force on the surfaces, independent of any distance transform
    ref = pairwise_min_dist(surface_ref(p), surface_ref(g), spacing)
    np.testing.assert_allclose(a, ref, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(surface(p), surface_ref(p))
    _check(p, g, spacing)


def test_empty_rules():
    e = np.zeros((3, 8, 8), bool)
    m = e.copy()
    m[1, 2:5, 2:5] = True
    assert assd(e, e, (1, 1, 1)) == mssd(e, e, (1, 1, 1)) == hd95(e, e, (1, 1, 1)) == 0.0
    for a, b in ((m, e), (e, m)):
        assert math.isinf(assd(a, b, (1, 1, 1)))
        assert math.isinf(mssd(a, b, (1, 1, 1)))
        assert math.isinf(hd95(a, b, (1, 1, 1)))
    full = np.ones((3, 8, 8), bool)
    # outside counts as foreground: a full mask has no surface
    assert not surface(full).any()
    assert hd95(full, full, (1, 1, 1)) == 0.0
    assert math.isinf(hd95(full, m, (1, 1, 1)))


def test_known_shift_anisotropic():
    g = np.zeros((6, 20, 20), bool)
    g[1:5, 5:15, 5:15] = True
    p = np.roll(g, 2, axis=2)  # shift 2 columns
    # every surface voxel has a partner at most 2 columns away
    assert mssd(p, g, (3.0, 1.0, 0.5)) == pytest.approx(1.0)
    _check(p, g, (3.0, 1.0, 0.5))
    _check(p, g, (0.5, 2.0, 1.5))


def test_two_regions():
    g = np.zeros((30, 30), bool)
    g[2:10, 2:10] = True
    p = g.copy()
    p[20:25, 20:25] = True
    _check(p, g, (0.8, 0.8))
    assert mssd(p, g, (1.0, 1.0)) == pytest.approx(np.hypot(15, 15))  # (24, 24) to (9, 9)
