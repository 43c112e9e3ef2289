"""Every public function rejects bad input with an InputError that says what was expected."""

from __future__ import annotations

import numpy as np
import pytest

from liverrt.errors import InputError
from liverrt.metrics import (
    MetricAccumulator,
    SurfaceDistances,
    assd,
    boundary_band,
    boundary_f,
    boundary_iou,
    contour,
    dice,
    f_measure,
    fill_holes,
    hd95,
    label,
    mask_iou,
    mssd,
    ravd,
    slice_counts,
    surface,
    surface_distances,
    table6_scores,
    trimap_iou,
)

PAIR_FUNCS = [
    mask_iou,
    dice,
    f_measure,
    ravd,
    boundary_iou,
    trimap_iou,
    boundary_f,
    table6_scores,
    slice_counts,
]
DIST_FUNCS = [assd, mssd, hd95, surface_distances, SurfaceDistances.compute]
SINGLE_FUNCS = [label, fill_holes, surface, contour, boundary_band]


@pytest.mark.parametrize("fn", PAIR_FUNCS)
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(InputError, match=r"\(4, 5\).*\(5, 4\)"):
        fn(np.zeros((4, 5), bool), np.zeros((5, 4), bool))


@pytest.mark.parametrize("fn", PAIR_FUNCS)
def test_no_broadcasting(fn):
    with pytest.raises(InputError, match="Shape mismatch"):
        fn(np.zeros((1, 4, 5), bool), np.zeros((3, 4, 5), bool))


@pytest.mark.parametrize("fn", PAIR_FUNCS + SINGLE_FUNCS)
def test_non_binary(fn):
    bad = np.full((4, 4), 2, np.uint8)
    args = (bad,) if fn in SINGLE_FUNCS else (bad, np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="binary"):
        fn(*args)


@pytest.mark.parametrize("fn", PAIR_FUNCS + SINGLE_FUNCS)
def test_bad_dtype_and_ndim(fn):
    strings = np.array([["a"]])
    args = (strings,) if fn in SINGLE_FUNCS else (strings, strings)
    with pytest.raises(InputError, match="dtype"):
        fn(*args)
    flat = np.zeros(5, bool)
    args = (flat,) if fn in SINGLE_FUNCS else (flat, flat)
    with pytest.raises(InputError, match="dimensions"):
        fn(*args)


@pytest.mark.parametrize("fn", DIST_FUNCS)
@pytest.mark.parametrize(
    "spacing",
    [
        (1.0, 1.0),
        (1.0, 1.0, 1.0, 1.0),
        (1.0, 0.0, 1.0),
        (1.0, -2, 1),
        (1, float("nan"), 1),
        "abc",
        None,
    ],
)
def test_bad_spacing(fn, spacing):
    m = np.zeros((2, 4, 4), bool)
    with pytest.raises(InputError, match="spacing"):
        fn(m, m, spacing)


def test_2d_needs_two_spacings():
    m = np.zeros((4, 4), bool)
    with pytest.raises(InputError, match="expected 2"):
        assd(m, m, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="spacing"):
        MetricAccumulator().update("a", m, m, (1.0,))


@pytest.mark.parametrize(
    "kw", [{"dilation_ratio": 0}, {"dilation_ratio": -0.1}, {"dilation_ratio": float("inf")}]
)
def test_bad_ratio(kw):
    m = np.zeros((4, 4), bool)
    with pytest.raises(InputError, match="dilation_ratio"):
        boundary_iou(m, m, **kw)


def test_bad_widths_and_tolerance():
    m = np.zeros((4, 4), bool)
    with pytest.raises(InputError, match="tolerance_ratio"):
        boundary_f(m, m, tolerance_ratio=0)
    with pytest.raises(InputError, match="width"):
        trimap_iou(m, m, width=-1)
    with pytest.raises(InputError, match="width"):
        trimap_iou(m, m, width=1.5)
    with pytest.raises(InputError, match="width"):
        boundary_band(m, width=-2)
