"""Mask R-CNN as three plain graphs, with the data-dependent steps left to the runtime.

torchvision's Mask R-CNN exports as one graph only with the TorchScript-based
exporter and batch 1 (the dynamo exporter stops at data-dependent NMS), and
TensorRT needs plugins or graph surgery for it. The split export cuts the
model where the data-dependent work begins:

* ``rpn``: image (N, 1, S, S) -> normalisation, ResNet + FPN, RPN head:
  ``feat_0..feat_3`` (P2..P5, what RoIAlign reads) and per FPN level
  ``objectness_0..4`` (N, A, h, w) and ``deltas_0..4`` (N, 4A, h, w).
  Dynamic batch.
* ``box``: ``feat_0..3`` + ``rois_0..3`` (R_l, 5: image index, x1, y1, x2,
  y2; the RoIs of FPN level P2..P5) -> RoIAlign 7x7 of each level on its own
  RoIs, concatenated + box head -> ``class_logits`` (R, C), ``box_regression``
  (R, 4C), rows in level order. Dynamic R_l.
* ``mask``: ``feat_0..3`` + ``rois_0..3`` -> RoIAlign 14x14 per level + mask
  head -> ``mask_logits`` (D, C, 28, 28), rows in level order. Dynamic D_l.

The box and mask heads are two graphs because the mask head runs on the
detections, which exist only after the box head and NMS. Anchor decoding,
top-k, NMS and mask pasting run in :mod:`liverrt.runtime.maskrcnn_split`
(Numba kernels), reproducing torchvision's inference. Every graph is static in
its control flow, which TensorRT builds without plugins. The runtime assigns
each RoI its FPN level (torchvision's rule, :func:`liverrt.runtime.maskrcnn_split.roi_levels`)
and restores the RoIs' order afterwards. (The first version computed the level
in the graph, pooled every RoI on all four levels and kept one by a 0/1 mask:
four times the RoIAlign work and four full-size multiplies, two thirds of the
box graph's time on a CPU. Graphs of that version, with one ``rois`` input,
still run.)
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

PARTS = ("rpn", "box", "mask")
FEATURES = tuple(f"feat_{i}" for i in range(4))


class RPNPart(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor):
        net = self.model.net
        feats = net.backbone(self.model.normalize(image))
        levels = list(feats.values())
        objectness, deltas = net.rpn.head(levels)
        return (*levels[:4], *objectness, *deltas)

    @staticmethod
    def output_names(levels: int = 5) -> list[str]:
        return [*FEATURES, *(f"objectness_{i}" for i in range(levels)), *(f"deltas_{i}" for i in range(levels))]


ROIS = tuple(f"rois_{i}" for i in range(4))


def _pool(feats: tuple[Tensor, ...], rois: tuple[Tensor, ...], output: int, sampling_ratio: int,
          aligned: bool) -> Tensor:
    """RoIAlign of each FPN level on its own RoIs, concatenated in level order.

    P2..P5 have strides 4, 8, 16 and 32 (the scales torchvision infers for an
    image size divisible by 32, which the model requires).
    """
    return torch.cat([roi_align(feat, r, output, spatial_scale=1.0 / 2 ** (i + 2), sampling_ratio=sampling_ratio,
                                aligned=aligned) for i, (feat, r) in enumerate(zip(feats, rois, strict=True))])


class BoxPart(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feat_0: Tensor, feat_1: Tensor, feat_2: Tensor, feat_3: Tensor, rois_0: Tensor,
                rois_1: Tensor, rois_2: Tensor, rois_3: Tensor):
        cfg, heads = self.model.config, self.model.net.roi_heads
        x = _pool((feat_0, feat_1, feat_2, feat_3), (rois_0, rois_1, rois_2, rois_3), 7, cfg["sampling_ratio"],
                  cfg["roi_aligned"])
        return heads.box_predictor(heads.box_head(x))


class MaskPart(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feat_0: Tensor, feat_1: Tensor, feat_2: Tensor, feat_3: Tensor, rois_0: Tensor,
                rois_1: Tensor, rois_2: Tensor, rois_3: Tensor):
        cfg, heads = self.model.config, self.model.net.roi_heads
        x = _pool((feat_0, feat_1, feat_2, feat_3), (rois_0, rois_1, rois_2, rois_3), 14, cfg["sampling_ratio"],
                  cfg["roi_aligned"])
        return heads.mask_predictor(heads.mask_head(x))


def export_parts(model: nn.Module, paths: dict[str, str], opset: int, *, example_batch: int = 2) -> None:
    """Export the three graphs of ``model`` (eval mode) to ``paths[part]`` with the TorchScript-based exporter."""

    model = model.eval()
    s = model.config["image_size"]
    image = torch.rand(example_batch, 1, s, s)
    rpn = RPNPart(model).eval()
    names = RPNPart.output_names()
    with torch.no_grad():
        outs = rpn(image)
    feats = tuple(outs[:4])
    # two RoIs per level for tracing (their level does not matter to the graph)
    rois = tuple(torch.tensor([[0, 4.0 * i, 4.0, 4.0 * i + 16, 30.0], [1, 2.0, 2.0 * i, 40.0, 60.0]]).clamp(max=s - 1)
                 for i in range(4))
    feat_axes = {n: {0: "batch"} for n in FEATURES}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(rpn, (image,), paths["rpn"], input_names=["image"], output_names=names,
                          opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}})
        for part, cls, out_names in (("box", BoxPart, ["class_logits", "box_regression"]),
                                     ("mask", MaskPart, ["mask_logits"])):
            torch.onnx.export(cls(model).eval(), (*feats, *rois), paths[part],
                              input_names=[*FEATURES, *ROIS], output_names=out_names, opset_version=opset,
                              dynamo=False,
                              dynamic_axes={**feat_axes, **{r: {0: r} for r in ROIS},
                                            **{n: {0: "rois"} for n in out_names}})
