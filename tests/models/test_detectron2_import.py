"""Detectron2 -> liverrt Mask R-CNN import, checked against references written here.

The synthetic Detectron2 checkpoints come from ``d2_state``: the shapes of a
liverrt model, renamed by an inverse mapping written independently of the
importer (string surgery, not its regex table), with random values. The
``d2_*`` functions are Detectron2's forward passes written out with
``torch.nn.functional`` on the Detectron2-named tensors.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from liverrt.errors import ArtifactError, InputError
from liverrt.models.detectron2_import import (
    convert_detectron2_state_dict,
    read_detectron2_checkpoint,
    read_detectron2_config,
)
from liverrt.models.maskrcnn import LiverMaskRCNN

R50 = (3, 4, 6, 3)
SIZE = 64
WIDTHS = {"FPN": {"OUT_CHANNELS": 32}, "ROI_BOX_HEAD": {"FC_DIM": 64}, "ROI_MASK_HEAD": {"CONV_DIM": 32}}


# ----------------------------------------------------------------------------- synthetic checkpoints


def d2_name(name: str) -> str:
    """liverrt name (without ``net.``) -> Detectron2 name: the importer's table, inverted by hand."""
    p = name.split(".")
    if p[:2] == ["backbone", "body"]:
        if p[2] == "conv1":
            return "backbone.bottom_up.stem.conv1.weight"
        if p[2] == "bn1":
            return f"backbone.bottom_up.stem.conv1.norm.{p[3]}"
        block = f"backbone.bottom_up.res{int(p[2][len('layer'):]) + 1}.{p[3]}"
        if p[4] == "downsample":
            return f"{block}.shortcut.weight" if p[5] == "0" else f"{block}.shortcut.norm.{p[6]}"
        if p[4].startswith("conv"):
            return f"{block}.{p[4]}.weight"
        return f"{block}.conv{p[4][2:]}.norm.{p[5]}"
    if p[:2] == ["backbone", "fpn"]:
        kind = {"inner_blocks": "lateral", "layer_blocks": "output"}[p[2]]
        return f"backbone.fpn_{kind}{int(p[3]) + 2}.{p[5]}"
    if p[:2] == ["rpn", "head"]:
        return "proposal_generator.rpn_head." + {"conv": "conv", "cls_logits": "objectness_logits",
                                                 "bbox_pred": "anchor_deltas"}[p[2]] + "." + p[-1]
    if p[1] == "box_head":
        return f"roi_heads.box_head.fc{int(p[2][2:]) - 5}.{p[3]}"
    if p[1] == "box_predictor":
        return name
    if p[1] == "mask_head":
        return f"roi_heads.mask_head.mask_fcn{int(p[2]) + 1}.{p[4]}"
    if p[1] == "mask_predictor":
        return "roi_heads.mask_head." + {"conv5_mask": "deconv", "mask_fcn_logits": "predictor"}[p[2]] + "." + p[3]
    raise AssertionError(f"no Detectron2 name for {name}")


def random_like(d2: str, shape, g: torch.Generator) -> torch.Tensor:
    if d2.endswith("running_var"):
        return torch.rand(shape, generator=g) * 1.5 + 0.5
    if d2.endswith(("running_mean", "bias")):
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) == 1:  # a norm's weight
        return torch.rand(shape, generator=g) + 0.5
    fan_in = int(np.prod(shape[1:]))
    return torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5


def d2_state(*, classes: int = 2, depth: int = 50, fpn: int = 32, box_dim: int = 64, mask_ch: int = 32,
             box_agnostic: bool = False, mask_agnostic: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Detectron2-named Mask R-CNN state dict with ``classes`` foreground classes and random values."""
    with torch.device("meta"):
        ref = LiverMaskRCNN(depth=depth, num_classes=classes + 1, norm="frozen_bn", in_channels=3,
                            pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, input_format="BGR", image_size=SIZE,
                            fpn_channels=fpn, box_head_dim=box_dim, mask_head_channels=mask_ch)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in ref.state_dict().items():
        d2 = d2_name(name.removeprefix("net."))
        shape = list(t.shape)
        if d2.startswith("roi_heads.box_predictor.bbox_pred"):
            shape[0] = 4 if box_agnostic else 4 * classes
        if d2.startswith("roi_heads.mask_head.predictor"):
            shape[0] = 1 if mask_agnostic else classes
        out[d2] = random_like(d2, shape, g)
    return out


def cfg(**model) -> dict:
    """A small Detectron2 config tree for the synthetic widths, with MODEL overrides (nested dicts)."""
    tree = {"MODEL": {"RESNETS": {"DEPTH": 50}, "ROI_HEADS": {"NUM_CLASSES": 2}, **{k: dict(v) for k, v in WIDTHS.items()}}}
    for key, value in model.items():
        if isinstance(value, dict):
            tree["MODEL"].setdefault(key, {}).update(value)
        else:
            tree["MODEL"][key] = value
    return tree


def build(model_config: dict, state: dict | None = None) -> LiverMaskRCNN:
    model = LiverMaskRCNN(**model_config)
    if state is not None:
        model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="module")
def d2() -> dict[str, torch.Tensor]:
    return d2_state()


@pytest.fixture(scope="module")
def imported(d2):
    state, config, notes = convert_detectron2_state_dict(d2, None, size=SIZE)
    return build(config, state), state, config, notes


# ----------------------------------------------------------------------------- Detectron2 references


def frozen_bn(x, w, prefix, eps=1e-5):
    scale = w[prefix + "weight"] / torch.sqrt(w[prefix + "running_var"] + eps)
    shift = w[prefix + "bias"] - w[prefix + "running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def conv_norm(x, w, prefix, stride=1, padding=0):
    return frozen_bn(F.conv2d(x, w[prefix + ".weight"], stride=stride, padding=padding), w, prefix + ".norm.")


def d2_bottleneck(x, w, prefix, stride, stride_in_1x1=True):
    s1x1, s3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    out = F.relu(conv_norm(x, w, prefix + ".conv1", stride=s1x1))
    out = F.relu(conv_norm(out, w, prefix + ".conv2", stride=s3x3, padding=1))
    out = conv_norm(out, w, prefix + ".conv3")
    shortcut = conv_norm(x, w, prefix + ".shortcut", stride=stride) if prefix + ".shortcut.weight" in w else x
    return F.relu(out + shortcut)


def d2_bottom_up(x, w, blocks=R50, stride_in_1x1=True):
    x = F.relu(conv_norm(x, w, "backbone.bottom_up.stem.conv1", stride=2, padding=3))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    feats = []
    for stage, n in zip(range(2, 6), blocks, strict=True):
        for i in range(n):
            stride = 2 if i == 0 and stage > 2 else 1
            x = d2_bottleneck(x, w, f"backbone.bottom_up.res{stage}.{i}", stride, stride_in_1x1)
        feats.append(x)
    return feats


def d2_fpn(feats, w):
    lateral = [F.conv2d(f, w[f"backbone.fpn_lateral{s}.weight"], w[f"backbone.fpn_lateral{s}.bias"])
               for s, f in zip(range(2, 6), feats, strict=True)]

    def output(x, s):
        return F.conv2d(x, w[f"backbone.fpn_output{s}.weight"], w[f"backbone.fpn_output{s}.bias"], padding=1)

    prev = lateral[3]
    outs = [output(prev, 5)]
    for s in (4, 3, 2):
        prev = lateral[s - 2] + F.interpolate(prev, scale_factor=2.0, mode="nearest")
        outs.insert(0, output(prev, s))
    return [*outs, F.max_pool2d(outs[-1], kernel_size=1, stride=2)]


def d2_rpn_head(feats, w):
    pre = "proposal_generator.rpn_head."
    logits, deltas = [], []
    for f in feats:
        t = F.relu(F.conv2d(f, w[pre + "conv.weight"], w[pre + "conv.bias"], padding=1))
        logits.append(F.conv2d(t, w[pre + "objectness_logits.weight"], w[pre + "objectness_logits.bias"]))
        deltas.append(F.conv2d(t, w[pre + "anchor_deltas.weight"], w[pre + "anchor_deltas.bias"]))
    return logits, deltas


def d2_box_head(pooled, w):
    x = pooled.flatten(1)
    for i in (1, 2):
        x = F.relu(F.linear(x, w[f"roi_heads.box_head.fc{i}.weight"], w[f"roi_heads.box_head.fc{i}.bias"]))
    p = "roi_heads.box_predictor."
    return (F.linear(x, w[p + "cls_score.weight"], w[p + "cls_score.bias"]),
            F.linear(x, w[p + "bbox_pred.weight"], w[p + "bbox_pred.bias"]))


def d2_mask_head(pooled, w):
    p = "roi_heads.mask_head."
    x = pooled
    for i in range(1, 5):
        x = F.relu(F.conv2d(x, w[f"{p}mask_fcn{i}.weight"], w[f"{p}mask_fcn{i}.bias"], padding=1))
    x = F.relu(F.conv_transpose2d(x, w[p + "deconv.weight"], w[p + "deconv.bias"], stride=2))
    return F.conv2d(x, w[p + "predictor.weight"], w[p + "predictor.bias"])


def d2_roi_pool(feats, boxes, output_size, sampling_ratio, aligned):
    """Detectron2's ROIPooler: assign_boxes_to_levels (canonical 224 px on level 4), then ROIAlign per level."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = (torch.floor(4 + torch.log2(sizes / 224 + 1e-8)).clamp(2, 5) - 2).long()
    out = feats[0].new_zeros((len(boxes), feats[0].shape[1], output_size, output_size))
    rois = torch.cat([boxes.new_zeros((len(boxes), 1)), boxes], dim=1)
    for lvl, feat in enumerate(feats):
        idx = torch.where(levels == lvl)[0]
        out[idx] = roi_align(feat, rois[idx], output_size, spatial_scale=1 / 2 ** (lvl + 2),
                             sampling_ratio=sampling_ratio, aligned=aligned)
    return out


def close(actual, expected, rtol=1e-4):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()) + 1e-6)


# ----------------------------------------------------------------------------- names and placement


def test_every_tensor_lands_at_its_place(d2, imported):
    model, state, config, notes = imported
    k = 2
    assert set(state) == set(model.state_dict())
    assert (config["depth"], config["num_classes"], config["norm"], config["in_channels"]) == (50, 3, "frozen_bn", 3)
    assert (config["fpn_channels"], config["box_head_dim"], config["mask_head_channels"]) == (32, 64, 32)
    for name, tensor in state.items():
        src = d2[d2_name(name.removeprefix("net."))]
        if name.endswith(("cls_score.weight", "cls_score.bias")):
            assert torch.equal(tensor[0], src[k]) and torch.equal(tensor[1:], src[:k])
        elif "bbox_pred" in name and "box_predictor" in name:
            assert torch.equal(tensor[4:], src) and not tensor[:4].any()
        elif "mask_fcn_logits" in name:
            assert torch.equal(tensor[1:], src) and not tensor[0].any()
        else:
            assert torch.equal(tensor, src), name
    assert notes.values["MODEL.RESNETS.DEPTH"] == {"value": 50, "from": "weights"}
    assert notes.values["MODEL.ROI_HEADS.NUM_CLASSES"] == {"value": 2, "from": "weights"}
    assert any("inferred from the weights" in n for n in notes.notes)
    assert any("background" in n for n in notes.notes)


def test_class_agnostic_heads_are_replicated_per_class(d2):
    agnostic = dict(d2)
    g = torch.Generator().manual_seed(1)
    for suffix, shape in (("weight", (4, 64)), ("bias", (4,))):
        agnostic[f"roi_heads.box_predictor.bbox_pred.{suffix}"] = torch.randn(shape, generator=g)
    for suffix, shape in (("weight", (1, 32, 1, 1)), ("bias", (1,))):
        agnostic[f"roi_heads.mask_head.predictor.{suffix}"] = torch.randn(shape, generator=g)
    state, _, notes = convert_detectron2_state_dict(agnostic, None, size=SIZE)
    box = state["net.roi_heads.box_predictor.bbox_pred.weight"]
    mask = state["net.roi_heads.mask_predictor.mask_fcn_logits.bias"]
    src_box, src_mask = agnostic["roi_heads.box_predictor.bbox_pred.weight"], agnostic["roi_heads.mask_head.predictor.bias"]
    assert box.shape == (12, 64) and not box[:4].any()
    assert torch.equal(box[4:8], src_box) and torch.equal(box[8:], src_box)
    assert mask[0] == 0 and torch.equal(mask[1:], src_mask.repeat(2))
    assert notes.values["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"]["value"] is True
    assert sum("replicated" in n for n in notes.notes) == 2
    # the config must agree with the weights
    convert_detectron2_state_dict(agnostic, cfg(ROI_BOX_HEAD={"CLS_AGNOSTIC_BBOX_REG": True},
                                                ROI_MASK_HEAD={"CLS_AGNOSTIC_MASK": True}), size=SIZE)
    with pytest.raises(ArtifactError, match=r"bbox_pred\.weight: checkpoint shape \(4, 64\).*\(8, 64\)"):
        convert_detectron2_state_dict(agnostic, cfg(ROI_MASK_HEAD={"CLS_AGNOSTIC_MASK": True}), size=SIZE)


def test_unknown_weights_are_errors_and_harmless_extras_are_reported(d2):
    extra = {**d2, "pixel_mean": torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1),
             "pixel_std": torch.ones(3, 1, 1), "backbone.bottom_up.stem.conv1.norm.num_batches_tracked": torch.tensor(5),
             "proposal_generator.anchor_generator.cell_anchors.0": torch.zeros(3, 4)}
    _, config, notes = convert_detectron2_state_dict(extra, None, size=SIZE)
    assert set(notes.ignored_keys) == set(extra) - set(d2)
    assert config["pixel_mean"] == [1.0, 2.0, 3.0]  # stored buffers count as weights without a config
    assert any("ignored 4" in n for n in notes.notes)
    with pytest.raises(ArtifactError, match=r"roi_heads\.keypoint_head\.fcn1\.weight"):
        convert_detectron2_state_dict({**d2, "roi_heads.keypoint_head.fcn1.weight": torch.zeros(1)}, None, size=SIZE)
    with pytest.raises(ArtifactError, match=r"res2\.3\.conv1\.weight -> net\.backbone\.body\.layer1\.3"):
        convert_detectron2_state_dict({**d2, "backbone.bottom_up.res2.3.conv1.weight": torch.zeros(1)}, None,
                                      size=SIZE)


def test_missing_weights_are_listed(d2):
    partial = {k: v for k, v in d2.items() if not k.startswith("roi_heads.mask_head.mask_fcn3.")}
    with pytest.raises(ArtifactError, match=r"lacks 2 weight.*net\.roi_heads\.mask_head\.2\.0\.bias"):
        convert_detectron2_state_dict(partial, None, size=SIZE)


def test_foreign_state_dicts_are_refused(d2):
    with pytest.raises(ArtifactError, match="torchvision"):
        convert_detectron2_state_dict({"backbone.body.conv1.weight": torch.zeros(1)}, None)
    with pytest.raises(ArtifactError, match="liverrt"):
        convert_detectron2_state_dict({"net.backbone.body.conv1.weight": torch.zeros(1)}, None)


# ----------------------------------------------------------------------------- config checks


def test_depth_is_inferred_and_checked_against_the_config(d2):
    with pytest.raises(ArtifactError, match=r"res4: the checkpoint has 6 blocks.*DEPTH=101 expects 23"):
        convert_detectron2_state_dict(d2, cfg(RESNETS={"DEPTH": 101}), size=SIZE)
    short = {k: v for k, v in d2.items() if not k.startswith("backbone.bottom_up.res4.5.")}
    with pytest.raises(ArtifactError, match=r"res4 has 5 blocks; expected 6 \(R-50\) or 23 \(R-101\)"):
        convert_detectron2_state_dict(short, None, size=SIZE)


def test_num_classes_and_widths_are_checked_against_the_config(d2):
    with pytest.raises(ArtifactError, match=r"cls_score\.weight: checkpoint shape \(3, 64\).*NUM_CLASSES=1 expects \(2, 64\)"):
        convert_detectron2_state_dict(d2, cfg(ROI_HEADS={"NUM_CLASSES": 1}), size=SIZE)
    with pytest.raises(ArtifactError, match=r"fpn_lateral2\.weight: checkpoint shape \(32, 256, 1, 1\).*OUT_CHANNELS=256"):
        convert_detectron2_state_dict(d2, cfg(FPN={"OUT_CHANNELS": 256}), size=SIZE)
    _, config, notes = convert_detectron2_state_dict(d2, cfg(), size=SIZE)
    assert notes.values["MODEL.RESNETS.DEPTH"] == {"value": 50, "from": "config"}
    assert notes.values["MODEL.RESNETS.STRIDE_IN_1X1"] == {"value": True, "from": "default"}
    assert config["rpn_pre_nms_top_n_test"] == 1000


def test_architectures_liverrt_cannot_build_are_refused(d2):
    with pytest.raises(ArtifactError, match="MODEL.ROI_HEADS.NAME='CascadeROIHeads'"):
        convert_detectron2_state_dict(d2, cfg(ROI_HEADS={"NAME": "CascadeROIHeads"}), size=SIZE)
    with pytest.raises(ArtifactError, match="MODEL.RESNETS.NUM_GROUPS=32"):
        convert_detectron2_state_dict(d2, cfg(RESNETS={"NUM_GROUPS": 32}), size=SIZE)
    with pytest.raises(ArtifactError, match="POOLER_TYPE"):
        convert_detectron2_state_dict(d2, cfg(ROI_MASK_HEAD={"POOLER_TYPE": "ROIAlign"}), size=SIZE)


# ----------------------------------------------------------------------------- numerics against Detectron2


def test_frozen_bn_computes_detectron2s_affine_map(d2, imported):
    model = imported[0]
    bn = model.net.backbone.body.layer1[0].bn2
    x = torch.randn(2, 64, 5, 5, generator=torch.Generator().manual_seed(0))
    assert bn.eps == 1e-5
    close(bn(x), frozen_bn(x, d2, "backbone.bottom_up.res2.0.conv2.norm."), rtol=1e-5)


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_stride_in_1x1_moves_the_stride_and_matches_detectron2s_bottleneck(d2, stride_in_1x1):
    state, config, _ = convert_detectron2_state_dict(d2, cfg(RESNETS={"STRIDE_IN_1X1": stride_in_1x1}), size=SIZE)
    model = build(config, state)
    body = model.net.backbone.body
    for layer in (body.layer2, body.layer3, body.layer4):
        strides = (layer[0].conv1.stride, layer[0].conv2.stride)
        assert strides == (((2, 2), (1, 1)) if stride_in_1x1 else ((1, 1), (2, 2)))
    x = torch.randn(1, 256, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = body.layer2[0](x)
    close(ours, d2_bottleneck(x, d2, "backbone.bottom_up.res3.0", 2, stride_in_1x1))
    other = d2_bottleneck(x, d2, "backbone.bottom_up.res3.0", 2, not stride_in_1x1)
    assert (ours - other).abs().max() > 1e-2  # the flag matters


def test_backbone_fpn_and_rpn_head_match_detectron2(d2, imported):
    model = imported[0]
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 50
    with torch.no_grad():
        body = list(model.net.backbone.body(x).values())
        feats = list(model.net.backbone(x).values())
        logits, deltas = model.net.rpn.head(feats)
    ref_body = d2_bottom_up(x, d2)
    ref_feats = d2_fpn(ref_body, d2)
    ref_logits, ref_deltas = d2_rpn_head(ref_feats, d2)
    for ours, ref in zip(body + feats + logits + deltas, ref_body + ref_feats + ref_logits + ref_deltas, strict=True):
        assert ours.shape == ref.shape
        close(ours, ref)


def test_box_and_mask_heads_match_detectron2_with_classes_reordered(d2, imported):
    model = imported[0]
    heads = model.net.roi_heads
    g = torch.Generator().manual_seed(0)
    pooled7, pooled14 = torch.randn(5, 32, 7, 7, generator=g), torch.randn(5, 32, 14, 14, generator=g)
    with torch.no_grad():
        scores, deltas = heads.box_predictor(heads.box_head(pooled7))
        masks = heads.mask_predictor(heads.mask_head(pooled14))
    ref_scores, ref_deltas = d2_box_head(pooled7, d2)
    probs, ref_probs = scores.softmax(-1), ref_scores.softmax(-1)
    close(probs[:, 0], ref_probs[:, 2])  # background: first in torchvision, last in Detectron2
    close(probs[:, 1:], ref_probs[:, :2])
    close(deltas[:, 4:], ref_deltas)
    close(masks[:, 1:], d2_mask_head(pooled14, d2))


def test_roi_align_flag_reaches_the_poolers_and_changes_pooled_features(d2):
    g = torch.Generator().manual_seed(0)
    feats = {str(i): torch.randn(1, 8, 256 // 2 ** (i + 2), 256 // 2 ** (i + 2), generator=g) for i in range(4)}
    boxes = torch.tensor([[10.3, 12.7, 60.1, 71.9], [20.5, 20.2, 150.8, 160.4], [3.0, 5.0, 250.0, 251.0]])
    pooled = {}
    for kind, aligned in (("ROIAlignV2", True), ("ROIAlign", False)):
        tree = cfg(ROI_BOX_HEAD={"POOLER_TYPE": kind, "POOLER_SAMPLING_RATIO": 2},
                   ROI_MASK_HEAD={"POOLER_TYPE": kind, "POOLER_SAMPLING_RATIO": 2})
        _, config, _ = convert_detectron2_state_dict(d2, tree, size=SIZE)
        assert (config["roi_aligned"], config["sampling_ratio"]) == (aligned, 2)
        model = build(config)
        for pool in (model.net.roi_heads.box_roi_pool, model.net.roi_heads.mask_roi_pool):
            assert (pool.aligned, pool.sampling_ratio) == (aligned, 2)
        pooled[aligned] = model.net.roi_heads.box_roi_pool(feats, [boxes], [(256, 256)])
        close(pooled[aligned], d2_roi_pool(list(feats.values()), boxes, 7, 2, aligned), rtol=1e-5)
    assert (pooled[True] - pooled[False]).abs().max() > 1e-2
    _, config, _ = convert_detectron2_state_dict(d2, None, size=SIZE)
    assert (config["roi_aligned"], config["sampling_ratio"]) == (True, 0)  # Detectron2's defaults


@pytest.mark.parametrize("fmt, mean, std", [
    ("BGR", None, None),  # Detectron2's defaults: BGR ImageNet means, unit std
    ("RGB", [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]),  # torchvision-converted weights
])
def test_normalize_equals_detectron2_preprocessing(d2, fmt, mean, std):
    tree = cfg(**({"PIXEL_MEAN": mean, "PIXEL_STD": std} if mean else {}))
    tree["INPUT"] = {"FORMAT": fmt}
    _, config, _ = convert_detectron2_state_dict(d2, tree, size=SIZE)
    mean = mean or [103.53, 116.28, 123.675]
    std = std or [1.0, 1.0, 1.0]
    assert (config["pixel_mean"], config["pixel_std"], config["input_format"]) == (mean, std, fmt)
    assert (config["in_channels"], config["input_scale"]) == (3, 255.0)
    gray = torch.rand(1, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    image = (gray[0, 0] * 255).unsqueeze(-1).expand(-1, -1, 3)  # H, W, C in INPUT.FORMAT order (equal channels)
    ref = (image.permute(2, 0, 1) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    close(build(config).normalize(gray)[0], ref, rtol=1e-6)


def test_one_channel_stem_with_format_l(d2):
    gray = {**d2, "backbone.bottom_up.stem.conv1.weight": torch.randn(64, 1, 7, 7)}
    tree = cfg(PIXEL_MEAN=[128.0], PIXEL_STD=[64.0])
    tree["INPUT"] = {"FORMAT": "L"}
    state, config, _ = convert_detectron2_state_dict(gray, tree, size=SIZE)
    assert (config["in_channels"], config["input_format"], config["pixel_mean"]) == (1, "L", [128.0])
    model = build(config, state)
    x = torch.rand(1, 1, SIZE, SIZE)
    close(model.normalize(x), (x * 255 - 128) / 64, rtol=1e-6)
    with pytest.raises(ArtifactError, match=r"1 input channel.*PIXEL_MEAN has 3 value"):
        convert_detectron2_state_dict(gray, cfg(), size=SIZE)


def test_config_statistics_win_over_stored_buffers(d2):
    stored = {**d2, "pixel_mean": torch.tensor([1.0, 2.0, 3.0]), "pixel_std": torch.ones(3)}
    _, config, notes = convert_detectron2_state_dict(stored, cfg(), size=SIZE)
    assert config["pixel_mean"] == [103.53, 116.28, 123.675]
    assert any("stored pixel_mean" in n for n in notes.notes)
    with pytest.raises(ArtifactError, match=r"3 input channel.*PIXEL_MEAN has 1 value"):
        convert_detectron2_state_dict(d2, cfg(PIXEL_MEAN=[100.0], PIXEL_STD=[1.0]), size=SIZE)


# ----------------------------------------------------------------------------- reading files


def test_pth_with_model_entry_bare_or_ddp_prefixed(tmp_path):
    small = {"backbone.bottom_up.stem.conv1.weight": torch.randn(4, 3, 7, 7), "roi_heads.x.bias": torch.zeros(2)}
    for i, data in enumerate(({"model": small, "__author__": "me", "iteration": 99}, small,
                              {"model": {f"module.{k}": v for k, v in small.items()}})):
        torch.save(data, tmp_path / f"{i}.pth")
        ckpt = read_detectron2_checkpoint(tmp_path / f"{i}.pth")
        assert set(ckpt.state) == set(small) and all(torch.equal(ckpt.state[k], small[k]) for k in small)
    assert read_detectron2_checkpoint(tmp_path / "0.pth").iteration == 99
    assert "module." in read_detectron2_checkpoint(tmp_path / "2.pth").notes[0]


def test_numpy_values_need_trust_pickle(tmp_path):
    path = tmp_path / "np.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": np.ones((2, 3), np.float32)}}, path)
    with pytest.raises(ArtifactError, match=r"numpy arrays.*weights_only=True.*--trust-pickle"):
        read_detectron2_checkpoint(path)
    ckpt = read_detectron2_checkpoint(path, trust_pickle=True)
    assert torch.equal(ckpt.state["backbone.bottom_up.stem.conv1.weight"], torch.ones(2, 3))


def test_pkl_needs_trust_pickle_and_caffe2_names_are_refused(tmp_path):
    path = tmp_path / "model_final.pkl"
    arrays = {"backbone.bottom_up.stem.conv1.weight": np.full((2, 3), 2.0, np.float32)}
    path.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron2 Model Zoo"}))
    with pytest.raises(InputError, match=r"pickle.*--trust-pickle"):
        read_detectron2_checkpoint(path)
    ckpt = read_detectron2_checkpoint(path, trust_pickle=True)
    assert ckpt.author == "Detectron2 Model Zoo" and float(ckpt.state["backbone.bottom_up.stem.conv1.weight"][0, 0]) == 2
    caffe2 = tmp_path / "R-50.pkl"
    caffe2.write_bytes(pickle.dumps({"model": {"conv1_w": np.zeros(1), "res2_0_branch2a_w": np.zeros(1)},
                                     "__author__": "Detectron"}))
    with pytest.raises(ArtifactError, match="Caffe2"):
        read_detectron2_checkpoint(caffe2, trust_pickle=True)
    caffe2.write_bytes(pickle.dumps({"conv1_w": np.zeros(1), "res2_0_branch2a_w": np.zeros(1)}))
    with pytest.raises(ArtifactError, match="Caffe2"):
        read_detectron2_checkpoint(caffe2, trust_pickle=True)


def test_unreadable_or_foreign_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_detectron2_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ArtifactError, match="Cannot read"):
        read_detectron2_checkpoint(tmp_path / "junk.pth")
    torch.save({"format": "liverrt.checkpoint", "state_dict": {}}, tmp_path / "ours.pt")
    with pytest.raises(ArtifactError, match="already a liverrt checkpoint"):
        read_detectron2_checkpoint(tmp_path / "ours.pt")
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "other.pth")
    with pytest.raises(ArtifactError, match="no 'model' state dict"):
        read_detectron2_checkpoint(tmp_path / "other.pth")


# ----------------------------------------------------------------------------- YAML configs


def test_config_base_chain_is_merged_with_the_file_winning(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "Base-RCNN-FPN.yaml").write_text(
        "MODEL:\n  ROI_HEADS:\n    NAME: StandardROIHeads\n    NUM_CLASSES: 80\n  RESNETS:\n    DEPTH: 50\n"
        "INPUT:\n  MIN_SIZE_TRAIN: !!python/tuple [640, 672]\n")
    (tmp_path / "cfg").mkdir()
    child = tmp_path / "cfg" / "liver.yaml"
    child.write_text("_BASE_: ../base/Base-RCNN-FPN.yaml\nMODEL:\n  RESNETS:\n    DEPTH: 101\n"
                     "    STRIDE_IN_1X1: false\n  ROI_HEADS:\n    NUM_CLASSES: 1\n")
    tree = read_detectron2_config(child)
    assert tree["MODEL"]["RESNETS"] == {"DEPTH": 101, "STRIDE_IN_1X1": False}
    assert tree["MODEL"]["ROI_HEADS"] == {"NAME": "StandardROIHeads", "NUM_CLASSES": 1}
    assert tree["INPUT"]["MIN_SIZE_TRAIN"] == [640, 672]
    child.write_text("_BASE_: missing.yaml\n")
    with pytest.raises(InputError, match=r"missing\.yaml.*_BASE_ of"):
        read_detectron2_config(child)
    child.write_text("_BASE_: liver.yaml\n")
    with pytest.raises(InputError, match="loops"):
        read_detectron2_config(child)
    child.write_text("MODEL: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        read_detectron2_config(child)
