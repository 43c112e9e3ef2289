"""The data-dependent half of the split Mask R-CNN, in NumPy and Numba.

Between and after the three graphs of :mod:`liverrt.export.maskrcnn_split`
this module does what torchvision's ``RegionProposalNetwork`` and
``RoIHeads`` do at inference, in the same order and with the same rules:

1. anchors (sizes 32..512 on P2..P6, ratios 0.5/1/2, torchvision's rounding);
2. per image and FPN level, the ``rpn_pre_nms_top_n_test`` highest objectness
   logits; deltas decoded (weights 1, 1, 1, 1; dw/dh clamped at log(1000/16));
   boxes clipped to the image, boxes under 1e-3 px dropped; NMS at 0.7 within
   each level; the ``rpn_post_nms_top_n_test`` best proposals kept;
3. each proposal assigned its FPN level (:func:`roi_levels`, torchvision's
   rule); the box graph on every proposal, each level's RoIs in their own
   input; outputs put back in proposal order; softmax scores; class-specific boxes
   decoded (weights 10, 10, 5, 5), clipped; background dropped; scores
   > 0.05; boxes under 1e-2 px dropped; NMS at 0.5 per class; the best
   ``max_instances`` kept;
4. the mask graph on the detections; the mask of each detection's class,
   sigmoid, pasted into the image (:func:`liverrt.kernels.detection.paste_masks`).

The graphs are run through a callable, so any backend (onnxruntime,
TensorRT, or the PyTorch parts themselves in tests) plugs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch  # the rounding must be torch's (round half to even in float32)

from liverrt.kernels.detection import batched_nms, paste_masks
from liverrt.models.maskrcnn import instances_to_outputs

#: graph name, inputs -> outputs
RunGraph = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]

ANCHOR_SIZES = (32, 64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
BBOX_CLIP = math.log(1000.0 / 16)
RPN_NMS = 0.7
RPN_MIN_SIZE = 1e-3
BOX_SCORE_THRESH = 0.05
BOX_NMS = 0.5
BOX_MIN_SIZE = 1e-2


def base_anchors(size: float, ratios=ASPECT_RATIOS) -> np.ndarray:
    """torchvision ``AnchorGenerator.generate_anchors`` for one size: (A, 4), rounded, float32."""

    scales = torch.as_tensor([size], dtype=torch.float32)
    r = torch.as_tensor(ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(r)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round().numpy()


def grid_anchors(feature_shape: tuple[int, int], image_size: int, size: float) -> np.ndarray:
    """Anchors of one level, ordered (y, x, anchor) like the flattened RPN outputs: (h*w*A, 4)."""
    h, w = feature_shape
    sy, sx = image_size // h, image_size // w
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float32) * sy, np.arange(w, dtype=np.float32) * sx, indexing="ij")
    shifts = np.stack([xs.ravel(), ys.ravel(), xs.ravel(), ys.ravel()], axis=1)
    return (shifts[:, None, :] + base_anchors(size)[None]).reshape(-1, 4)


def decode(deltas: np.ndarray, boxes: np.ndarray, weights: tuple[float, float, float, float]) -> np.ndarray:
    """torchvision ``BoxCoder.decode_single``: (K, 4C) deltas on (K, 4) boxes -> (K, C, 4), in float32."""
    deltas = deltas.astype(np.float32).reshape(deltas.shape[0], -1, 4)
    boxes = boxes.astype(np.float32)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx, dy = deltas[..., 0] / wx, deltas[..., 1] / wy
    dw = np.minimum(deltas[..., 2] / ww, np.float32(BBOX_CLIP))
    dh = np.minimum(deltas[..., 3] / wh, np.float32(BBOX_CLIP))
    px = dx * widths[:, None] + ctr_x[:, None]
    py = dy * heights[:, None] + ctr_y[:, None]
    pw = np.exp(dw) * widths[:, None]
    ph = np.exp(dh) * heights[:, None]
    half_w, half_h = np.float32(0.5) * pw, np.float32(0.5) * ph
    return np.stack([px - half_w, py - half_h, px + half_w, py + half_h], axis=-1)


def _clip(boxes: np.ndarray, size: int) -> np.ndarray:
    return np.clip(boxes, 0, size).astype(np.float32)


def _keep_large(boxes: np.ndarray, min_size: float) -> np.ndarray:
    return np.flatnonzero(((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def roi_levels(boxes: np.ndarray) -> np.ndarray:
    """FPN level index (0..3 for P2..P5) of each (R, 4) box: torchvision's ``LevelMapper`` in float32.

    floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to levels 2..5.
    """
    b = np.asarray(boxes, np.float32)
    size = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    with np.errstate(divide="ignore"):  # a zero-area box: log2(0) = -inf, clamped to P2 as in torch
        level = np.floor(np.float32(4) + np.log2(size / np.float32(224)) + np.float32(1e-6))
    return (np.clip(level, 2, 5) - 2).astype(np.int64)


#: what an empty FPN level is given where a backend may refuse empty tensors (its output row is dropped)
_PLACEHOLDER_ROI = np.array([[0.0, 0.0, 0.0, 1.0, 1.0]], np.float32)


class SplitMaskRCNN:
    """Mask R-CNN inference over the three split graphs; ``detect``/``predict`` like the PyTorch model.

    ``per_level``: the box and mask graphs take each FPN level's RoIs as ``rois_0..3`` (this
    version's export); False for graphs of the first version, which take one ``rois`` input.
    None: read from ``run.inputs`` (``{part: input names}``, as :func:`liverrt.runtime.onnxruntime_loader.ort_split_runner`
    gives) where ``run`` has it, else True. ``empty_levels``: the backend takes (0, 5) RoI
    inputs (onnxruntime, PyTorch); otherwise an empty level gets one placeholder RoI, whose
    head output (about 0.5 G multiply-adds in the mask head) is computed and dropped.
    """

    def __init__(self, config: dict, run: RunGraph, *, per_level: bool | None = None,
                 empty_levels: bool = False) -> None:
        self.config = config
        self.run = run
        if per_level is None:
            inputs = getattr(run, "inputs", None)
            per_level = "rois" not in inputs["box"] if inputs and "box" in inputs else True
        self.per_level = per_level
        self.empty_levels = empty_levels
        self.size = int(config["image_size"])
        self.pre_nms = int(config.get("rpn_pre_nms_top_n_test", 1000))
        self.post_nms = int(config.get("rpn_post_nms_top_n_test", 1000))
        self.max_instances = int(config.get("max_instances", 8))
        self._anchors: dict[tuple, np.ndarray] = {}

    def _level_anchors(self, level: int, shape: tuple[int, int]) -> np.ndarray:
        key = (level, shape)
        if key not in self._anchors:
            self._anchors[key] = grid_anchors(shape, self.size, ANCHOR_SIZES[level])
        return self._anchors[key]

    def proposals(self, rpn: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        """Per image (P, 4) float32 proposals, best first (torchvision ``filter_proposals``)."""
        out = []
        levels = sorted(k for k in rpn if k.startswith("objectness_"))
        for i in range(n):
            boxes, scores, lvls = [], [], []
            for lv, key in enumerate(levels):
                obj = rpn[key][i]  # (A, h, w)
                a, h, w = obj.shape
                logits = obj.transpose(1, 2, 0).reshape(-1)
                deltas = rpn[f"deltas_{lv}"][i].reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
                k = min(self.pre_nms, logits.shape[0])
                top = np.argsort(-logits, kind="stable")[:k]
                anchors = self._level_anchors(lv, (h, w))[top]
                boxes.append(decode(deltas[top], anchors, (1.0, 1.0, 1.0, 1.0))[:, 0])
                scores.append(_sigmoid(logits[top]))
                lvls.append(np.full(k, lv))
            b, s, lv = _clip(np.concatenate(boxes), self.size), np.concatenate(scores), np.concatenate(lvls)
            keep = _keep_large(b, RPN_MIN_SIZE)
            b, s, lv = b[keep], s[keep], lv[keep]
            keep = batched_nms(b, s, lv, RPN_NMS)[: self.post_nms]
            out.append(b[keep])
        return out

    def detect(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        """(N, 1, S, S) float32 in [0, 1] -> per image ``boxes`` (K, 4), ``scores``, ``labels``,
        ``masks`` (K, 1, S, S) probabilities (torchvision's output format)."""
        n = images.shape[0]
        rpn = self.run("rpn", {"image": np.ascontiguousarray(images, np.float32)})
        feats = {f"feat_{i}": rpn[f"feat_{i}"] for i in range(4)}
        props = self.proposals(rpn, n)
        rois = _rois(props)
        dets: list[dict[str, np.ndarray]] = []
        if rois.shape[0]:
            heads = self._heads("box", feats, rois)
            logits, regression = heads["class_logits"], heads["box_regression"]
        start = 0
        for p in props:
            k = p.shape[0]
            if k == 0:
                dets.append(_empty(self.size))
                continue
            lg = logits[start:start + k].astype(np.float32)
            start += k
            e = np.exp(lg - lg.max(axis=1, keepdims=True))
            scores = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            c = scores.shape[1]
            boxes = _clip(decode(regression[start - k:start], p, (10.0, 10.0, 5.0, 5.0)), self.size)
            labels = np.broadcast_to(np.arange(c), scores.shape)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = np.flatnonzero(scores > BOX_SCORE_THRESH)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = _keep_large(boxes, BOX_MIN_SIZE)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, BOX_NMS)[: self.max_instances]
            dets.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].astype(np.int64)})
        det_rois = _rois([d["boxes"] for d in dets])
        if det_rois.shape[0]:
            mask_logits = self._heads("mask", feats, det_rois)["mask_logits"]
            start = 0
            for d in dets:
                k = d["boxes"].shape[0]
                if "masks" in d:
                    continue
                sel = mask_logits[start:start + k][np.arange(k), d["labels"]]
                start += k
                d["masks"] = paste_masks(_sigmoid(sel), d["boxes"], (self.size, self.size))[:, None]
        for d in dets:
            d.setdefault("masks", np.zeros((0, 1, self.size, self.size), np.float32))
        return dets

    def _heads(self, part: str, feats: dict, rois: np.ndarray) -> dict[str, np.ndarray]:
        """Run the box or mask graph on (R, 5) ``rois``; output rows in the order of ``rois``."""
        if not self.per_level:
            return self.run(part, {**feats, "rois": rois})
        level = roi_levels(rois[:, 1:])
        order = np.argsort(level, kind="stable")
        feed, keep, start = {}, [], 0
        for lv in range(4):
            mine = rois[level == lv]
            pad = mine.shape[0] == 0 and not self.empty_levels
            feed[f"rois_{lv}"] = _PLACEHOLDER_ROI if pad else mine
            keep.append(np.arange(start, start + mine.shape[0]))
            start += mine.shape[0] + pad
        keep = np.concatenate(keep)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)  # RoI j is row inverse[j] of the level-ordered output
        return {name: value[keep][inverse] for name, value in self.run(part, {**feats, **feed}).items()}

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The runtime outputs of :class:`liverrt.models.maskrcnn.LiverMaskRCNN.predict`."""


        dets = [{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()} for d in self.detect(images)]
        out = instances_to_outputs(dets, images.shape[-2:], self.config["score_threshold"], self.max_instances)
        return {k: v.numpy() for k, v in out.items()}


def _rois(boxes: list[np.ndarray]) -> np.ndarray:
    """Per-image boxes -> (R, 5) float32 rows ``image index, x1, y1, x2, y2``."""
    rows = [np.concatenate([np.full((b.shape[0], 1), i, np.float32), b.astype(np.float32)], axis=1)
            for i, b in enumerate(boxes) if b.shape[0]]
    return np.concatenate(rows) if rows else np.zeros((0, 5), np.float32)


def _empty(size: int) -> dict[str, np.ndarray]:
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 1, size, size), np.float32)}
