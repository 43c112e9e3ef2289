"""MetricAccumulator: per-case, per-slice and NaN/inf-aware means."""

from __future__ import annotations

import math

import numpy as np
import pytest
from mask_refs import (
    boundary_f_ref,
    boundary_iou_ref,
    dice_ref,
    iou_ref,
    liver_blob,
    ravd_ref,
    slice_mean_ref,
    surface_scores_ref,
    trimap_ref,
)

from liverrt.errors import InputError
from liverrt.metrics import MetricAccumulator, reduce_mean


def _pair(seed, shape=(5, 32, 36)):
    g = liver_blob(shape, seed=seed)
    p = liver_blob(shape, seed=seed, jitter=1.5)
    return p, g


def test_compute_matches_references():
    acc = MetricAccumulator()
    spacing = (2.0, 0.8, 0.8)
    pairs = {"a": _pair(1), "b": _pair(2)}
    for cid, (p, g) in pairs.items():
        acc.update(cid, p, g, spacing)
    res = acc.compute()
    assert res["n_cases"] == 2 and len(acc) == 2
    for cid, (p, g) in pairs.items():
        vol = res["cases"][cid]["volume"]
        assert vol["dice"] == pytest.approx(dice_ref(p, g))
        assert vol["mask_iou"] == pytest.approx(iou_ref(p, g))
        assert vol["ravd"] == pytest.approx(ravd_ref(p, g))
        ref = surface_scores_ref(p, g, spacing)
        for k in ("assd", "mssd", "hd95"):
            assert vol[k] == pytest.approx(ref[k], abs=1e-9)
        sl = res["cases"][cid]["slices"]
        assert sl["boundary_iou"] == pytest.approx(slice_mean_ref(boundary_iou_ref, p, g))
        assert sl["trimap_iou"] == pytest.approx(slice_mean_ref(trimap_ref, p, g))
        assert sl["boundary_f"] == pytest.approx(slice_mean_ref(boundary_f_ref, p, g))
        assert sl["mask_iou"] == pytest.approx(slice_mean_ref(iou_ref, p, g))
        assert sl["n"] == sum(1 for k in range(len(p)) if p[k].any() or g[k].any())
    assert len(res["slices"]) == 10
    row = res["slices"][0]
    assert {"case_id", "slice", "counted", "boundary_iou", "f_measure"} <= set(row)
    m = res["mean"]["volume"]["dice"]
    assert m == pytest.approx(np.mean([res["cases"][c]["volume"]["dice"] for c in pairs]))
    assert res["excluded"] == {}


def test_inf_excluded_with_reason_and_reset():
    acc = MetricAccumulator()
    p, g = _pair(3)
    acc.update("good", p, g, (1.0, 1.0, 1.0))
    acc.update("no_gt", p, np.zeros_like(g), (1.0, 1.0, 1.0))
    acc.update("both_empty", np.zeros_like(p), np.zeros_like(g), (1.0, 1.0, 1.0))
    res = acc.compute()
    assert math.isinf(res["cases"]["no_gt"]["volume"]["hd95"])
    assert res["cases"]["both_empty"]["volume"]["hd95"] == 0.0
    assert res["cases"]["both_empty"]["slices"]["n"] == 0
    assert res["mean"]["volume"]["hd95"] == pytest.approx(
        np.mean([res["cases"]["good"]["volume"]["hd95"], 0.0])
    )
    ex = res["excluded"]["volume.hd95"]
    assert ex == [{"case_id": "no_gt", "reason": ex[0]["reason"]}]
    assert "surface" in ex[0]["reason"]
    assert "volume.ravd" in res["excluded"]
    with pytest.raises(InputError, match="already added"):
        acc.update("good", p, g, (1.0, 1.0, 1.0))
    acc.reset()
    assert len(acc) == 0 and acc.compute()["n_cases"] == 0


def test_2d_cases_and_no_surface():
    acc = MetricAccumulator(surface=False)
    p, g = _pair(4, shape=(40, 40))
    acc.update(7, p, g, (0.7, 0.7))
    res = acc.compute()
    assert res["cases"]["7"]["slices"]["n"] == 1
    assert math.isnan(res["cases"]["7"]["volume"]["assd"])
    assert math.isnan(res["mean"]["volume"]["assd"])
    assert res["excluded"]["volume.assd"][0]["reason"].startswith("nan")


def test_reduce_mean():
    mean, ex = reduce_mean([1.0, float("nan"), float("inf"), 3.0], ["a", "b", "c", "d"])
    assert mean == 2.0
    assert [e["case_id"] for e in ex] == ["b", "c"]
    mean, ex = reduce_mean([], [])
    assert math.isnan(mean) and ex == []
