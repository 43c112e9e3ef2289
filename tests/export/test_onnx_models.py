"""ONNX export of DnCNN-SR and the split Mask R-CNN, run through the onnxruntime engine."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from liverrt_test_helpers import make_volume

from liverrt.artifact import artifact_info
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError
from liverrt.export.onnx import export_onnx, split_paths
from liverrt.models.dncnn_sr import DnCNNSR
from liverrt.models.maskrcnn import LiverMaskRCNN
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter
from liverrt.training.checkpoint import save_checkpoint

SPEC = PreprocessSpec(size=64)


@pytest.fixture(scope="module")
def maskrcnn_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = LiverMaskRCNN(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
                      score_threshold=0.3)
    with torch.no_grad():  # confident class head: detections without training
        m.net.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-2.0, 2.0]))
    return save_checkpoint(tmp_path_factory.mktemp("mr") / "mr.pt", m, model_name="maskrcnn_r101_fpn", spec=SPEC)


@pytest.fixture(scope="module")
def maskrcnn_onnx(maskrcnn_ckpt, tmp_path_factory):
    return export_onnx(maskrcnn_ckpt, tmp_path_factory.mktemp("mronnx") / "mr.onnx")


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_dncnn_sr_exports_with_dynamic_batch_and_size(tmp_path, exporter):
    model = DnCNNSR(channels=8)
    torch.nn.init.normal_(model.tail.weight, std=0.1)  # not the identity it starts as
    ckpt = save_checkpoint(tmp_path / "dn.pt", model, model_name="dncnn_sr", spec=SPEC)
    result = export_onnx(ckpt, tmp_path / "dn.onnx", exporter=exporter)
    assert result.parity.passed and result.parity.max_abs_diff < 1e-4
    graph = onnx.load(str(tmp_path / "dn.onnx"))
    assert [o.name for o in graph.graph.output] == ["restored"]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in (dims[0], dims[2], dims[3]))  # batch, H, W dynamic
    info = artifact_info(tmp_path / "dn.onnx")
    assert info.kind == "dncnn_sr" and info.spec == SPEC
    x = np.random.default_rng(0).random((3, 1, 96, 128), np.float32)  # another size than exported with
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "dn.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).clamp(0, 1).numpy()
    assert np.allclose(sess.run(None, {"image": x})[0], ref, atol=1e-4)


@pytest.mark.slow
def test_split_maskrcnn_export_writes_three_linked_graphs(maskrcnn_onnx):
    paths = split_paths(maskrcnn_onnx.path)
    assert all(p.is_file() for p in paths.values())
    meta = {p.key: p.value for p in onnx.load(str(paths["rpn"]), load_external_data=False).metadata_props}
    split = json.loads(meta["liverrt.split"])
    assert split["parts"] == {"box": paths["box"].name, "mask": paths["mask"].name}
    assert maskrcnn_onnx.parity.passed and maskrcnn_onnx.parity.max_dice_delta == 0.0
    rpn = onnx.load(str(paths["rpn"]))
    ops = {n.op_type for n in rpn.graph.node}
    assert not ops & {"NonMaxSuppression", "TopK", "Loop", "If"}  # nothing data-dependent in the graph
    heads = onnx.load(str(paths["box"]))
    assert "RoiAlign" in {n.op_type for n in heads.graph.node}
    assert not {n.op_type for n in heads.graph.node} & {"NonMaxSuppression", "Loop", "If"}


@pytest.mark.slow
def test_split_maskrcnn_through_the_engine_equals_torch(maskrcnn_onnx, maskrcnn_ckpt):
    vol = make_volume(shape=(4, 64, 64))
    with open_engine("torch", maskrcnn_ckpt, device="cpu") as eng:  # bit-equal masks: both on the CPU
        ref = Segmenter(eng, keep_prob=True).segment(vol)
    with open_engine("onnxruntime", maskrcnn_onnx.path) as eng:
        out = Segmenter(eng, keep_prob=True).segment(vol)
        raw = eng.infer(np.zeros((2, 1, 64, 64), np.float32))
    assert ref.mask.any() and np.array_equal(ref.mask, out.mask)
    assert np.abs(ref.prob - out.prob).max() < 1e-3
    assert set(raw) == {"prob", "scores", "boxes"} and raw["prob"].shape == (2, 1, 64, 64)


@pytest.mark.slow
def test_a_tampered_or_missing_split_graph_is_refused(maskrcnn_onnx, tmp_path):
    import shutil

    paths = split_paths(maskrcnn_onnx.path)
    copies = {k: tmp_path / p.name for k, p in paths.items()}
    for k in paths:
        shutil.copy(paths[k], copies[k])
    copies["box"].write_bytes(copies["box"].read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256 differs"), open_engine("onnxruntime", copies["rpn"]):
        pass
    copies["mask"].unlink()
    with pytest.raises(ArtifactError, match="missing"), open_engine("onnxruntime", copies["rpn"]):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_split_maskrcnn_precision_variants_run_and_are_gated(maskrcnn_ckpt, tmp_path, precision):
    from liverrt.export.pipeline import run_export

    vols = [make_volume(shape=(4, 64, 64), seed=s, case_id=f"v{s}") for s in range(2)]
    # random weights: this is plumbing (a trained Mask R-CNN's int8 deltas are in benchmarks/RESULTS.md)
    result = run_export(maskrcnn_ckpt, tmp_path / "mr.onnx", precision=precision, verify_volumes=vols,
                        calib_volumes=vols if precision == "int8" else None, calib_slices=8,
                        limits={"mean_delta_dice": 1.0, "worst_delta_dice": 1.0})
    paths = split_paths(tmp_path / "mr.onnx")
    assert all(p.is_file() for p in paths.values())
    assert artifact_info(paths["rpn"]).precision == precision
    if precision == "int8":  # the backbone's ~580 activation scales get one-pass ranges by default
        meta = {p.key: p.value for p in onnx.load(str(paths["rpn"])).metadata_props}
        assert json.loads(meta["liverrt.calibration"])["method"] == "minmax"
    assert result.verify_report is not None and result.verify_report.slices == 8
    with open_engine("onnxruntime", paths["rpn"]) as eng:  # siblings relinked: sha256 check passes
        assert eng.infer(np.zeros((1, 1, 64, 64), np.float32))["prob"].shape == (1, 1, 64, 64)


@pytest.mark.slow
def test_single_graph_maskrcnn_export_runs_on_onnxruntime(maskrcnn_ckpt, tmp_path):
    result = export_onnx(maskrcnn_ckpt, tmp_path / "one.onnx", maskrcnn_graph="single")
    assert result.parity.passed and not split_paths(tmp_path / "one.onnx")["box"].exists()
    ops = {n.op_type for n in onnx.load(str(tmp_path / "one.onnx")).graph.node}
    assert {"TopK", "Loop"} <= ops  # data-dependent control flow: what the split export keeps out of its graphs
    vol = make_volume(shape=(3, 64, 64))
    with open_engine("torch", maskrcnn_ckpt) as eng:
        ref = Segmenter(eng).segment(vol)
    with open_engine("onnxruntime", tmp_path / "one.onnx") as eng:
        out = Segmenter(eng).segment(vol)
    assert ref.mask.any() and (ref.mask != out.mask).mean() < 1e-3
