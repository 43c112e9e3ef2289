"""The study's Mask R-CNN (their Detectron2 model, Table 5), built from torchvision parts.

Architecture (Detectron2 ``mask_rcnn_R_101_FPN_3x``): ResNet-101 bottom-up
path with an FPN (P2..P5 plus a max-pooled P6), an RPN head (one 3x3 conv of
256 channels and two 1x1 convs, 3 anchors per location, sizes 32..512),
RoIAlign 7x7 into a box head of two 1024-wide FC layers, RoIAlign 14x14 into
a mask head of four 3x3 convs of 256 channels and a 2x2 deconvolution.
``num_classes`` counts the background: 2 = background + liver.

What differs from torchvision's ``maskrcnn_resnet50_fpn`` and why:

* **Normalisation** defaults to GroupNorm (32 groups), trainable. No
  ImageNet weights can be downloaded here, and torchvision's default
  FrozenBatchNorm with random weights makes activations explode so the RPN
  returns nothing. ``norm="frozen_bn"`` is what Detectron2 checkpoints carry
  (see :mod:`liverrt.models.detectron2_import`); ``"bn"`` is plain BatchNorm.
* **Input**: CT is one channel in [0, 1]. The image is multiplied by
  ``input_scale`` and repeated to ``in_channels`` explicitly, then
  normalised with ``pixel_mean``/``pixel_std`` whose lengths must equal
  ``in_channels`` (checked here: torchvision would silently broadcast a
  1-channel image against 3-value statistics). A from-scratch model uses
  one channel; imported Detectron2 weights use three (BGR or RGB, 0..255).
* **RoIAlign** is Detectron2's ``ROIAlignV2`` (``aligned=True``, half-pixel
  offset) by default; torchvision hard-codes ``aligned=False``.
* **STRIDE_IN_1X1**: MSRA-style ResNet weights put the stride of each
  stage's first bottleneck in the 1x1 conv; torchvision puts it in the 3x3.
  ``stride_in_1x1=True`` moves it.
* The image is not resized inside the network: the PreprocessSpec already
  brought it to ``image_size``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import LevelMapper

from liverrt.errors import ArtifactError, InputError
from liverrt.models.base import LiverrtModel

_DEPTHS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}
NORMS = ("gn", "bn", "frozen_bn")


class AlignedMultiScaleRoIAlign(MultiScaleRoIAlign):
    """Multi-level RoIAlign with a choice of ``aligned`` (Detectron2's ROIAlignV2 is ``True``).

    Level assignment is torchvision's (canonical box 224 px on level 4, the
    same rule as Detectron2's ``assign_boxes_to_levels``).
    """

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, *, aligned: bool) -> None:
        super().__init__(featmap_names, output_size, sampling_ratio)
        self.aligned = aligned

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        if not self.aligned:
            return super().forward(x, boxes, image_shapes)
        feats = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            # feature stride of each level, a power of two (as torchvision infers it)
            size = max(max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
            self.scales = [2.0 ** round(math.log2(f.shape[-2] / size)) for f in feats]
            self.map_levels = LevelMapper(int(-math.log2(self.scales[0])), int(-math.log2(self.scales[-1])),
                                          canonical_scale=self.canonical_scale,
                                          canonical_level=self.canonical_level)
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        for level, (feat, scale) in enumerate(zip(feats, self.scales, strict=True)):
            idx = torch.where(levels == level)[0]
            pooled = roi_align(feat, rois[idx], self.output_size, spatial_scale=scale,
                               sampling_ratio=self.sampling_ratio, aligned=True)
            out[idx] = pooled.to(out.dtype)
        return out


def _norm_layer(norm: str):
    if norm == "gn":
        return lambda ch: nn.GroupNorm(32 if ch % 32 == 0 else math.gcd(ch, 16), ch)
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen_bn":
        return partial(FrozenBatchNorm2d, eps=1e-5)
    raise InputError(f"norm: got {norm!r}, expected one of {list(NORMS)}.")


def _backbone(depth: int, norm: str, in_channels: int, stride_in_1x1: bool, fpn_channels: int) -> BackboneWithFPN:
    if depth not in _DEPTHS:
        raise InputError(f"depth: got {depth}, expected one of {sorted(_DEPTHS)} (the study used 101).")
    body = _DEPTHS[depth](weights=None, norm_layer=_norm_layer(norm))
    if in_channels != 3:
        body.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(body.conv1.weight, mode="fan_out", nonlinearity="relu")
    if stride_in_1x1:
        if depth < 50:
            raise InputError("stride_in_1x1 applies to bottleneck ResNets (depth 50 or 101).")
        for layer in (body.layer2, body.layer3, body.layer4):
            block = layer[0]
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    if norm == "gn":
        # zero-init the last norm of each residual branch: a from-scratch deep
        # ResNet then starts as a near-identity map (Goyal et al. 2017)
        for m in body.modules():
            if isinstance(m, resnet.Bottleneck):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, resnet.BasicBlock):
                nn.init.zeros_(m.bn2.weight)
    stage2 = 256 if depth >= 50 else 64
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[stage2, stage2 * 2, stage2 * 4, stage2 * 8],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
    )


class LiverMaskRCNN(LiverrtModel):
    """Mask R-CNN for liver instances on one-channel CT slices in [0, 1].

    ``forward(images, targets)`` in training mode returns torchvision's loss
    dict; ``detect(images)`` returns one dict per image (``boxes`` in pixels
    x1 y1 x2 y2, ``scores``, ``labels``, ``masks`` (K, 1, H, W) probabilities);
    ``predict(images)`` gives the runtime's outputs: ``prob`` (N, 1, H, W),
    the per-pixel maximum of instance mask probabilities over the instances
    scoring at least ``score_threshold`` (so ``prob >= mask_threshold`` is the
    union of kept instance masks), plus ``scores`` (N, K) and ``boxes``
    (N, K, 4) padded with zeros to ``max_instances``.
    """

    kind = "maskrcnn"
    title = "Mask R-CNN"
    task = "segmentation"  # what its artifacts can be used for (see liverrt.models.task_of)
    gate = "masks"
    output_names = ("prob", "scores", "boxes")
    output_descriptions = {
        "prob": "max over kept instances of the mask probability, (N, 1, S, S) float32 (after the split runtime)",
        "scores": "(N, K)", "boxes": "(N, K, 4) x1 y1 x2 y2"}
    #: outputs of its one-graph ONNX export (torchvision's detections; the split export is three graphs)
    graph_output_names = ("boxes", "scores", "labels", "masks")
    split_export = True  # the backbone/RPN and RoI-head graphs, with proposals, NMS and mask pasting between them
    unsupported_formats = {
        "tensorrt": "the split Mask R-CNN has no TensorRT plan: NMS and mask pasting run between its three graphs, "
                    "which one TensorRT plan cannot hold; export --format onnx and run it with --engine onnxruntime "
                    "(its CUDA or TensorRT execution provider on a GPU)"}
    # its backbone's ~580 activation scales would take the range search very long on a CPU, and on the trained
    # phantom Mask R-CNN min-max ranges were closer to fp32 than 99.99th percentiles (mean ΔDice 0.022 vs 0.042)
    default_calib_method = "minmax"

    def __init__(
        self,
        *,
        depth: int = 101,
        num_classes: int = 2,
        norm: str = "gn",
        in_channels: int = 1,
        input_scale: float = 1.0,
        pixel_mean: tuple[float, ...] | list[float] = (0.5,),
        pixel_std: tuple[float, ...] | list[float] = (0.25,),
        input_format: str = "L",
        stride_in_1x1: bool = False,
        roi_aligned: bool = True,
        sampling_ratio: int = 0,
        image_size: int = 512,
        fpn_channels: int = 256,
        box_head_dim: int = 1024,
        mask_head_channels: int = 256,
        score_threshold: float = 0.5,
        mask_threshold: float = 0.5,
        max_instances: int = 8,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        box_batch_size_per_image: int = 512,
    ) -> None:
        super().__init__()
        pixel_mean, pixel_std = [float(v) for v in pixel_mean], [float(v) for v in pixel_std]
        _check_input(in_channels, pixel_mean, pixel_std, input_format)
        _check_heads(num_classes, score_threshold, mask_threshold, image_size)
        self.config = {
            "depth": depth, "num_classes": num_classes, "norm": norm, "in_channels": in_channels,
            "input_scale": float(input_scale), "pixel_mean": pixel_mean, "pixel_std": pixel_std,
            "input_format": input_format, "stride_in_1x1": stride_in_1x1, "roi_aligned": roi_aligned,
            "sampling_ratio": sampling_ratio, "image_size": image_size, "fpn_channels": fpn_channels,
            "box_head_dim": box_head_dim, "mask_head_channels": mask_head_channels,
            "score_threshold": float(score_threshold), "mask_threshold": float(mask_threshold),
            "max_instances": max_instances, "rpn_pre_nms_top_n_test": rpn_pre_nms_top_n_test,
            "rpn_post_nms_top_n_test": rpn_post_nms_top_n_test,
            "box_batch_size_per_image": box_batch_size_per_image,
        }
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), persistent=False)
        self.net = _mask_rcnn(self.config)
        _init_predictors(self.net)

    # -- input ---------------------------------------------------------------------------------
    def normalize(self, images: Tensor) -> Tensor:
        """(N, 1, H, W) in [0, 1] -> (N, in_channels, H, W) as the backbone expects."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise InputError(f"Mask R-CNN input: got shape {tuple(images.shape)}, expected (N, 1, H, W) CT slices.")
        x = images * self.config["input_scale"]
        if self.config["in_channels"] == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None):
        x = self.normalize(images)
        return self.net(list(x), targets)

    # -- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, Tensor]]:
        was_training = self.training
        self.eval()
        try:
            return self.forward(images)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        return instances_to_outputs(self.detect(images), images.shape[-2:], self.config["score_threshold"],
                                    self.config["max_instances"])

    def onnx_wrapper(self) -> nn.Module:
        return _SingleImage(self)


def _check_input(in_channels: int, pixel_mean: list[float], pixel_std: list[float], input_format: str) -> None:
    """Channel count, normalisation statistics and channel order must agree (torchvision would broadcast)."""
    if in_channels not in (1, 3):
        raise InputError(f"in_channels: got {in_channels}, expected 1 (CT) or 3 (imported RGB/BGR weights).")
    if len(pixel_mean) != in_channels or len(pixel_std) != in_channels:
        raise InputError(
            f"pixel_mean has {len(pixel_mean)} and pixel_std {len(pixel_std)} values for {in_channels} input "
            "channel(s); expected one of each per channel (a 1-channel image against 3-value statistics "
            "would broadcast silently)."
        )
    if any(s <= 0 for s in pixel_std):
        raise InputError(f"pixel_std: got {pixel_std}, expected positive values.")
    if input_format not in ("L", "RGB", "BGR") or (input_format == "L") != (in_channels == 1):
        raise InputError(f"input_format: got {input_format!r} for {in_channels} channel(s); expected 'L' for 1, "
                         "'RGB' or 'BGR' for 3.")


def _check_heads(num_classes: int, score_threshold: float, mask_threshold: float, image_size: int) -> None:
    """Class count, thresholds and an input size the FPN strides divide."""
    if num_classes < 2:
        raise InputError(f"num_classes: got {num_classes}, expected >= 2 (background + liver).")
    if not (0 < score_threshold < 1 and 0 < mask_threshold < 1):
        raise InputError("score_threshold and mask_threshold must lie in (0, 1).")
    if image_size < 32 or image_size % 32:
        raise InputError(f"image_size: got {image_size}, expected a multiple of 32 (FPN strides up to 32).")


def _mask_rcnn(config: dict) -> MaskRCNN:
    """torchvision's MaskRCNN with this model's backbone, RoIAlign and head sizes (``config`` as stored)."""
    c = config
    backbone = _backbone(c["depth"], c["norm"], c["in_channels"], c["stride_in_1x1"], c["fpn_channels"])
    names = ["0", "1", "2", "3"]
    return MaskRCNN(
        backbone,
        num_classes=None,  # set by the predictors below
        # normalisation happens in normalize(); the transform only batches
        min_size=c["image_size"], max_size=c["image_size"],
        image_mean=[0.0] * c["in_channels"], image_std=[1.0] * c["in_channels"],
        rpn_pre_nms_top_n_test=c["rpn_pre_nms_top_n_test"], rpn_post_nms_top_n_test=c["rpn_post_nms_top_n_test"],
        box_roi_pool=AlignedMultiScaleRoIAlign(names, 7, c["sampling_ratio"], aligned=c["roi_aligned"]),
        box_head=TwoMLPHead(c["fpn_channels"] * 7 * 7, c["box_head_dim"]),
        box_predictor=FastRCNNPredictor(c["box_head_dim"], c["num_classes"]),
        box_batch_size_per_image=c["box_batch_size_per_image"],
        box_detections_per_img=c["max_instances"],
        mask_roi_pool=AlignedMultiScaleRoIAlign(names, 14, c["sampling_ratio"], aligned=c["roi_aligned"]),
        mask_head=MaskRCNNHeads(c["fpn_channels"], [c["mask_head_channels"]] * 4, 1),
        mask_predictor=MaskRCNNPredictor(c["mask_head_channels"], c["mask_head_channels"], c["num_classes"]),
    )


def _init_predictors(net: MaskRCNN) -> None:
    """Detectron2's predictor initialisation: small logits, so training from scratch starts unsaturated."""
    heads = net.roi_heads
    nn.init.normal_(heads.box_predictor.cls_score.weight, std=0.01)
    nn.init.normal_(heads.box_predictor.bbox_pred.weight, std=0.001)
    nn.init.normal_(heads.mask_predictor.mask_fcn_logits.weight, std=0.001)
    for layer in (heads.box_predictor.cls_score, heads.box_predictor.bbox_pred, heads.mask_predictor.mask_fcn_logits):
        nn.init.zeros_(layer.bias)


class _SingleImage(nn.Module):
    """The whole torchvision Mask R-CNN for one image: (1, 1, S, S) -> boxes, scores, labels, masks."""

    def __init__(self, model: LiverMaskRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor):
        det = self.model.net(list(self.model.normalize(image)))[0]
        return det["boxes"], det["scores"], det["labels"], det["masks"]


def instances_to_outputs(detections: list[dict[str, Tensor]], shape, score_threshold: float,
                         max_instances: int) -> dict[str, Tensor]:
    """Per-image detections -> batched ``prob``/``scores``/``boxes`` (see :class:`LiverMaskRCNN`)."""
    n = len(detections)
    h, w = int(shape[0]), int(shape[1])
    device = detections[0]["boxes"].device if n else torch.device("cpu")
    prob = torch.zeros((n, 1, h, w), device=device)
    scores = torch.zeros((n, max_instances), device=device)
    boxes = torch.zeros((n, max_instances, 4), device=device)
    for i, det in enumerate(detections):
        k = min(max_instances, det["scores"].shape[0])
        scores[i, :k] = det["scores"][:k]
        boxes[i, :k] = det["boxes"][:k]
        keep = det["scores"] >= score_threshold
        if keep.any():
            prob[i, 0] = det["masks"][keep][:, 0].float().amax(dim=0)
    return {"prob": prob, "scores": scores, "boxes": boxes}


def maskrcnn_r101_fpn(**overrides) -> LiverMaskRCNN:
    """The study's model: ResNet-101 FPN, background + liver, trainable GroupNorm."""
    return LiverMaskRCNN(**overrides)


def load_backbone_weights(model: LiverMaskRCNN, path) -> dict[str, list[str]]:
    """Load a local torchvision ImageNet ResNet state dict into the backbone body.

    The file is read with ``weights_only=True``. The classifier (``fc.*``) is
    dropped; for a 1-channel model the RGB stem is summed over its input
    channels (a gray image repeated to RGB gives the same response). Needs
    ``norm="frozen_bn"`` or ``"bn"``: GroupNorm has no place for the
    BatchNorm statistics those weights carry.
    """
    path = Path(path)
    if model.config["norm"] == "gn":
        raise InputError("--backbone-weights: ImageNet ResNet weights carry BatchNorm statistics; expected "
                         "--norm frozen_bn (or bn), not gn.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ArtifactError(f"Cannot read {path} as a state dict with weights_only=True ({type(exc).__name__}); "
                            "expected a torchvision ResNet .pth file.") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise ArtifactError(f"{path} is not a torchvision ResNet state dict (no 'conv1.weight').")
    body = model.net.backbone.body
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state["conv1.weight"]
    if model.config["in_channels"] == 1 and w.shape[1] == 3:
        state["conv1.weight"] = w.sum(dim=1, keepdim=True)
    own = body.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    if bad:
        raise ArtifactError(f"{path} does not fit a ResNet-{model.config['depth']}: {bad[:3]}; expected weights "
                            "of the same depth.")
    extra = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if extra:
        raise ArtifactError(f"{path} has {len(extra)} tensors a ResNet-{model.config['depth']} does not have "
                            f"(e.g. {extra[:3]}); expected weights of the same depth.")
    result = body.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        raise ArtifactError(f"{path} lacks {len(missing)} backbone tensors (e.g. {missing[:3]}); expected a "
                            f"complete ResNet-{model.config['depth']} state dict.")
    return {"missing": missing, "unexpected": []}


def param_groups(model: LiverMaskRCNN) -> OrderedDict[str, int]:
    """Parameter counts of the Table-5 parts (backbone body, FPN, RPN, box head, mask head)."""
    parts = OrderedDict([("backbone.body", 0), ("backbone.fpn", 0), ("rpn", 0),
                         ("roi_heads.box", 0), ("roi_heads.mask", 0)])
    for name, p in model.net.named_parameters():
        for key in parts:
            if name.startswith(key):
                parts[key] += p.numel()
    return parts
