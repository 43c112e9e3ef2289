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
    from liverrt.artifacts.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    return save_checkpoint(path, tiny_unet(), model_name="unet_paper", spec=tiny_spec,
                           metrics={"val_mask_iou": 0.5})


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_checkpoint) -> Path:
    from liverrt.export.onnx import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_checkpoint, path, verify_volumes=[make_volume()])
    return path


@pytest.fixture(scope="session")
def tiny_onnx_8bit(tmp_path_factory) -> Path:
    """The tiny U-Net as a model of 8-bit slices (PNG/JPG folders, KITTI): an HU model refuses them."""
    from liverrt.artifacts.checkpoint import save_checkpoint
    from liverrt.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("onnx8")
    ckpt = save_checkpoint(root / "tiny8.pt", tiny_unet(), model_name="unet_paper",
                           spec=PreprocessSpec(size=32, input_domain="8bit"), metrics={"val_mask_iou": 0.5})
    path = root / "tiny8.onnx"
    export_onnx(ckpt, path, verify_volumes=[make_volume()])
    return path


@pytest.fixture
def volume() -> Volume:
    return make_volume()


@pytest.fixture(scope="session")
def maskrcnn_ckpt(tmp_path_factory) -> Path:
    """A small random Mask R-CNN (ResNet-18 FPN, 64²) with a confident class head: detections without training."""
    import torch

    from liverrt.artifacts.checkpoint import save_checkpoint
    from liverrt.models.maskrcnn import LiverMaskRCNN

    torch.manual_seed(0)
    m = LiverMaskRCNN(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, image_size=64,
                      score_threshold=0.3)
    with torch.no_grad():
        m.net.roi_heads.box_predictor.cls_score.bias.copy_(torch.tensor([-2.0, 2.0]))
    return save_checkpoint(tmp_path_factory.mktemp("mr") / "mr.pt", m, model_name="maskrcnn_r101_fpn",
                           spec=PreprocessSpec(size=64))


@pytest.fixture(scope="session")
def maskrcnn_onnx(maskrcnn_ckpt, tmp_path_factory):
    """The split export of ``maskrcnn_ckpt`` (an ExportedOnnx: ``.path`` is the rpn graph naming the others)."""
    from liverrt.export.onnx import export_onnx

    return export_onnx(maskrcnn_ckpt, tmp_path_factory.mktemp("mronnx") / "mr.onnx")
