"""``liverrt import-detectron2`` end to end on a synthetic R-50 Detectron2 checkpoint."""

from __future__ import annotations

import hashlib
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from liverrt.cli import cli
from liverrt.models import load_model

# the synthetic-checkpoint builder (an inverse name mapping independent of the importer) lives with the model tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from test_detectron2_import import d2_state  # noqa: E402

SIZE = 64
CONFIG = """\
_BASE_: Base-RCNN-FPN.yaml
MODEL:
  MASK_ON: true
  RESNETS: {DEPTH: %(depth)d, STRIDE_IN_1X1: false}
  ROI_HEADS: {NUM_CLASSES: %(classes)d}
  FPN: {OUT_CHANNELS: 32}
  ROI_BOX_HEAD: {FC_DIM: 64}
  ROI_MASK_HEAD: {CONV_DIM: 32}
  PIXEL_MEAN: [123.675, 116.28, 103.53]
  PIXEL_STD: [58.395, 57.12, 57.375]
INPUT: {FORMAT: RGB, MIN_SIZE_TEST: 512}
"""
BASE = """\
MODEL:
  META_ARCHITECTURE: GeneralizedRCNN
  BACKBONE: {NAME: build_resnet_fpn_backbone}
  ROI_HEADS: {NAME: StandardROIHeads}
  ROI_BOX_HEAD: {NAME: FastRCNNConvFCHead, NUM_FC: 2, POOLER_RESOLUTION: 7}
  ROI_MASK_HEAD: {NAME: MaskRCNNConvUpsampleHead, NUM_CONV: 4, POOLER_RESOLUTION: 14}
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def write_config(folder: Path, *, depth: int = 50, classes: int = 1) -> Path:
    (folder / "Base-RCNN-FPN.yaml").write_text(BASE)
    path = folder / f"liver_R{depth}_{classes}.yaml"
    path.write_text(CONFIG % {"depth": depth, "classes": classes})
    return path


@pytest.fixture(scope="module")
def d2_pth(tmp_path_factory) -> Path:
    """A Detectron2-style model_final.pth: R-50, one foreground class (liver), small heads.

    The predictors are set so that every proposal is confidently liver (class row 0 in
    Detectron2's order, background last) with a full mask: the imported model detects
    something only if the class order was converted correctly.
    """
    state = d2_state(classes=1)
    for name in ("roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.weight",
                 "roi_heads.box_predictor.bbox_pred.bias", "roi_heads.mask_head.predictor.weight"):
        state[name] = torch.zeros_like(state[name])
    state["roi_heads.box_predictor.cls_score.bias"] = torch.tensor([5.0, -5.0])  # liver, background
    state["roi_heads.mask_head.predictor.bias"] = torch.tensor([3.0])
    path = tmp_path_factory.mktemp("d2") / "model_final.pth"
    torch.save({"model": state, "__author__": "synthetic", "iteration": 1234}, path)
    return path


def test_import_with_config_then_load_and_predict(d2_pth, tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "liver_maskrcnn.pt"
    r = run("import-detectron2", d2_pth, "--config", config, "--out", out, "--size", SIZE)
    assert r.exit_code == 0, r.output
    assert "configured from config" in r.output and "note:" in r.output
    model, spec, ckpt = load_model(out, expect_kind="maskrcnn")
    assert spec.size == SIZE and spec.quantize_8bit
    cfg = model.config
    assert (cfg["depth"], cfg["num_classes"], cfg["stride_in_1x1"], cfg["input_format"]) == (50, 2, False, "RGB")
    assert cfg["pixel_std"] == [58.395, 57.12, 57.375]
    record = ckpt["detectron2"]
    assert record["source"] == "model_final.pth" and record["iteration"] == 1234
    assert record["sha256"] == hashlib.sha256(d2_pth.read_bytes()).hexdigest()
    assert record["config"] == config.name
    assert record["values"]["MODEL.RESNETS.STRIDE_IN_1X1"] == {"value": False, "from": "config"}
    assert any("MIN_SIZE_TEST=512" in n for n in record["notes"])
    pred = model.predict(torch.rand(1, 1, SIZE, SIZE))
    assert pred["prob"].shape == (1, 1, SIZE, SIZE) and pred["scores"].shape == (1, cfg["max_instances"])
    assert pred["scores"][0, 0] > 0.99  # softmax of (5, -5): liver kept its row
    assert pred["prob"].max() > 0.9  # sigmoid(3): the liver mask channel, not the zero background one


def test_import_without_config_infers_from_the_weights(d2_pth, tmp_path):
    out = tmp_path / "inferred.pt"
    r = run("import-detectron2", d2_pth, "--out", out, "--size", SIZE)
    assert r.exit_code == 0, r.output
    assert "no config given" in r.output and "no --config" in r.output
    _, _, ckpt = load_model(out, expect_kind="maskrcnn")
    assert ckpt["detectron2"]["values"]["MODEL.RESNETS.DEPTH"] == {"value": 50, "from": "weights"}
    assert ckpt["model_config"]["pixel_mean"] == [103.53, 116.28, 123.675]


@pytest.mark.parametrize("depth, classes, message", [
    (101, 1, "res4: the checkpoint has 6 blocks"),
    (50, 3, r"cls_score.weight: checkpoint shape (2, 64)"),
])
def test_config_weight_mismatch_exits_2_without_output(d2_pth, tmp_path, depth, classes, message):
    out = tmp_path / "bad.pt"
    r = run("import-detectron2", d2_pth, "--config", write_config(tmp_path, depth=depth, classes=classes),
            "--out", out, "--size", SIZE)
    assert_clean_error(r)
    assert message in r.output
    assert not out.exists() and not list(tmp_path.glob(".bad.pt*"))


def test_pkl_needs_trust_pickle(tmp_path):
    pkl = tmp_path / "model_final.pkl"
    pkl.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": np.zeros((1,), np.float32)},
                                  "__author__": "Detectron2 Model Zoo"}))
    r = run("import-detectron2", pkl, "--out", tmp_path / "x.pt")
    assert_clean_error(r)
    assert "--trust-pickle" in r.output and not (tmp_path / "x.pt").exists()
    r = run("import-detectron2", pkl, "--out", tmp_path / "x.pt", "--trust-pickle")
    assert_clean_error(r)  # read now, but the truncated weights are refused
    assert "res4 has 0 blocks" in r.output


def test_missing_file_exits_2(tmp_path):
    r = run("import-detectron2", tmp_path / "nope.pth", "--out", tmp_path / "x.pt")
    assert_clean_error(r)
    assert "does not exist" in r.output


@pytest.mark.parametrize("payload, message", [
    ({"state_dict": {"layer.weight": torch.zeros(1)}, "epoch": 3}, "no 'model' state dict"),
    ({"backbone.body.conv1.weight": torch.zeros(1)}, "torchvision"),
    ({"format": "liverrt.checkpoint", "state_dict": {}}, "already a liverrt checkpoint"),
])
def test_non_detectron2_pth_exits_2(tmp_path, payload, message):
    path = tmp_path / "other.pth"
    torch.save(payload, path)
    r = run("import-detectron2", path, "--out", tmp_path / "x.pt")
    assert_clean_error(r)
    assert message in r.output and not (tmp_path / "x.pt").exists()


def test_refuses_to_overwrite_its_input(d2_pth):
    before = d2_pth.stat().st_mtime_ns
    r = run("import-detectron2", d2_pth, "--out", d2_pth)
    assert_clean_error(r)
    assert "Refusing to overwrite" in r.output and d2_pth.stat().st_mtime_ns == before
