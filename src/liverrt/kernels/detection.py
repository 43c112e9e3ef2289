"""Detection post-processing for the split Mask R-CNN runtime: NMS and mask pasting.

Semantics follow torchvision exactly (they are checked against it):

* boxes are ``(K, 4)`` float ``x1, y1, x2, y2``; IoU uses areas
  ``(x2 - x1) * (y2 - y1)`` (no +1); a box is suppressed when its IoU with a
  kept, higher-scoring box is strictly greater than the threshold; ties in
  score keep the lower index first (a stable descending sort);
* :func:`paste_masks` reproduces ``paste_masks_in_image``: the ``M x M`` mask
  is padded by one pixel, its box scaled by ``(M + 2) / M`` around the centre
  and truncated to integers, the padded mask resized bilinearly to the box
  (``align_corners=False``, PyTorch's source-coordinate rule) and copied into
  the image where the box overlaps it.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def nms_sorted(boxes: np.ndarray, order: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS over ``boxes`` visited in ``order`` (descending score); returns kept indices."""
    k = order.shape[0]
    suppressed = np.zeros(boxes.shape[0], np.uint8)
    keep = np.empty(k, np.int64)
    n = 0
    for a in range(k):
        i = order[a]
        if suppressed[i]:
            continue
        keep[n] = i
        n += 1
        x1, y1, x2, y2 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area_i = (x2 - x1) * (y2 - y1)
        for b in range(a + 1, k):
            j = order[b]
            if suppressed[j]:
                continue
            xx1 = max(x1, boxes[j, 0])
            yy1 = max(y1, boxes[j, 1])
            xx2 = min(x2, boxes[j, 2])
            yy2 = min(y2, boxes[j, 3])
            w = max(0.0, xx2 - xx1)
            h = max(0.0, yy2 - yy1)
            inter = w * h
            union = area_i + (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter
            if union > 0 and inter / union > iou_threshold:
                suppressed[j] = 1
    return keep[:n]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Kept indices, in descending score order (``torchvision.ops.nms``)."""
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-scores, kind="stable")
    return nms_sorted(np.ascontiguousarray(boxes, np.float64), order.astype(np.int64), float(iou_threshold))


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each group (``torchvision.ops.batched_nms``): boxes of different groups never suppress
    each other. Returns kept indices in descending score order."""
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    b = np.asarray(boxes, np.float64)
    # shift each group far apart so their boxes cannot overlap (torchvision's coordinate trick)
    offset = groups.astype(np.float64) * (b.max() + 1.0)
    return nms(b + offset[:, None], scores, iou_threshold)


@njit(cache=True, nogil=True)
def _resize_bilinear(src: np.ndarray, h: int, w: int) -> np.ndarray:
    """PyTorch ``F.interpolate(mode="bilinear", align_corners=False)`` of a 2D array."""
    sh, sw = src.shape
    out = np.empty((h, w), np.float32)
    ry = sh / h
    rx = sw / w
    for y in range(h):
        fy = (y + 0.5) * ry - 0.5
        if fy < 0:
            fy = 0.0
        y0 = int(fy)
        y1 = y0 + 1 if y0 < sh - 1 else y0
        ly = fy - y0
        for x in range(w):
            fx = (x + 0.5) * rx - 0.5
            if fx < 0:
                fx = 0.0
            x0 = int(fx)
            x1 = x0 + 1 if x0 < sw - 1 else x0
            lx = fx - x0
            top = src[y0, x0] * (1.0 - lx) + src[y0, x1] * lx
            bottom = src[y1, x0] * (1.0 - lx) + src[y1, x1] * lx
            out[y, x] = top * (1.0 - ly) + bottom * ly
    return out


@njit(cache=True, nogil=True)
def paste_masks_kernel(masks: np.ndarray, boxes: np.ndarray, im_h: int, im_w: int) -> np.ndarray:
    """``(D, M, M)`` float32 mask probabilities + ``(D, 4)`` boxes -> ``(D, im_h, im_w)`` float32."""
    d, m, _ = masks.shape
    out = np.zeros((d, im_h, im_w), np.float32)
    scale = (m + 2.0) / m
    padded = np.zeros((m + 2, m + 2), np.float32)
    for k in range(d):
        padded[1:m + 1, 1:m + 1] = masks[k]
        w_half = (boxes[k, 2] - boxes[k, 0]) * 0.5 * scale
        h_half = (boxes[k, 3] - boxes[k, 1]) * 0.5 * scale
        x_c = (boxes[k, 2] + boxes[k, 0]) * 0.5
        y_c = (boxes[k, 3] + boxes[k, 1]) * 0.5
        # torch's .to(int64) truncates toward zero
        bx0 = int(x_c - w_half)
        bx1 = int(x_c + w_half)
        by0 = int(y_c - h_half)
        by1 = int(y_c + h_half)
        w = max(bx1 - bx0 + 1, 1)
        h = max(by1 - by0 + 1, 1)
        resized = _resize_bilinear(padded, h, w)
        x_0 = max(bx0, 0)
        x_1 = min(bx1 + 1, im_w)
        y_0 = max(by0, 0)
        y_1 = min(by1 + 1, im_h)
        for y in range(y_0, y_1):
            for x in range(x_0, x_1):
                out[k, y, x] = resized[y - by0, x - bx0]
    return out


def paste_masks(masks: np.ndarray, boxes: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Paste ``(D, M, M)`` mask probabilities into ``(D, H, W)`` images at ``boxes`` (see module docstring)."""
    if masks.shape[0] == 0:
        return np.zeros((0, *image_shape), np.float32)
    return paste_masks_kernel(np.ascontiguousarray(masks, np.float32), np.ascontiguousarray(boxes, np.float64),
                              int(image_shape[0]), int(image_shape[1]))
