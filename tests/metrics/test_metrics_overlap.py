"""Overlap scores (IoU, Dice, pixel F-measure, RAVD) and the first-version helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from mask_refs import dice_ref, f1_ref, iou_ref, mask_pairs, ravd_ref

from liverrt.metrics import (
    as_mask,
    dice,
    dice_from_counts,
    f_measure,
    iou_from_counts,
    mask_iou,
    overlap_counts,
    per_slice_counts,
    ravd,
)


@settings(max_examples=200, deadline=None)
@given(mask_pairs(ndim=3))
def test_overlap_scores_match_definitions(pair):
    p, g = pair
    assert mask_iou(p, g) == pytest.approx(iou_ref(p, g), abs=1e-12)
    assert dice(p, g) == pytest.approx(dice_ref(p, g), abs=1e-12)
    assert f_measure(p, g) == pytest.approx(f1_ref(p, g), abs=1e-12)
    assert ravd(p, g) == pytest.approx(ravd_ref(p, g), abs=1e-9)
    tp, fp, fn = overlap_counts(p, g)
    assert all(type(v) is int for v in (tp, fp, fn))
    counts = per_slice_counts(p, g)
    assert counts.dtype == np.int64 and counts.shape == (p.shape[0], 3)
    assert tuple(counts.sum(axis=0)) == (tp, fp, fn)


def test_empty_and_full():
    e = np.zeros((4, 5), bool)
    f = np.ones((4, 5), bool)
    assert mask_iou(e, e) == dice(e, e) == f_measure(e, e) == 1.0
    assert mask_iou(e, f) == dice(f, e) == f_measure(e, f) == 0.0
    assert mask_iou(f, f) == 1.0
    assert ravd(e, e) == 0.0
    assert math.isinf(ravd(f, e))
    assert ravd(e, f) == 100.0
    assert ravd(f, f) == 0.0


def test_integer_and_float_masks_are_accepted():
    p = np.array([[0, 1], [1, 1]], np.uint8)
    g = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert mask_iou(p, g) == pytest.approx(2 / 3)
    assert as_mask(p, "pred").dtype == bool


def test_count_helpers():
    assert iou_from_counts(0, 0, 0) == 1.0
    assert dice_from_counts(0, 0, 0) == 1.0
    assert iou_from_counts(2, 1, 1) == 0.5
    assert dice_from_counts(2, 1, 1) == pytest.approx(4 / 6)


def test_per_slice_dice_is_the_dice_of_each_slice():
    from liverrt.metrics import per_slice_dice

    rng = np.random.default_rng(3)
    pred, gt = rng.random((6, 9, 7)) < 0.4, rng.random((6, 9, 7)) < 0.4
    pred[0], gt[0] = False, False  # both empty: 1.0
    pred[1], gt[1] = True, False  # one empty: 0.0
    pred[2], gt[2] = True, True  # full
    pred[3] = gt[3] = False
    pred[3, 0, 0] = gt[3, 0, 0] = True  # one pixel, touching the border
    got = per_slice_dice(pred, gt)
    assert got.shape == (6,)
    np.testing.assert_allclose(got, [dice_ref(p, g) for p, g in zip(pred, gt, strict=True)])
    assert list(got[:4]) == [1.0, 0.0, 1.0, 1.0]
