"""Mask R-CNN training: targets from the data layer, a falling loss, the two-region report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from liverrt_test_helpers import make_volume

from liverrt.cli import cli
from liverrt.data.phantom import PhantomConfig, synth_case, synth_dataset
from liverrt.data.preprocess import PreprocessSpec, placement
from liverrt.errors import InputError
from liverrt.models import load_model
from liverrt.training.loop import TrainConfig, fit
from liverrt.training.maskrcnn import (
    InstanceSliceSet,
    MaskRCNNTask,
    _grid_labels,
    targets_from_labels,
)

TINY = dict(depth=18, fpn_channels=32, box_head_dim=64, mask_head_channels=32, rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64)


def _two_region_volume():
    vol = make_volume(shape=(3, 64, 64), case_id="two")
    mask = np.zeros((3, 64, 64), bool)
    mask[0, 10:30, 5:25] = True
    mask[0, 40:50, 40:55] = True  # second region
    mask[1, 10:30, 5:25] = True
    mask[1, 60, 60] = True  # a one-pixel fragment
    return vol.with_mask(mask)


def test_regions_become_instances_largest_first_and_fragments_are_dropped():
    vol = _two_region_volume()
    lab = _grid_labels(vol, placement(vol.shape[1:], PreprocessSpec(size=64)), min_area=4)
    assert lab[0].max() == 2 and (lab[0] == 1).sum() == 400 and (lab[0] == 2).sum() == 150
    assert lab[1].max() == 1  # the fragment is not an instance
    assert lab[2].max() == 0
    targets = targets_from_labels(torch.from_numpy(lab), min_area=4)
    assert [len(t["boxes"]) for t in targets] == [2, 1, 0]
    assert targets[0]["boxes"][0].tolist() == [5.0, 10.0, 25.0, 30.0]  # x1 y1 x2 y2, exclusive ends
    assert targets[0]["masks"].dtype == torch.uint8 and targets[2]["masks"].shape == (0, 64, 64)


def test_kitti_instance_maps_win_over_connected_components():
    vol = _two_region_volume()
    inst = np.zeros(vol.shape, np.uint16)
    inst[0][vol.mask[0]] = 7  # the annotator called both regions one instance
    vol = type(vol)(**{**vol.__dict__, "instances": inst})
    lab = _grid_labels(vol, placement(vol.shape[1:], PreprocessSpec(size=64)), min_area=4)
    assert lab[0].max() == 1 and (lab[0] == 1).sum() == 550


def test_no_annotated_slice_is_a_clear_error():
    vol = make_volume(shape=(3, 64, 64), case_id="empty").with_mask(np.zeros((3, 64, 64), bool))
    cfg = TrainConfig(model="maskrcnn_r101_fpn", model_options=TINY)
    with pytest.raises(InputError, match="no annotated liver slices"):
        MaskRCNNTask([vol], [vol], PreprocessSpec(size=64), {}, cfg)
    with pytest.raises(InputError, match="divisible by 32"):
        MaskRCNNTask([vol], [vol], PreprocessSpec(size=48), {}, cfg)


@pytest.mark.slow
def test_the_loss_falls_on_phantoms(tmp_path):
    pc = PhantomConfig(size=64, slices=8, two_region_fraction=0.4)
    vols = [synth_case(i, pc, case_id=f"p{i}") for i in range(3)]
    cfg = TrainConfig(model="maskrcnn_r101_fpn", epochs=4, batch_size=4, steps_per_epoch=8, lr=1e-3,
                      optimizer="adamw", warmup_steps=3, model_options=TINY, seed=0, device="cpu")
    task = MaskRCNNTask(vols[:2], vols[2:], PreprocessSpec(size=64), {"train": ["p0", "p1"], "val": ["p2"]}, cfg)
    assert (task.train_set.regions >= 2).any()  # the phantom has two-region slices to learn from
    result = fit(task, tmp_path, cfg)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    row = result.history[-1]
    assert {"val_mask_iou", "val_instance_recall", "val_multi_slices", "val_multi_separated",
            "loss_mask", "loss_objectness"} <= set(row)
    model, spec, ckpt = load_model(result.best_checkpoint, expect_kind="maskrcnn")
    assert model.config["image_size"] == 64 and ckpt["train_config"]["min_instance_area"] == 32
    out = model.predict(torch.rand(2, 1, 64, 64))
    assert out["prob"].shape == (2, 1, 64, 64)


def test_instance_slice_set_counts_regions():
    vol = _two_region_volume()
    s = InstanceSliceSet([vol], PreprocessSpec(size=64), min_area=4)
    assert s.regions.tolist() == [2, 1, 0] and s.x.shape == (3, 1, 64, 64)


@pytest.mark.slow
def test_cli_trains_maskrcnn_and_refuses_a_second_run_in_the_same_folder(tmp_path):
    synth_dataset(tmp_path / "ph", 3, config=PhantomConfig(size=64, slices=6))
    args = ["train", "maskrcnn", "--data", str(tmp_path / "ph"), "--out", str(tmp_path / "run"), "--depth", "18",
            "--epochs", "1", "--steps-per-epoch", "2", "--size", "64", "--device", "cpu", "--val-fraction", "0.34"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["world_size"] == 1 and "val_multi_separated" in report["metrics"]
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--resume" in again.output
    bad = CliRunner().invoke(cli, [*args[:-4], "--out", str(tmp_path / "r2"), "--size", "48"])
    assert bad.exit_code == 2 and "divisible by 32" in bad.output
