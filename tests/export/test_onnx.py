import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from liverrt_test_helpers import make_volume, tiny_unet

from liverrt.artifacts import artifact_info
from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.errors import ArtifactError, ExportError, InputError
from liverrt.export import onnx as onnx_export
from liverrt.export.onnx import export_onnx
from liverrt.export.parity import compare_outputs


def test_onnx_has_dynamic_batch_opset_and_liverrt_metadata(tiny_onnx, tiny_spec):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [1, 32, 32]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["liverrt.preprocess"]) == tiny_spec.to_dict()
    assert json.loads(meta["liverrt.model"])["kind"] == "unet"
    info = artifact_info(tiny_onnx)
    assert info.format == "onnx" and info.spec == tiny_spec and info.metrics == {"val_mask_iou": 0.5}


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnxruntime_matches_torch_for_any_batch(tiny_onnx, batch):
    x = np.random.default_rng(batch).random((batch, 1, 32, 32), dtype=np.float32)
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (prob,) = sess.run(None, {"image": x})
    with torch.no_grad():
        ref = torch.sigmoid(tiny_unet()(torch.from_numpy(x))).numpy()
    assert prob.shape == (batch, 1, 32, 32)
    assert np.abs(prob - ref).max() < 1e-4


def test_torchscript_exporter_also_passes(tiny_checkpoint, tmp_path):
    result = export_onnx(tiny_checkpoint, tmp_path / "ts.onnx", exporter="torchscript",
                         verify_volumes=[make_volume()])
    assert result.parity.passed and result.path.is_file()


def test_a_broken_export_fails_the_gate_and_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    real = onnx_export._export_graph

    def broken(wrapper, example, path, opset, exporter, **kw):
        # export a copy whose weights drifted from the checkpoint's (as a faulty exporter might)
        drifted = copy.deepcopy(wrapper)
        with torch.no_grad():
            for p in drifted.parameters():
                p.add_(0.05 * torch.randn_like(p))
        real(drifted, example, path, opset, exporter, **kw)

    monkeypatch.setattr(onnx_export, "_export_graph", broken)
    out = tmp_path / "broken.onnx"
    with pytest.raises(ExportError, match="parity check failed"):
        export_onnx(tiny_checkpoint, out, verify_volumes=[make_volume()])
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temp files left behind


def test_compare_outputs_catches_nan_and_mask_flips():
    ref = np.full((2, 1, 4, 4), 0.9, np.float32)
    nan = ref.copy()
    nan[0, 0, 0, 0] = np.nan
    assert not compare_outputs(ref, nan, threshold=0.5, atol=1e-4, max_dice_delta=1e-3).passed
    flipped = ref.copy()
    flipped[1] = 0.1
    rep = compare_outputs(ref, flipped, threshold=0.5, atol=float("inf"), max_dice_delta=1e-3)  # metric-only gate
    assert not rep.passed and rep.max_dice_delta == 1.0 and rep.decisive_mismatches == 16


def test_flips_inside_the_tolerance_band_do_not_fail_parity():
    # an untrained network sits at p ~ 0.5 everywhere: tiny numeric differences flip pixels,
    # which is within tolerance, not an export error
    ref = np.full((1, 1, 8, 8), 0.5, np.float32)
    ref[..., :4] += 2e-7
    cand = ref.copy()
    cand[..., :4] -= 4e-7
    rep = compare_outputs(ref, cand, threshold=0.5, atol=1e-4, max_dice_delta=1e-3)
    assert rep.passed and rep.mismatched_pixels == 32 and rep.decisive_mismatches == 0
    far = ref.copy()
    far[..., :4] = 0.2  # decisive flips beyond atol fail
    assert not compare_outputs(ref, far, threshold=0.5, atol=1e-4, max_dice_delta=1e-3).passed


def test_export_refuses_bad_requests(tiny_checkpoint, tmp_path):
    with pytest.raises(InputError, match=">= 17"):
        export_onnx(tiny_checkpoint, tmp_path / "m.onnx", opset=13)
    with pytest.raises(InputError, match=".onnx"):
        export_onnx(tiny_checkpoint, tmp_path / "m.bin")
    with pytest.raises(InputError, match="does not exist"):
        export_onnx(tmp_path / "missing.pt", tmp_path / "m.onnx")


def test_onnx_without_liverrt_metadata_is_refused(tmp_path):
    torch.onnx.export(torch.nn.Conv2d(1, 1, 1), (torch.zeros(1, 1, 8, 8),), str(tmp_path / "plain.onnx"),
                      dynamo=False)
    with pytest.raises(ArtifactError, match="no liverrt metadata"):
        artifact_info(tmp_path / "plain.onnx")


def test_checkpoint_is_never_overwritten_by_export(tiny_spec, tmp_path):
    path = save_checkpoint(tmp_path / "m.onnx", tiny_unet(), model_name="unet_paper", spec=tiny_spec)
    before = path.read_bytes()
    with pytest.raises(InputError, match="Refusing to overwrite"):
        export_onnx(path, path, verify_volumes=[make_volume()])
    assert path.read_bytes() == before
