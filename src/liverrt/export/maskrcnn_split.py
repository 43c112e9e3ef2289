"""Mask R-CNN as three plain graphs, with the data-dependent steps left to the runtime.

torchvision's Mask R-CNN exports as one graph only with the TorchScript-based
exporter and batch 1 (the dynamo exporter stops at data-dependent NMS), and
TensorRT needs plugins or graph surgery for it. The split export cuts the
model where the data-dependent work begins:

* ``rpn``: image (N, 1, S, S) -> normalisation, ResNet + FPN, RPN head:
  ``feat_0..feat_3`` (P2..P5, what RoIAlign reads) and per FPN level
  ``objectness_0..4`` (N, A, h, w) and ``deltas_0..4`` (N, 4A, h, w).
  Dynamic batch.
* ``box``: ``feat_0..3`` + ``rois`` (R, 5: image index, x1, y1, x2, y2) ->
  multi-level RoIAlign 7x7 + box head -> ``class_logits`` (R, C),
  ``box_regression`` (R, 4C). Dynamic R.
* ``mask``: ``feat_0..3`` + ``rois`` (D, 5) -> RoIAlign 14x14 + mask head ->
  ``mask_logits`` (D, C, 28, 28). Dynamic D.

The box and mask heads are two graphs because the mask head runs on the
detections, which exist only after the box head and NMS. Anchor decoding,
top-k, NMS and mask pasting run in :mod:`liverrt.runtime.maskrcnn_split`
(Numba kernels), reproducing torchvision's inference. Every graph is static in
its control flow: the FPN level of each RoI is computed in the graph and
each level's RoIAlign result is selected by a 0/1 mask (no gather on
data-dependent indices), which TensorRT builds without plugins.
"""

from __future__ import annotations

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


def _pool(feats: tuple[Tensor, ...], rois: Tensor, output: int, sampling_ratio: int, aligned: bool) -> Tensor:
    """Multi-level RoIAlign with torchvision's level rule, every level pooled and selected by a mask.

    P2..P5 have strides 4, 8, 16 and 32 (the scales torchvision infers for an
    image size divisible by 32, which the model requires).
    """
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    # torchvision LevelMapper: floor(4 + log2(sqrt(area) / 224) + 1e-6), clamped to P2..P5
    level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224.0) + 1e-6).clamp(2, 5) - 2
    out = None
    for i, feat in enumerate(feats):
        scale = 1.0 / 2 ** (i + 2)
        pooled = roi_align(feat, rois, output, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
        sel = (level == i).to(pooled.dtype)[:, None, None, None]
        out = pooled * sel if out is None else out + pooled * sel
    return out


class BoxPart(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feat_0: Tensor, feat_1: Tensor, feat_2: Tensor, feat_3: Tensor, rois: Tensor):
        cfg, heads = self.model.config, self.model.net.roi_heads
        x = _pool((feat_0, feat_1, feat_2, feat_3), rois, 7, cfg["sampling_ratio"], cfg["roi_aligned"])
        return heads.box_predictor(heads.box_head(x))


class MaskPart(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, feat_0: Tensor, feat_1: Tensor, feat_2: Tensor, feat_3: Tensor, rois: Tensor):
        cfg, heads = self.model.config, self.model.net.roi_heads
        x = _pool((feat_0, feat_1, feat_2, feat_3), rois, 14, cfg["sampling_ratio"], cfg["roi_aligned"])
        return heads.mask_predictor(heads.mask_head(x))


def export_parts(model: nn.Module, paths: dict[str, str], opset: int, *, example_batch: int = 2) -> None:
    """Export the three graphs of ``model`` (eval mode) to ``paths[part]`` with the TorchScript-based exporter."""
    import contextlib
    import io
    import warnings

    model = model.eval()
    s = model.config["image_size"]
    image = torch.rand(example_batch, 1, s, s)
    rpn = RPNPart(model).eval()
    names = RPNPart.output_names()
    with torch.no_grad():
        outs = rpn(image)
    feats = tuple(outs[:4])
    rois = torch.tensor([[0, 10.0, 12.0, 200.0, 180.0], [1, 4.0, 4.0, 40.0, 60.0], [0, 0.0, 0.0, 8.0, 8.0]])
    rois[:, 1:] = rois[:, 1:].clamp(max=s - 1)
    feat_axes = {n: {0: "batch"} for n in FEATURES}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(rpn, (image,), paths["rpn"], input_names=["image"], output_names=names,
                          opset_version=opset, dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}})
        for part, cls, out_names in (("box", BoxPart, ["class_logits", "box_regression"]),
                                     ("mask", MaskPart, ["mask_logits"])):
            torch.onnx.export(cls(model).eval(), (*feats, rois), paths[part],
                              input_names=[*FEATURES, "rois"], output_names=out_names, opset_version=opset,
                              dynamo=False,
                              dynamic_axes={**feat_axes, "rois": {0: "rois"}, **{n: {0: "rois"} for n in out_names}})
