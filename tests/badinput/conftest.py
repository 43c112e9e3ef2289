"""Session artifacts of the bad-input corpus (built once, lazily, only for the cases that need them).

The tiny U-Net checkpoint/ONNX and the split Mask R-CNN come from ``tests/conftest.py``
(``tiny_checkpoint``, ``tiny_onnx``, ``maskrcnn_onnx``). Cases copy an artifact before damaging it:
session artifacts are never modified (the harness hashes every input before and after).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import harness


@pytest.fixture(scope="session", autouse=True)
def _anonymise_temp(tmp_path_factory):
    harness.BASETEMP = Path(tmp_path_factory.getbasetemp())
    yield
    harness.BASETEMP = None


@pytest.fixture(scope="session")
def dncnn_ckpt(tmp_path_factory, tiny_spec) -> Path:
    """A scale-1 DnCNN-SR (4 channels) with the tiny U-Net's PreprocessSpec."""
    from liverrt.artifacts.checkpoint import save_checkpoint
    from liverrt.models.dncnn_sr import DnCNNSR

    return save_checkpoint(tmp_path_factory.mktemp("dncnn") / "dn.pt", DnCNNSR(channels=4).eval(),
                           model_name="dncnn_sr", spec=tiny_spec)


@pytest.fixture(scope="session")
def dncnn_onnx(tmp_path_factory, dncnn_ckpt) -> Path:
    from liverrt.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("dncnn_onnx") / "dn.onnx"
    export_onnx(dncnn_ckpt, path)
    return path


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """``liverrt data synth``: two labelled cases (48 px, 4 slices), NIfTI + PNG."""
    out = tmp_path_factory.mktemp("phantoms") / "ph"
    o = harness.invoke(["data", "synth", "--out", out, "--cases", 2, "--size", 48, "--slices", 4, "--seed", 0])
    assert o.code == 0, o.output
    return out


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory, tiny_checkpoint) -> Path:
    """``liverrt export --format triton`` of the tiny U-Net: ``repo/tri_unet/{config.pbtxt, 1/model.onnx}``."""
    repo = tmp_path_factory.mktemp("triton") / "repo"
    o = harness.invoke(["export", tiny_checkpoint, "--format", "triton", "--out", repo, "--name", "tri_unet",
                        "--no-verify"])
    assert o.code == 0, o.output
    assert (repo / "tri_unet" / "config.pbtxt").is_file()
    return repo


@pytest.fixture(scope="session")
def batch_cases(tmp_path_factory) -> Path:
    """60 small NIfTI case folders: a batch long enough to be interrupted after its first case."""
    from .builders import nifti_case

    root = tmp_path_factory.mktemp("batch") / "cases"
    for k in range(60):
        nifti_case(root, f"case{k:02d}", shape=(6, 48, 48), seed=k)
    return root


class Artifacts:
    """Session artifacts by attribute (``art.tiny_onnx``); each is built on first use."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._request.getfixturevalue(name)


@pytest.fixture
def art(request) -> Artifacts:
    return Artifacts(request)
