"""The split Mask R-CNN: three graphs plus the NumPy/Numba pipeline equal the PyTorch model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator

from liverrt.export.maskrcnn_split import FEATURES, ROIS, BoxPart, MaskPart, RPNPart, export_parts
from liverrt.models.maskrcnn import LiverMaskRCNN
from liverrt.runtime.maskrcnn_split import ANCHOR_SIZES, SplitMaskRCNN, grid_anchors, roi_levels

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
            args = [torch.from_numpy(inputs[k]) for k in (["image"] if part == "rpn" else [*FEATURES, *ROIS])]
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


def test_roi_levels_equal_torchvision_level_mapper():
    from torchvision.ops.poolers import LevelMapper

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, (500, 2)).astype(np.float32)
    wh = np.exp(rng.uniform(np.log(0.5), np.log(900), (500, 2))).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    # the level boundaries (sqrt(area) = 224 * 2^k), a zero-area box, a one-pixel box
    edges = np.array([[0, 0, 112, 112], [0, 0, 224, 224], [0, 0, 448, 448], [0, 0, 111.99, 112],
                      [5, 5, 5, 9], [3, 3, 4, 4]], np.float32)
    # squares a few float32 steps under each boundary: there the 1e-6 of the rule decides the level
    near = np.concatenate([(np.array([c], np.float32).view(np.int32) - np.arange(1, 12, dtype=np.int32))
                           .view(np.float32) for c in (112, 224, 448)])
    squares = np.stack([np.zeros_like(near), np.zeros_like(near), near, near], axis=1)
    boxes = np.concatenate([boxes, edges, squares])
    ref = LevelMapper(2, 5)([torch.from_numpy(boxes)]).numpy()
    assert np.array_equal(roi_levels(boxes), ref)
    assert set(ref) == {0, 1, 2, 3}  # every level is exercised


@pytest.mark.parametrize("empty_levels", [False, True], ids=["placeholders", "empty inputs"])
@pytest.mark.parametrize("spread", ["all levels, shuffled", "P2 only", "P5 only", "P3 and P5"])
def test_heads_take_rois_per_level_and_answer_in_roi_order(model, spread, empty_levels):
    """The box and mask graphs' per-level inputs against the model's own multi-level RoI pooling."""
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        levels = RPNPart(model)(x)[:4]
    feats = {f"feat_{i}": f.numpy() for i, f in enumerate(levels)}
    rng = np.random.default_rng(1)
    # sqrt(area) of a box on P2, P3, P4, P5; empty levels get a placeholder RoI or an empty input
    sides = {"all levels, shuffled": [20.0, 150.0, 300.0, 600.0], "P2 only": [20.0], "P5 only": [600.0],
             "P3 and P5": [150.0, 600.0]}[spread]
    side = np.repeat(sides, 5)
    side = side[rng.permutation(side.size)] * rng.uniform(0.9, 1.1, side.size)
    xy = rng.uniform(-100, 60, (side.size, 2))
    boxes = np.concatenate([xy, xy + side[:, None]], axis=1).astype(np.float32)
    image = rng.integers(0, 2, len(boxes)).astype(np.float32)
    rois = np.concatenate([image[:, None], boxes], axis=1)
    lv = roi_levels(boxes)
    assert len(set(lv)) == len(sides)
    heads = model.net.roi_heads
    pool_in = dict(zip(heads.box_roi_pool.featmap_names, levels, strict=False))
    per_image = [torch.from_numpy(boxes[image == i]) for i in (0, 1)]
    order = np.concatenate([np.flatnonzero(image == i) for i in (0, 1)])  # torchvision's row order
    with torch.no_grad():
        cls, reg = heads.box_predictor(heads.box_head(heads.box_roi_pool(pool_in, per_image, [(64, 64)] * 2)))
        masks = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(pool_in, per_image, [(64, 64)] * 2)))
    split = SplitMaskRCNN(model.config, _torch_runner(model), empty_levels=empty_levels)
    box = split._heads("box", feats, rois)
    mask = split._heads("mask", feats, rois)
    np.testing.assert_allclose(box["class_logits"][order], cls.numpy(), atol=1e-5)
    np.testing.assert_allclose(box["box_regression"][order], reg.numpy(), atol=1e-5)
    np.testing.assert_allclose(mask["mask_logits"][order], masks.numpy(), atol=1e-5)


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


def test_graphs_of_the_first_version_still_run(model, tmp_path):
    """Split exports written before the per-level inputs (one ``rois`` input) give the same detections."""
    from liverrt.runtime.onnxruntime_loader import ort_split_runner

    class Legacy(torch.nn.Module):  # the first version's head graph: every RoI on every level, kept by a mask
        def __init__(self, head, predictor, output):
            super().__init__()
            self.head, self.predictor, self.output = head, predictor, output

        def forward(self, feat_0, feat_1, feat_2, feat_3, rois):
            from torchvision.ops import roi_align

            area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
            level = torch.floor(4 + torch.log2(torch.sqrt(area) / 224.0) + 1e-6).clamp(2, 5) - 2
            out = 0
            for i, feat in enumerate((feat_0, feat_1, feat_2, feat_3)):
                pooled = roi_align(feat, rois, self.output, spatial_scale=1.0 / 2 ** (i + 2),
                                   sampling_ratio=model.config["sampling_ratio"], aligned=model.config["roi_aligned"])
                out = out + pooled * (level == i).to(pooled.dtype)[:, None, None, None]
            return self.predictor(self.head(out))

    heads = model.net.roi_heads
    paths = {p: tmp_path / f"{p}.onnx" for p in ("rpn", "box", "mask")}
    export_parts(model, {p: str(v) for p, v in paths.items()}, opset=18)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        feats = RPNPart(model)(x)[:4]
    rois = torch.tensor([[0, 4.0, 4.0, 40.0, 50.0], [1, 0.0, 0.0, 60.0, 60.0]])
    for part, head, predictor, size, names in (
            ("box", heads.box_head, heads.box_predictor, 7, ["class_logits", "box_regression"]),
            ("mask", heads.mask_head, heads.mask_predictor, 14, ["mask_logits"])):
        paths[part] = tmp_path / f"legacy_{part}.onnx"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Legacy(head, predictor, size).eval(), (*feats, rois), str(paths[part]), dynamo=False,
                              input_names=[*FEATURES, "rois"], output_names=names, opset_version=18,
                              dynamic_axes={**{f: {0: "n"} for f in FEATURES}, "rois": {0: "r"},
                                            **{n: {0: "r"} for n in names}})
    run = ort_split_runner(paths, ["CPUExecutionProvider"])
    assert run.inputs["box"] == [*FEATURES, "rois"]
    legacy = SplitMaskRCNN(model.config, run)
    assert legacy.per_level is False  # read from the graphs' inputs
    legacy = legacy.detect(x.numpy())
    ref = model.detect(x)
    assert sum(len(r["boxes"]) for r in ref) > 0
    for r, o in zip(ref, legacy, strict=True):
        _assert_same_detections(r, o, box_atol=0.05, score_atol=1e-3)
