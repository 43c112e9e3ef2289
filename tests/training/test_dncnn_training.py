"""DnCNN-SR training through the shared loop and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from liverrt_test_helpers import make_volume

from liverrt.cli import cli
from liverrt.data.phantom import PhantomConfig, synth_case, synth_dataset
from liverrt.data.preprocess import PreprocessSpec
from liverrt.errors import InputError
from liverrt.models import load_model
from liverrt.training.degrade import DegradeConfig
from liverrt.training.dncnn import DnCNNTask, clean_slices, grid_pixel_mm
from liverrt.training.loop import TrainConfig, fit


def _cfg(**kw):
    base = dict(model="dncnn_sr", epochs=3, batch_size=4, steps_per_epoch=6, lr=2e-3, warmup_steps=2,
                model_options={"channels": 16}, seed=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_hu_slices_travel_with_the_windowed_ones():
    vol = synth_case(0, PhantomConfig(size=64, slices=3))
    spec = PreprocessSpec(size=64)
    x, hu = clean_slices([vol], spec)
    assert x.shape == hu.shape == (3, 1, 64, 64)
    inside = (x > 0.01) & (x < 0.99)
    window = (hu - (50 - 200)) / 400  # the same pixel in the 50/400 window
    assert torch.allclose(window[inside], x[inside], atol=2e-3)
    assert hu.min() < -500  # air is kept in HU, not clipped at the window
    v8 = make_volume(shape=(2, 64, 64))
    eight = type(v8)(**{**v8.__dict__, "image": np.clip(v8.image, 0, 255).astype(np.uint8), "intensity": "8bit"})
    assert clean_slices([eight], spec)[1] is None  # 8-bit slices carry no HU


def test_grid_pixel_size_follows_the_letterbox():
    vol = synth_case(0, PhantomConfig(size=128, slices=2, fov_mm=320.0))
    assert grid_pixel_mm([vol], PreprocessSpec(size=64)) == pytest.approx(5.0)
    assert grid_pixel_mm([vol], PreprocessSpec(size=128)) == pytest.approx(2.5)


def test_the_loss_falls_and_the_report_has_both_sides(tmp_path):
    pc = PhantomConfig(size=64, slices=6)
    vols = [synth_case(i, pc, case_id=f"p{i}") for i in range(3)]
    spec = PreprocessSpec(size=64)
    deg = DegradeConfig(noise="image", image_sigma=40.0)
    task = DnCNNTask(vols[:2], vols[2:], spec, {"train": ["p0", "p1"], "val": ["p2"]}, _cfg(),
                     degrade_config=deg)
    result = fit(task, tmp_path, _cfg())
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    row = result.history[-1]
    assert row["val_psnr_gain"] == pytest.approx(row["val_psnr"] - row["val_psnr_input"])
    assert 10 < row["val_psnr_input"] < 40 and 0 < row["val_ssim_input"] < 1
    model, spec2, ckpt = load_model(result.best_checkpoint, expect_kind="dncnn_sr")
    assert spec2 == spec and ckpt["train_config"]["degrade"]["image_sigma"] == 40.0
    assert result.best_metrics["epoch"] == max(result.history, key=lambda h: h["val_psnr"])["epoch"]


def test_mismatched_settings_are_refused():
    vols = [synth_case(0, PhantomConfig(size=64, slices=2), case_id="a")]
    spec = PreprocessSpec(size=64)
    with pytest.raises(InputError, match="window"):
        DnCNNTask(vols, vols, spec, {}, _cfg(), degrade_config=DegradeConfig(window_center=40.0))
    with pytest.raises(InputError, match="scale"):
        DnCNNTask(vols, vols, spec, {}, _cfg(), degrade_config=DegradeConfig(scale=2))
    with pytest.raises(InputError, match="divisible by 32"):
        DnCNNTask(vols, vols, PreprocessSpec(size=48), {}, _cfg(model_options={"scale": 2, "depth": 4}),
                  degrade_config=DegradeConfig(scale=2))


@pytest.mark.slow
def test_cli_trains_dncnn_sr_scale_2_on_unlabelled_cases(tmp_path):
    synth_dataset(tmp_path / "ph", 3, config=PhantomConfig(size=64, slices=4))
    for mask in (tmp_path / "ph").glob("*/mask.nii.gz"):
        mask.unlink()  # a denoiser needs no labels
    r = CliRunner().invoke(cli, ["train", "dncnn-sr", "--data", str(tmp_path / "ph"), "--out", str(tmp_path / "run"),
                                 "--scale", "2", "--channels", "8", "--size", "64", "--epochs", "1",
                                 "--steps-per-epoch", "2", "--batch-size", "2", "--n-angles", "32",
                                 "--device", "cpu", "--val-fraction", "0.34"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"val_psnr", "val_psnr_input", "val_ssim"} <= set(report["metrics"])
    model, _, ckpt = load_model(tmp_path / "run" / "best.pt")
    assert model.config["scale"] == 2 and ckpt["train_config"]["degrade"]["n_angles"] == 32
    assert model.predict(torch.rand(1, 1, 32, 32))["restored"].shape == (1, 1, 64, 64)


def test_denoise_effect_reports_both_sides_and_the_segmentation(tiny_spec):
    from liverrt_test_helpers import tiny_unet

    from liverrt.models.dncnn_sr import DnCNNSR
    from liverrt.training.dncnn import denoise_effect

    vol = make_volume(shape=(3, 32, 32))
    identity = DnCNNSR(channels=4).eval()  # zero-initialised tail: returns its input
    rows = denoise_effect(identity, [vol], tiny_spec, DegradeConfig(noise="image", image_sigma=30.0),
                          segmenter=tiny_unet().eval())
    r = rows[0]
    assert r["psnr_gain"] == pytest.approx(0.0, abs=1e-4) and r["slices"] == 3
    assert r["iou_noisy"] == pytest.approx(r["iou_denoised"]) and 0 <= r["iou_clean"] <= 1
