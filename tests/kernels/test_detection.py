"""NMS and mask pasting against torchvision, on random and edge-case inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.roi_heads import paste_masks_in_image

from liverrt.kernels.detection import batched_nms, nms, paste_masks


def _boxes(rng, k, size=64.0):
    xy = rng.uniform(-5, size, (k, 2))
    wh = rng.uniform(0.5, size / 2, (k, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


@pytest.mark.parametrize("seed", range(20))
def test_nms_equals_torchvision(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(0, 60))
    boxes = _boxes(rng, k)
    scores = rng.random(k).astype(np.float32)
    for thr in (0.3, 0.5, 0.7):
        ref = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).numpy()
        assert nms(boxes, scores, thr).tolist() == ref.tolist()


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_equals_torchvision(seed):
    rng = np.random.default_rng(100 + seed)
    k = int(rng.integers(1, 80))
    boxes = _boxes(rng, k)
    scores = rng.random(k).astype(np.float32)
    groups = rng.integers(0, 4, k)
    ref = torchvision.ops.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores),
                                      torch.from_numpy(groups), 0.5).numpy()
    assert batched_nms(boxes, scores, groups, 0.5).tolist() == ref.tolist()


def test_nms_edge_cases():
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).size == 0
    one = np.array([[0, 0, 10, 10]], np.float32)
    assert nms(one, np.array([0.3], np.float32), 0.5).tolist() == [0]
    same = np.repeat(one, 3, axis=0)
    assert nms(same, np.array([0.2, 0.9, 0.5], np.float32), 0.5).tolist() == [1]
    degenerate = np.array([[5, 5, 5, 5], [5, 5, 5, 5]], np.float32)  # zero area: IoU undefined -> kept
    ref = torchvision.ops.nms(torch.from_numpy(degenerate), torch.tensor([0.9, 0.8]), 0.5).tolist()
    assert nms(degenerate, np.array([0.9, 0.8], np.float32), 0.5).tolist() == ref


@pytest.mark.parametrize("seed", range(10))
def test_paste_masks_equals_torchvision(seed):
    rng = np.random.default_rng(200 + seed)
    d, m, h, w = int(rng.integers(1, 6)), 28, 50, 60
    masks = rng.random((d, m, m)).astype(np.float32)
    boxes = _boxes(rng, d, size=55.0)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)  # detections are clipped to the image, as torchvision does
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    boxes[0] = [0.0, 0.0, 20.0, float(h)]  # touching the border (the expanded box leaves the image)
    ref = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes), (h, w), padding=1)
    ours = paste_masks(masks, boxes, (h, w))
    assert ours.shape == (d, h, w)
    assert np.allclose(ours, ref[:, 0].numpy(), atol=1e-5)


def test_paste_masks_edge_cases():
    assert paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (8, 9)).shape == (0, 8, 9)
    tiny = np.ones((1, 28, 28), np.float32)
    box = np.array([[3.2, 4.7, 3.4, 4.9]], np.float32)  # smaller than a pixel
    ref = paste_masks_in_image(torch.from_numpy(tiny)[:, None], torch.from_numpy(box), (10, 10))[:, 0].numpy()
    assert np.allclose(paste_masks(tiny, box, (10, 10)), ref, atol=1e-6)
    outside = np.array([[20.0, 20.0, 30.0, 30.0]], np.float32)
    assert paste_masks(tiny, outside, (10, 10)).sum() == 0
