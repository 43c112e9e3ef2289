"""Shared fixtures: small HU volumes and tiny U-Net artifacts (fast on 2 CPU cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))

from liverrt_test_helpers import make_volume, tiny_unet  # noqa: E402

from liverrt.data.preprocess import PreprocessSpec  # noqa: E402
from liverrt.data.volume import Volume  # noqa: E402


@pytest.fixture(scope="session")
def tiny_spec() -> PreprocessSpec:
    return PreprocessSpec(size=32)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_spec) -> Path:
    from liverrt.training.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, tiny_unet(), model_name="unet_paper", spec=tiny_spec,
                           metrics={"val_mask_iou": 0.5})


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint) -> Path:
    from liverrt.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_checkpoint, path, verify_volumes=[make_volume()])
    return path


@pytest.fixture
def volume() -> Volume:
    return make_volume()
