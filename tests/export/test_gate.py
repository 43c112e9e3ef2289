"""The verification gate: artifact vs PyTorch on whole cases, with segmentation metrics."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from liverrt_test_helpers import make_volume, tiny_unet

from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.errors import InputError
from liverrt.export.gate import LIMITS, verify_artifact
from liverrt.export.onnx import export_onnx


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
    assert report.mean["delta_dice"] <= LIMITS["fp32"].mean_delta_dice
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


def _flat_unet():
    """A barely trained U-Net: every probability within 3e-4 of the 0.5 threshold."""
    m = tiny_unet()
    with torch.no_grad():
        m.head.weight.mul_(0.01)
        m.head.bias.mul_(0.01)
    return m


def test_float_noise_at_the_threshold_is_not_disagreement(tmp_path, tiny_spec, monkeypatch):
    """A barely trained U-Net sits at p ≈ 0.5, where float noise flips pixels; the band keeps the gate meaningful.

    The noise is put on the artifact's probabilities (±1e-6, a fixed pattern) instead of being left to
    onnxruntime, whose difference from PyTorch (≤ 1.2e-7 here) may or may not flip a pixel: the same run
    fails without the band, and noise beyond the band fails with it.
    """
    from liverrt.runtime.onnxruntime_engine import OnnxRuntimeEngine

    ckpt = save_checkpoint(tmp_path / "flat.pt", _flat_unet(), model_name="unet_paper", spec=tiny_spec)
    export_onnx(ckpt, tmp_path / "flat.onnx", verify_volumes=[make_volume()])
    real, noise = OnnxRuntimeEngine._infer, {"amplitude": 1e-6}

    def noisy(self, batch):
        out = real(self, batch)
        signs = np.random.default_rng(0).choice(np.float32([-1.0, 1.0]), out["prob"].shape)
        out["prob"] = out["prob"] + np.float32(noise["amplitude"]) * signs
        return out

    monkeypatch.setattr(OnnxRuntimeEngine, "_infer", noisy)
    vols, band = [make_volume()], LIMITS["fp32"].undecided_band
    banded = verify_artifact(ckpt, tmp_path / "flat.onnx", vols)
    assert banded.passed, banded.failures
    assert banded.mean["delta_dice"] == 0.0 and banded.reference_liver_slices > 0
    assert noise["amplitude"] < band
    unbanded = verify_artifact(ckpt, tmp_path / "flat.onnx", vols, limits=replace(LIMITS["fp32"], undecided_band=0.0))
    assert not unbanded.passed  # the band, nothing else, makes the run above pass
    assert unbanded.mean["delta_dice"] > LIMITS["fp32"].mean_delta_dice, unbanded.failures
    noise["amplitude"] = 10 * band  # disagreement beyond the band is still disagreement
    beyond = verify_artifact(ckpt, tmp_path / "flat.onnx", vols)
    assert not beyond.passed and any("ΔDice" in f for f in beyond.failures)
