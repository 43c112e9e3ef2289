"""Instance scores for multi-region livers, against brute force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from liverrt.errors import InputError
from liverrt.metrics.instances import instances_from_labels, match_instances, region_count


def _best_matching_ref(pred, truth, thr):
    """Maximum one-to-one matching with IoU >= thr by trying every assignment."""
    def iou(a, b):
        u = (a | b).sum()
        return (a & b).sum() / u if u else 0.0

    best = 0
    for perm in itertools.permutations(range(len(pred)), min(len(pred), len(truth))):
        best = max(best, sum(iou(pred[p], truth[t]) >= thr for p, t in zip(perm, range(len(truth)), strict=False)))
    if len(pred) < len(truth):
        for perm in itertools.permutations(range(len(truth)), len(pred)):
            best = max(best, sum(iou(pred[p], truth[t]) >= thr for p, t in zip(range(len(pred)), perm, strict=True)))
    return best


@pytest.mark.parametrize("seed", range(25))
def test_matching_equals_the_best_assignment(seed):
    rng = np.random.default_rng(seed)
    h = w = 12
    def blobs(k):
        out = np.zeros((k, h, w), bool)
        for i in range(k):
            y, x = rng.integers(0, h - 3, 2)
            out[i, y:y + rng.integers(2, 6), x:x + rng.integers(2, 6)] = True
        return out
    pred, truth = blobs(rng.integers(0, 4)), blobs(rng.integers(0, 4))
    for thr in (0.5, 0.7):
        m = match_instances(pred, truth, thr)
        assert m["matched"] == _best_matching_ref(pred, truth, thr)
        assert m["pred"] == len(pred) and m["truth"] == len(truth)


def test_edge_cases():
    empty = np.zeros((0, 5, 5), bool)
    one = np.zeros((1, 5, 5), bool)
    one[0, 2, 2] = True
    assert match_instances(empty, empty) == {"matched": 0, "pred": 0, "truth": 0}
    assert match_instances(one, empty)["matched"] == 0
    assert match_instances(one, one)["matched"] == 1
    full = np.ones((1, 5, 5), bool)
    assert match_instances(full, one)["matched"] == 0  # IoU 1/25
    with pytest.raises(InputError):
        match_instances(one, one, 0.0)
    with pytest.raises(InputError, match="instance masks"):
        match_instances(one, np.ones((1, 4, 4), bool))


def test_one_merged_instance_does_not_separate_two_regions():
    truth = np.zeros((2, 10, 10), bool)
    truth[0, 1:5, 1:4] = True
    truth[1, 1:5, 6:9] = True  # two regions, same size
    merged = (truth[0] | truth[1])[None]
    assert match_instances(merged, truth)["matched"] == 1  # IoU 0.5 with each: one match, one region missed
    assert match_instances(truth[::-1], truth)["matched"] == 2


@pytest.mark.parametrize("seed", range(10))
def test_region_count_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((4, 16, 16)) > 0.7
    m[0] = False
    m[1] = True
    m[2, 0, 0] = True  # touches the border
    for min_area in (1, 3):
        ref = []
        for sl in m:
            lab, n = ndimage.label(sl, structure=np.ones((3, 3)))
            ref.append(int((np.bincount(lab.ravel())[1:] >= min_area).sum()) if n else 0)
        assert region_count(m, min_area).tolist() == ref


def test_instances_from_labels():
    lab = np.array([[0, 1, 1], [0, 0, 3], [0, 0, 3]])
    inst = instances_from_labels(lab)
    assert inst.shape == (2, 3, 3) and inst[0].sum() == 2 and inst[1].sum() == 2
    assert instances_from_labels(np.zeros((3, 3), int)).shape == (0, 3, 3)
