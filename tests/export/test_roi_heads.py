"""INT8 RoI heads of the split Mask R-CNN: calibrated on the RoIs the pipeline makes, close to fp32, output
layers float, linked to their rpn graph, and what `liverrt export` does with them."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from liverrt.artifacts import artifact_info
from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.artifacts.info import SPLIT_KEY, onnx_metadata
from liverrt.artifacts.split import HEADS, SplitArtifact
from liverrt.cli import cli
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import InputError
from liverrt.export import precision as prec
from liverrt.export.gate import default_volumes
from liverrt.export.onnx import export_onnx
from liverrt.export.pipeline import ExportOptions, run_export
from liverrt.export.roi_heads import head_feeds, heads_to_int8, output_layers
from liverrt.models.maskrcnn import LiverMaskRCNN
from liverrt.runtime.maskrcnn_split import SplitMaskRCNN
from liverrt.runtime.onnxruntime_loader import ort_split_runner


@pytest.fixture(scope="module")
def slices(maskrcnn_onnx):
    spec = artifact_info(maskrcnn_onnx.path).spec
    return prec.calibration_slices(default_volumes(spec.size, cases=2, seed=2000), spec, n=8)


@pytest.fixture(scope="module")
def int8_split(maskrcnn_onnx, slices, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8heads") / "mr.int8.onnx"
    prec.to_int8(maskrcnn_onnx.path, out, slices, method="minmax")
    fits = heads_to_int8(maskrcnn_onnx.path, out, slices)
    return out, fits


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_the_feeds_are_what_the_pipeline_gives_each_head(maskrcnn_onnx, slices):
    """The mask head's recorded RoIs are the pipeline's detections, level by level; every feed names exactly
    the inputs of its graph."""
    feeds = head_feeds(maskrcnn_onnx.path, slices, batch_size=2)
    split = SplitArtifact.open(maskrcnn_onnx.path)
    for part in HEADS:
        names = [i.name for i in _session(split.paths[part]).get_inputs()]
        assert feeds[part] and all(list(f) == names for f in feeds[part])
    run = ort_split_runner(split.paths, ["CPUExecutionProvider"])
    pipeline = SplitMaskRCNN(artifact_info(maskrcnn_onnx.path).model_config, run, empty_levels=True)
    detected = [pipeline.detect(slices[i:i + 2]) for i in range(0, len(slices), 2)]
    with_boxes = [d for d in detected if sum(len(x["boxes"]) for x in d)]
    assert len(feeds["mask"]) == len(with_boxes) > 0
    for feed, dets in zip(feeds["mask"], with_boxes, strict=True):
        recorded = np.concatenate([feed[f"rois_{lv}"][:, 1:] for lv in range(4)])
        boxes = np.concatenate([d["boxes"] for d in dets])
        assert recorded.shape == boxes.shape
        assert np.array_equal(np.unique(recorded, axis=0), np.unique(boxes, axis=0))


def test_int8_heads_stay_close_to_fp32_with_their_output_layers_float(maskrcnn_onnx, slices, int8_split):
    out, fits = int8_split
    fp32 = SplitArtifact.open(maskrcnn_onnx.path)
    linked = SplitArtifact.open(out)  # the rpn graph's manifest names the int8 heads (sha256 checked)
    assert json.loads(onnx_metadata(out)[SPLIT_KEY])["heads_precision"] == "int8"
    feeds = head_feeds(maskrcnn_onnx.path, slices)
    for part in HEADS:
        model = onnx.load(str(linked.paths[part]))
        ops = [n.op_type for n in model.graph.node]
        assert "QuantizeLinear" in ops and "ConvTranspose" not in ops  # the mask predictor's up-conv shuffled
        assert fits[part].percentiles and fits[part].method == "percentile"
        # the layers that write the outputs read float weights: no DequantizeLinear feeds them
        made_by = {o: n for n in model.graph.node for o in n.output}
        for name in output_layers(onnx.load(str(fp32.paths[part])).graph):
            node = next(n for n in model.graph.node if n.name == name)
            assert node.input[1] not in made_by or made_by[node.input[1]].op_type != "DequantizeLinear"
        ref, got = _session(fp32.paths[part]), _session(linked.paths[part])
        for feed in feeds[part]:
            for a, b in zip(ref.run(None, feed), got.run(None, feed), strict=True):
                assert a.shape == b.shape  # relative RMS error (random weights: box 0.0002-0.02, mask 0.05)
                assert np.sqrt(((a - b) ** 2).mean() / (a ** 2).mean()) < 0.1


def test_the_whole_pipeline_runs_on_the_int8_heads(maskrcnn_onnx, slices, int8_split):
    from liverrt.runtime import open_engine

    with open_engine("onnxruntime", int8_split[0]) as q, open_engine("onnxruntime", maskrcnn_onnx.path) as f:
        got, ref = q.infer(slices[:2]), f.infer(slices[:2])
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].shape == ref[k].shape and np.isfinite(got[k]).all(), k


def test_output_layers_walk_back_through_bias_adds_and_reshapes():
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], "hidden"),
             helper.make_node("Relu", ["h"], ["r"], "relu"),
             helper.make_node("MatMul", ["r", "w2"], ["m"], "logits"),
             helper.make_node("Add", ["m", "b"], ["a"], "bias"),
             helper.make_node("Reshape", ["a", "shape"], ["y"], "reshape"),
             helper.make_node("Conv", ["x4", "k"], ["z"], "conv_out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                           helper.make_tensor_value_info("x4", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")])
    assert output_layers(graph) == ["conv_out", "logits"]  # not "hidden": a Relu is in the way


def test_slices_without_detections_cannot_calibrate_the_mask_head(tmp_path, slices):
    torch.manual_seed(0)
    m = LiverMaskRCNN(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
                      score_threshold=0.3)
    with torch.no_grad():  # an unconfident class head: proposals, but no detections
        m.net.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([4.0, -4.0]))
    ckpt = save_checkpoint(tmp_path / "none.pt", m, model_name="maskrcnn_r101_fpn", spec=PreprocessSpec(size=64))
    fp32 = export_onnx(ckpt, tmp_path / "none.onnx").path
    prec.to_int8(fp32, tmp_path / "none.int8.onnx", slices, method="minmax")
    with pytest.raises(InputError, match="give the mask head no RoIs"):
        heads_to_int8(fp32, tmp_path / "none.int8.onnx", slices)
    assert not (tmp_path / "none.int8.box.onnx").exists()  # nothing written


def test_an_export_whose_heads_cannot_be_calibrated_writes_no_int8_graph(tmp_path, slices):
    torch.manual_seed(0)
    m = LiverMaskRCNN(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
                      score_threshold=0.3)
    with torch.no_grad():  # no detections: the mask head has nothing to calibrate on
        m.net.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([4.0, -4.0]))
    ckpt = save_checkpoint(tmp_path / "none.pt", m, model_name="maskrcnn_r101_fpn", spec=PreprocessSpec(size=64))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="give the mask head no RoIs"):
        run_export(ckpt, out / "none.int8.onnx", ExportOptions(precision="int8", verify=False, calib_slices=8))
    assert not [p.name for p in out.glob("none.int8.*") if ".fp32" not in p.name]  # only the fp32 source stays


@pytest.mark.slow
@pytest.mark.parametrize("int8_heads", [True, False], ids=["int8-heads", "fp32-heads"])
def test_export_makes_the_heads_int8_unless_asked_not_to(maskrcnn_ckpt, maskrcnn_onnx, tmp_path, int8_heads):
    out = tmp_path / "mr.int8.onnx"
    run_export(maskrcnn_ckpt, out, ExportOptions(precision="int8", verify=False, calib_slices=8,
                                                 int8_heads=int8_heads))
    split = SplitArtifact.open(out)
    assert json.loads(onnx_metadata(out)[SPLIT_KEY])["heads_precision"] == ("int8" if int8_heads else "fp32")
    fp32 = SplitArtifact.open(maskrcnn_onnx.path)
    for part in HEADS:
        assert split.paths[part].parent == tmp_path
        same = split.paths[part].read_bytes() == fp32.paths[part].read_bytes()
        assert same != int8_heads


def test_fp32_heads_is_an_int8_option(maskrcnn_ckpt, tmp_path):
    r = CliRunner().invoke(cli, ["export", str(maskrcnn_ckpt), "-o", str(tmp_path / "x.onnx"), "--fp32-heads"])
    assert r.exit_code == 2 and "are for --precision int8" in r.output
    assert not list(tmp_path.iterdir())
