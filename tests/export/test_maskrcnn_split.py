"""The split Mask R-CNN: three graphs plus the NumPy/Numba pipeline equal the PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from liverrt.export.maskrcnn_split import BoxPart, MaskPart, RPNPart, export_parts
from liverrt.models.maskrcnn import LiverMaskRCNN
from liverrt.runtime.maskrcnn_split import ANCHOR_SIZES, SplitMaskRCNN, grid_anchors

TINY = dict(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
            rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, score_threshold=0.3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = LiverMaskRCNN(**TINY).eval()
    with torch.no_grad():  # a confident class head, so detections exist without training
        m.net.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-2.0, 2.0]))
    return m


def _torch_runner(model):
    parts = {"rpn": RPNPart(model), "box": BoxPart(model), "mask": MaskPart(model)}
    names = {"rpn": RPNPart.output_names(), "box": ["class_logits", "box_regression"], "mask": ["mask_logits"]}

    def run(part, inputs):
        with torch.no_grad():
            args = [torch.from_numpy(inputs[k]) for k in (["image"] if part == "rpn" else
                                                          ["feat_0", "feat_1", "feat_2", "feat_3", "rois"])]
            outs = parts[part](*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return {n: o.numpy() for n, o in zip(names[part], outs, strict=True)}

    return run


def _assert_same_detections(ref, ours, *, box_atol, score_atol, mask_atol=None):
    """Every reference detection has its twin (near-equal scores may swap places in the order)."""
    rb, rs = ref["boxes"].numpy(), ref["scores"].numpy()
    used = set()
    for i in range(len(rb)):
        close = [j for j in range(len(ours["boxes"])) if j not in used
                 and np.abs(ours["boxes"][j] - rb[i]).max() <= box_atol and abs(ours["scores"][j] - rs[i]) <= score_atol]
        assert close, f"detection {i} {rb[i]} ({rs[i]:.4f}) has no twin"
        j = close[0]
        used.add(j)
        assert ours["labels"][j] == ref["labels"][i]
        if mask_atol is not None:
            assert np.abs(ours["masks"][j] - ref["masks"][i].numpy()).max() <= mask_atol


def test_anchors_equal_torchvision():
    gen = AnchorGenerator(tuple((s,) for s in ANCHOR_SIZES), ((0.5, 1.0, 2.0),) * 5)
    from torchvision.models.detection.image_list import ImageList

    feats = [torch.zeros(1, 1, 64 // 2**k, 64 // 2**k) for k in range(2, 7)]
    ref = gen(ImageList(torch.zeros(1, 1, 64, 64), [(64, 64)]), feats)[0].numpy()
    ours = np.concatenate([grid_anchors(f.shape[-2:], 64, ANCHOR_SIZES[i]) for i, f in enumerate(feats)])
    assert np.array_equal(ours, ref)


def test_pipeline_equals_the_pytorch_model(model):
    x = torch.rand(3, 1, 64, 64)
    ref = model.detect(x)
    ours = SplitMaskRCNN(model.config, _torch_runner(model)).detect(x.numpy())
    assert sum(len(r["boxes"]) for r in ref) > 0
    for r, o in zip(ref, ours, strict=True):
        assert o["boxes"].shape == tuple(r["boxes"].shape)
        _assert_same_detections(r, o, box_atol=1e-3, score_atol=1e-4, mask_atol=1e-3)
    pred_ref = model.predict(x)
    pred = SplitMaskRCNN(model.config, _torch_runner(model)).predict(x.numpy())
    assert np.allclose(pred["prob"], pred_ref["prob"].numpy(), atol=1e-4)


def test_blank_slices_and_no_detections(model):
    split = SplitMaskRCNN(model.config, _torch_runner(model))
    out = split.detect(np.zeros((1, 1, 64, 64), np.float32))[0]
    assert out["masks"].shape == (len(out["boxes"]), 1, 64, 64)
    strict = SplitMaskRCNN({**model.config, "max_instances": 0}, _torch_runner(model))
    none = strict.predict(np.random.default_rng(0).random((2, 1, 64, 64), np.float32))
    assert none["prob"].shape == (2, 1, 64, 64) and none["prob"].max() == 0


def test_onnx_parts_run_on_onnxruntime(model, tmp_path):
    import onnxruntime as ort

    paths = {p: str(tmp_path / f"{p}.onnx") for p in ("rpn", "box", "mask")}
    export_parts(model, paths, opset=18)
    sessions = {p: ort.InferenceSession(paths[p], providers=["CPUExecutionProvider"]) for p in paths}

    def run(part, inputs):
        sess = sessions[part]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, {i.name: inputs[i.name] for i in sess.get_inputs()}), strict=True))

    x = torch.rand(2, 1, 64, 64)
    ref = model.detect(x)
    ours = SplitMaskRCNN(model.config, run).detect(x.numpy())
    for r, o in zip(ref, ours, strict=True):
        assert len(r["boxes"]) > 0 and len(o["boxes"]) == len(r["boxes"])
        _assert_same_detections(r, o, box_atol=0.05, score_atol=1e-3)
