"""Boundary IoU, Trimap IoU and boundary F against naive definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mask_refs import (
    band_ref,
    boundary_f_ref,
    boundary_iou_ref,
    contour_ref,
    d_ref,
    dice_ref,
    iou_ref,
    liver_blob,
    mask_pairs,
    slice_mean_ref,
    tau_ref,
    trimap_ref,
)

from liverrt.metrics import (
    SLICE_COUNT_FIELDS,
    SLICE_SCORES,
    band_width,
    boundary_band,
    boundary_f,
    boundary_iou,
    boundary_tolerance,
    contour,
    slice_counts,
    slice_metrics,
    table6_scores,
    trimap_iou,
)

ratios = st.sampled_from([0.02, 0.05, 0.1, 0.2, 0.4])


def test_band_width_and_tolerance_for_512():
    assert band_width((512, 512)) == 14
    assert boundary_tolerance((512, 512)) == 6
    assert band_width((200, 512, 512)) == 14
    assert band_width((10, 10)) == 1  # max(1, round(0.28))
    for shape in [(1, 1), (7, 9), (64, 48), (333, 512)]:
        assert band_width(shape) == d_ref(shape)
        assert band_width(shape, 0.1) == d_ref(shape, 0.1)
        assert boundary_tolerance(shape) == tau_ref(shape)


@settings(max_examples=300, deadline=None)
@given(mask_pairs(ndim=2, max_side=24), ratios, st.sampled_from([0.008, 0.05, 0.2]))
def test_2d_metrics_match_naive(pair, ratio, tol):
    p, g = pair
    assert boundary_iou(p, g, dilation_ratio=ratio) == pytest.approx(
        boundary_iou_ref(p, g, ratio), abs=1e-12
    )
    d = d_ref(p.shape, ratio)
    assert trimap_iou(p, g, dilation_ratio=ratio) == pytest.approx(trimap_ref(p, g, d), abs=1e-12)
    assert boundary_f(p, g, tolerance_ratio=tol) == pytest.approx(
        boundary_f_ref(p, g, tol), abs=1e-12
    )


@settings(max_examples=150, deadline=None)
@given(mask_pairs(ndim=2, max_side=20), st.integers(0, 6))
def test_trimap_width(pair, width):
    p, g = pair
    assert trimap_iou(p, g, width=width) == pytest.approx(trimap_ref(p, g, width), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(mask_pairs(ndim=3, max_side=16), ratios)
def test_3d_is_mean_over_nonempty_slices(pair, ratio):
    p, g = pair
    ref_b = slice_mean_ref(boundary_iou_ref, p, g, ratio=ratio)
    assert boundary_iou(p, g, dilation_ratio=ratio) == pytest.approx(ref_b, abs=1e-12)
    ref_t = slice_mean_ref(trimap_ref, p, g)
    assert trimap_iou(p, g) == pytest.approx(ref_t, abs=1e-12)
    ref_f = slice_mean_ref(boundary_f_ref, p, g)
    assert boundary_f(p, g) == pytest.approx(ref_f, abs=1e-12)
    s = table6_scores(p, g, dilation_ratio=ratio)
    assert s["n"] == sum(1 for k in range(len(p)) if p[k].any() or g[k].any())
    assert s["mask_iou"] == pytest.approx(slice_mean_ref(iou_ref, p, g), abs=1e-12)
    assert s["dice"] == pytest.approx(slice_mean_ref(dice_ref, p, g), abs=1e-12)
    assert s["f_measure"] == s["dice"]
    assert s["boundary_iou"] == pytest.approx(ref_b, abs=1e-12)
    assert s["trimap_iou"] == pytest.approx(
        slice_mean_ref(trimap_ref, p, g, width=d_ref(p.shape, ratio)), abs=1e-12
    )


def test_slice_metrics_shapes():
    p = liver_blob((3, 40, 48), seed=1)
    g = liver_blob((3, 40, 48), seed=1, jitter=1.0)
    c = slice_counts(p, g)
    assert c.shape == (3, len(SLICE_COUNT_FIELDS)) and c.dtype == np.int64
    s = slice_metrics(p, g)
    assert set(s) == {*SLICE_SCORES, "nonempty"}
    assert all(v.shape == (3,) for v in s.values())
    assert slice_counts(p[0], g[0]).shape == (1, len(SLICE_COUNT_FIELDS))


def test_realistic_blob_512():
    g = liver_blob((512, 512), seed=3)
    p = liver_blob((512, 512), seed=3, jitter=1.5)
    s = table6_scores(p, g)
    assert s["boundary_iou"] == pytest.approx(boundary_iou_ref(p, g), abs=1e-12)
    assert s["trimap_iou"] == pytest.approx(trimap_ref(p, g), abs=1e-12)
    assert s["boundary_f"] == pytest.approx(boundary_f_ref(p, g), abs=1e-12)
    assert 0.5 < s["boundary_iou"] < s["mask_iou"] < 1.0


def test_empty_cases():
    e = np.zeros((20, 20), bool)
    m = np.zeros_like(e)
    m[5:9, 5:9] = True
    for fn in (boundary_iou, trimap_iou, boundary_f):
        assert fn(e, e) == 1.0
        assert fn(m, m) == 1.0
        assert fn(m, e) == 0.0
        assert fn(e, m) == 0.0
    assert table6_scores(np.zeros((3, 8, 8), bool), np.zeros((3, 8, 8), bool))["n"] == 0
    assert boundary_f(np.zeros((3, 8, 8), bool), np.zeros((3, 8, 8), bool)) == 1.0


def test_one_pixel_and_full():
    one = np.zeros((9, 9), bool)
    one[4, 4] = True
    full = np.ones((9, 9), bool)
    assert boundary_iou(one, one) == 1.0
    assert boundary_iou(full, one) == pytest.approx(boundary_iou_ref(full, one))
    assert trimap_iou(full, one) == pytest.approx(trimap_ref(full, one))
    assert boundary_f(full, one) == pytest.approx(boundary_f_ref(full, one))


def test_band_and_contour_helpers():
    m = liver_blob((2, 30, 40), seed=5)
    d = band_width(m.shape)
    np.testing.assert_array_equal(boundary_band(m), np.stack([band_ref(s, d) for s in m]))
    np.testing.assert_array_equal(boundary_band(m[0], width=4), band_ref(m[0], 4))
    np.testing.assert_array_equal(contour(m[0]), contour_ref(m[0]))
    np.testing.assert_array_equal(contour(m), contour_ref(m))
