"""The study's Mask R-CNN built from torchvision parts (Table 5)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from liverrt.errors import ArtifactError, InputError
from liverrt.models import build, from_config
from liverrt.models.maskrcnn import (
    AlignedMultiScaleRoIAlign,
    LiverMaskRCNN,
    instances_to_outputs,
    load_backbone_weights,
    param_groups,
)

TINY = dict(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
            rpn_post_nms_top_n_test=50)


@pytest.fixture(scope="module")
def r101():
    return build("maskrcnn_r101_fpn")


def test_table5_architecture(r101):
    net = r101.net
    # ResNet-101 body: torchvision's resnet101 without fc, with a 1-channel stem
    ref = torchvision.models.resnet101(weights=None)
    ref_body = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc."))
    parts = param_groups(r101)
    assert parts["backbone.body"] == ref_body - 2 * 64 * 7 * 7  # 3 -> 1 input channel
    assert [len(getattr(net.backbone.body, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 23, 3]
    # FPN 256, P2..P6
    assert net.backbone.out_channels == 256
    feats = net.backbone(torch.zeros(1, 1, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    # RPN: one 3x3 conv of 256, 1x1 objectness and box deltas for 3 anchors
    head = net.rpn.head
    convs = [m for m in head.conv.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].out_channels == 256
    assert head.cls_logits.out_channels == 3 and head.bbox_pred.out_channels == 12
    # RoIAlign 7x7 (box) and 14x14 (mask), Detectron2's aligned variant
    assert net.roi_heads.box_roi_pool.output_size == (7, 7) and net.roi_heads.box_roi_pool.aligned
    assert net.roi_heads.mask_roi_pool.output_size == (14, 14)
    # box head 2 FC x 1024; mask head 4 conv x 256 + deconv; background + liver
    assert net.roi_heads.box_head.fc6.out_features == 1024 and net.roi_heads.box_head.fc7.out_features == 1024
    assert net.roi_heads.box_predictor.cls_score.out_features == 2
    mask_convs = [m for m in net.roi_heads.mask_head.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.out_channels, m.kernel_size) for m in mask_convs] == [(256, (3, 3))] * 4
    assert isinstance(net.roi_heads.mask_predictor.conv5_mask, nn.ConvTranspose2d)
    # trainable GroupNorm by default, never torchvision's frozen BN with random weights
    norms = [m for m in net.backbone.body.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and not any(isinstance(m, torchvision.ops.FrozenBatchNorm2d) for m in net.modules())
    assert all(p.requires_grad for p in r101.parameters())


def test_random_weights_give_finite_features_and_proposals(r101):
    """The reason for trainable GroupNorm: frozen BN with random statistics explodes."""
    r101.eval()
    x = torch.rand(1, 1, 128, 128)
    with torch.no_grad():
        feats = r101.net.backbone(r101.normalize(x))
        assert all(torch.isfinite(f).all() and f.abs().max() < 1e3 for f in feats.values())
        images, _ = r101.net.transform(list(r101.normalize(x)))
        proposals, _ = r101.net.rpn(images, feats)
    assert proposals[0].shape[0] > 0


def test_one_channel_input_is_handled_explicitly():
    model = LiverMaskRCNN(**TINY)
    x = torch.full((2, 1, 64, 64), 0.75)
    assert torch.allclose(model.normalize(x), torch.full((2, 1, 64, 64), 1.0))  # (0.75 - 0.5) / 0.25
    three = LiverMaskRCNN(**{**TINY, "in_channels": 3, "input_scale": 255.0, "input_format": "BGR",
                             "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1.0, 1.0, 1.0]})
    y = three.normalize(x)
    assert y.shape == (2, 3, 64, 64)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([0.75 * 255 - 103.53, 0.75 * 255 - 116.28, 0.75 * 255 - 123.675]))
    with pytest.raises(InputError, match="broadcast silently"):
        LiverMaskRCNN(**{**TINY, "pixel_mean": [0.5, 0.5, 0.5]})
    with pytest.raises(InputError, match=r"expected \(N, 1, H, W\)"):
        model.normalize(torch.rand(1, 3, 64, 64))


def test_bad_configs_are_refused():
    for bad, match in [({"depth": 152}, "depth"), ({"norm": "ln"}, "norm"), ({"num_classes": 1}, "num_classes"),
                       ({"image_size": 100}, "multiple of 32"), ({"in_channels": 2}, "in_channels"),
                       ({"pixel_std": [0.0]}, "positive"), ({"score_threshold": 1.0}, "threshold")]:
        with pytest.raises(InputError, match=match):
            LiverMaskRCNN(**{**TINY, **bad})


def test_config_round_trip_rebuilds_the_same_model():
    model = LiverMaskRCNN(**TINY)
    again = from_config("maskrcnn", model.config)
    again.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 64, 64)
    model.eval(), again.eval()
    with torch.no_grad():
        a = model.net.backbone(model.normalize(x))
        b = again.net.backbone(again.normalize(x))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ArtifactError):
        from_config("maskrcnn", {**model.config, "bogus": 1})


def test_training_mode_returns_the_five_losses():
    model = LiverMaskRCNN(**TINY).train()
    mask = torch.zeros(1, 64, 64, dtype=torch.uint8)
    mask[0, 10:40, 8:30] = 1
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 30.0, 40.0]]), "labels": torch.tensor([1]), "masks": mask},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros((0, 64, 64), dtype=torch.uint8)}]  # a slice without liver
    losses = model(torch.rand(2, 1, 64, 64), targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"] < 1.0  # predictor initialised small, not a saturated start


def test_outputs_are_the_union_of_kept_instances():
    a = torch.zeros(1, 8, 8)
    a[0, :4, :4] = 0.9
    b = torch.zeros(1, 8, 8)
    b[0, 4:, 4:] = 0.8
    c = torch.ones(1, 8, 8) * 0.99  # low-scoring instance covering everything
    dets = [{"boxes": torch.tensor([[0, 0, 4, 4], [4, 4, 8, 8], [0, 0, 8, 8]]).float(),
             "scores": torch.tensor([0.95, 0.7, 0.2]), "masks": torch.stack([a, b, c])},
            {"boxes": torch.zeros((0, 4)), "scores": torch.zeros(0), "masks": torch.zeros((0, 1, 8, 8))}]
    out = instances_to_outputs(dets, (8, 8), score_threshold=0.5, max_instances=2)
    prob = out["prob"]
    assert prob.shape == (2, 1, 8, 8)
    assert torch.equal(prob[0, 0] >= 0.5, (a[0] + b[0]) > 0)  # c is below the score threshold
    assert prob[1].sum() == 0 and out["scores"].shape == (2, 2) and out["boxes"].shape == (2, 2, 4)
    assert torch.equal(out["scores"][0], torch.tensor([0.95, 0.7]))


def test_predict_shapes():
    model = LiverMaskRCNN(**TINY).eval()
    out = model.predict(torch.rand(3, 1, 64, 64))
    assert out["prob"].shape == (3, 1, 64, 64) and out["scores"].shape == (3, 8)
    assert float(out["prob"].min()) >= 0 and float(out["prob"].max()) <= 1


def test_aligned_roi_align_matches_torchvision_when_not_aligned():
    feats = {"0": torch.rand(1, 4, 32, 32), "1": torch.rand(1, 4, 16, 16)}
    boxes = [torch.tensor([[2.0, 3.0, 20.0, 25.0], [10.0, 10.0, 60.0, 50.0]])]
    ours = AlignedMultiScaleRoIAlign(["0", "1"], 7, 2, aligned=False)
    ref = torchvision.ops.MultiScaleRoIAlign(["0", "1"], 7, 2)
    assert torch.equal(ours(feats, boxes, [(64, 64)]), ref(feats, boxes, [(64, 64)]))
    v2 = AlignedMultiScaleRoIAlign(["0", "1"], 7, 2, aligned=True)(feats, boxes, [(64, 64)])
    level0 = torchvision.ops.roi_align(feats["0"], [boxes[0][:1]], 7, spatial_scale=0.5, sampling_ratio=2,
                                       aligned=True)
    assert torch.allclose(v2[:1], level0)


def test_backbone_weights_load_from_a_local_file(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = LiverMaskRCNN(**{**TINY, "norm": "frozen_bn"})
    load_backbone_weights(model, tmp_path / "r18.pth")
    body = model.net.backbone.body
    assert torch.allclose(body.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(body.layer3[0].bn1.running_var, ref.layer3[0].bn1.running_var)
    with pytest.raises(InputError, match="frozen_bn"):
        load_backbone_weights(LiverMaskRCNN(**TINY), tmp_path / "r18.pth")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ArtifactError, match="does not have"):
        load_backbone_weights(model, tmp_path / "r34.pth")
