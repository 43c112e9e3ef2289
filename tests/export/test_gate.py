"""The verification gate: artifact vs PyTorch on whole cases, with segmentation metrics."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from liverrt_test_helpers import make_volume, tiny_unet

from liverrt.errors import InputError
from liverrt.export.gate import LIMITS, verify_artifact
from liverrt.export.onnx import export_onnx
from liverrt.training.checkpoint import save_checkpoint


def _confident_unet():
    """A tiny U-Net whose logits are far from 0 except at real boundaries (like a trained one)."""
    m = tiny_unet()
    with torch.no_grad():
        m.head.weight.mul_(40.0)
        m.head.bias.fill_(0.0)
    return m


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_spec):
    d = tmp_path_factory.mktemp("gate")
    ckpt = save_checkpoint(d / "m.pt", _confident_unet(), model_name="unet_paper", spec=tiny_spec)
    onnx_path = d / "m.onnx"
    export_onnx(ckpt, onnx_path, verify_volumes=[make_volume()], atol=1e-3)
    return ckpt, onnx_path


def test_a_faithful_export_passes_with_a_report(pair, tmp_path):
    ckpt, onnx_path = pair
    vols = [make_volume(seed=s, case_id=f"v{s}") for s in range(2)]
    report = verify_artifact(ckpt, onnx_path, vols)
    assert report.passed, report.failures
    assert report.slices == 12 and report.reference_liver_slices > 0
    assert report.mean["delta_dice"] <= LIMITS["fp32"]["mean_delta_dice"]
    assert "reference_dice" in report.vs_truth
    j, m = report.write(tmp_path)
    data = json.loads(j.read_text())
    assert data["passed"] and data["precision"] == "fp32"
    assert "PASSED" in m.read_text() and "ΔBoundary IoU" in m.read_text()


def test_a_drifted_export_fails_and_names_the_worst_slice(pair, tmp_path, tiny_spec):
    ckpt, _ = pair
    drifted = copy.deepcopy(_confident_unet())
    with torch.no_grad():
        for p in drifted.parameters():
            p.add_(0.3 * torch.randn_like(p))
    other = save_checkpoint(tmp_path / "drift.pt", drifted, model_name="unet_paper", spec=tiny_spec)
    export_onnx(other, tmp_path / "drift.onnx", verify_volumes=[make_volume()], atol=1e-3)
    report = verify_artifact(ckpt, tmp_path / "drift.onnx", [make_volume()])  # checked against the wrong source
    assert not report.passed
    assert any("ΔDice" in f for f in report.failures)
    assert report.worst_slices[0]["delta_dice"] == report.worst["delta_dice"] > 0
    assert "FAILED" in report.markdown()


def test_an_all_empty_output_is_caught(pair, monkeypatch):
    from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine

    ckpt, onnx_path = pair
    monkeypatch.setattr(OnnxRuntimeEngine, "_infer", lambda self, batch: {"prob": np.zeros_like(batch)})
    report = verify_artifact(ckpt, onnx_path, [make_volume()])
    assert not report.passed and any("no liver in any" in f for f in report.failures)


def test_mismatched_artifacts_are_refused(pair, tmp_path, tiny_spec):
    ckpt, _ = pair
    other = save_checkpoint(tmp_path / "big.pt", _confident_unet(), model_name="unet_paper",
                            spec=tiny_spec.with_size(64))
    export_onnx(other, tmp_path / "big.onnx", atol=1e-3)
    with pytest.raises(InputError, match="was not exported from"):
        verify_artifact(ckpt, tmp_path / "big.onnx", [make_volume()])


def test_default_dataset_is_phantoms(pair):
    ckpt, onnx_path = pair
    report = verify_artifact(ckpt, onnx_path)
    assert report.cases == 2 and report.slices == 32 and report.passed
    assert report.reference_liver_slices > 0


def test_a_reference_without_liver_makes_the_gate_inconclusive(pair, monkeypatch):
    from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine
    from liverrt.runtime.torch_engine import TorchEngine

    ckpt, onnx_path = pair
    nothing = lambda self, batch: {"prob": np.zeros_like(batch)}  # noqa: E731
    monkeypatch.setattr(TorchEngine, "_infer", nothing)
    monkeypatch.setattr(OnnxRuntimeEngine, "_infer", nothing)  # a broken artifact that would otherwise pass
    report = verify_artifact(ckpt, onnx_path, [make_volume()])
    assert report.reference_liver_slices == 0
    assert not report.passed and "inconclusive" in report.failures[0]


def test_nan_output_fails_the_image_gate(tmp_path, tiny_spec, monkeypatch):
    from liverrt.models.dncnn_sr import DnCNNSR
    from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine

    ckpt = save_checkpoint(tmp_path / "dn.pt", DnCNNSR(channels=4), model_name="dncnn_sr", spec=tiny_spec)
    export_onnx(ckpt, tmp_path / "dn.onnx")
    assert verify_artifact(ckpt, tmp_path / "dn.onnx", [make_volume()]).passed
    real = OnnxRuntimeEngine._infer

    def poisoned(self, batch):
        out = real(self, batch)
        out["restored"][0, 0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(OnnxRuntimeEngine, "_infer", poisoned)
    report = verify_artifact(ckpt, tmp_path / "dn.onnx", [make_volume()])
    assert not report.passed and "NaN" in report.failures[0]


def test_float_noise_at_the_threshold_is_not_disagreement(tmp_path, tiny_spec):
    """An untrained U-Net sits at p = 0.5: fp32 noise flips pixels, the band keeps the gate meaningful."""
    ckpt = save_checkpoint(tmp_path / "flat.pt", tiny_unet(), model_name="unet_paper", spec=tiny_spec)
    export_onnx(ckpt, tmp_path / "flat.onnx", verify_volumes=[make_volume()])
    report = verify_artifact(ckpt, tmp_path / "flat.onnx", [make_volume()],
                             limits={"undecided_band": 0.0})
    banded = verify_artifact(ckpt, tmp_path / "flat.onnx", [make_volume()])
    assert banded.mean["delta_dice"] <= report.mean["delta_dice"]
    assert banded.passed, banded.failures
