"""ONNX export of DnCNN-SR and the split Mask R-CNN, run through the onnxruntime engine."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from liverrt_test_helpers import make_volume

from liverrt.artifacts import SplitArtifact, artifact_info
from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import ArtifactError
from liverrt.export.onnx import export_onnx
from liverrt.models.dncnn_sr import DnCNNSR
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter

SPEC = PreprocessSpec(size=64)


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


def test_dncnn_sr_int8_keeps_dynamic_size_and_follows_fp32(tmp_path, monkeypatch):
    # onnxruntime's symbolic shape inference gives up on DnCNN-SR's dynamic H/W: the export fell over there,
    # leaving sym_shape_infer_temp.onnx and .data files in the working directory
    from liverrt.export import precision as prec
    from liverrt.export.gate import default_volumes

    torch.manual_seed(0)
    model = DnCNNSR(channels=8)
    torch.nn.init.normal_(model.tail.weight, std=0.1)
    ckpt = save_checkpoint(tmp_path / "dn.pt", model, model_name="dncnn_sr", spec=SPEC)
    export_onnx(ckpt, tmp_path / "dn.onnx")
    calib = prec.calibration_slices(default_volumes(64, cases=1, seed=5), SPEC, n=8)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    prec.to_int8(tmp_path / "dn.onnx", tmp_path / "dn8.onnx", calib, method="percentile")
    assert list((tmp_path / "cwd").iterdir()) == []
    graph = onnx.load(str(tmp_path / "dn8.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) >= 8
    import onnxruntime as ort

    fp32, int8 = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"])
                  for f in ("dn.onnx", "dn8.onnx"))
    vol = make_volume(shape=(2, 96, 128))
    from liverrt.data.preprocess import normalize

    for x in (calib[:3], normalize(vol.image, vol.intensity, SPEC)[:, None].astype(np.float32)):  # 64², 96x128
        ref, out = fp32.run(None, {"image": x})[0], int8.run(None, {"image": x})[0]
        assert out.shape == ref.shape == x.shape
        assert 0.01 < ref.std() and ((ref > 0.02) & (ref < 0.98)).mean() > 0.3  # not clipped flat: a real comparison
        psnr = 10 * np.log10(1.0 / np.mean((out - ref) ** 2))
        assert psnr > 30, psnr


@pytest.mark.slow
def test_split_maskrcnn_export_writes_three_linked_graphs(maskrcnn_onnx):
    paths = SplitArtifact(maskrcnn_onnx.path).paths
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

    paths = SplitArtifact(maskrcnn_onnx.path).paths
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
    from liverrt.export.gate import GateLimits
    from liverrt.export.pipeline import run_export

    vols = [make_volume(shape=(4, 64, 64), seed=s, case_id=f"v{s}") for s in range(2)]
    # random weights: this is plumbing (a trained Mask R-CNN's int8 deltas are in benchmarks/RESULTS.md)
    result = run_export(maskrcnn_ckpt, tmp_path / "mr.onnx", precision=precision, verify_volumes=vols,
                        calib_volumes=vols if precision == "int8" else None, calib_slices=8,
                        limits=GateLimits(mean_delta_dice=1.0, worst_delta_dice=1.0, min_psnr_db=0.0))
    paths = SplitArtifact(tmp_path / "mr.onnx").paths
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
    assert result.parity.passed and not SplitArtifact(tmp_path / "one.onnx").paths["box"].exists()
    ops = {n.op_type for n in onnx.load(str(tmp_path / "one.onnx")).graph.node}
    assert {"TopK", "Loop"} <= ops  # data-dependent control flow: what the split export keeps out of its graphs
    vol = make_volume(shape=(3, 64, 64))
    with open_engine("torch", maskrcnn_ckpt) as eng:
        ref = Segmenter(eng).segment(vol)
    with open_engine("onnxruntime", tmp_path / "one.onnx") as eng:
        out = Segmenter(eng).segment(vol)
    assert ref.mask.any() and (ref.mask != out.mask).mean() < 1e-3
