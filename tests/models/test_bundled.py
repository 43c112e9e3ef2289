"""The bundled models: inside the package, exported from the checkpoint the repository keeps, passing the gate
against it, with a card whose numbers are the ones the measuring script prints; and the ways to use them
(``liverrt infer`` without --model, ``liverrt models``, ``liverrt.segment``)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import liverrt
from liverrt.artifacts import artifact_info
from liverrt.cli import cli
from liverrt.data.phantom import PhantomConfig, synth_case
from liverrt.errors import InputError
from liverrt.export.gate import verify_artifact
from liverrt.models.bundled import DEFAULT, REGISTRY, bundled_model, bundled_models

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
CARD_FIELDS = ("summary", "use", "licence", "training_data", "model", "metrics", "measured_by", "speed",
               "failure_modes", "commands", "checkpoint", "postprocess")


def test_every_registered_model_is_installed_small_and_described():
    assert [m.name for m in bundled_models()] == [m.name for m in REGISTRY] and REGISTRY[0].name == DEFAULT
    for m in REGISTRY:
        assert m.path.is_file() and m.path.stat().st_size < 10e6  # the limit: under 10 MB
        info = artifact_info(m.path)
        assert info.format == "onnx" and info.kind == "unet"
        card = m.card
        assert set(CARD_FIELDS) <= set(card)
        assert "not for clinical decisions" in card["use"].lower()
        assert all({"source", "what", "licence"} <= set(s) for s in card["training_data"])
        assert "non-commercial" in card["licence"].lower()
        text = m.card_markdown()
        assert m.name in text and card["training_data"][0]["licence"] in text
        if "estimate" in card:  # trained on the measured volumes: an estimate from runs that did not see them
            assert {"method", "measured_by", "metrics"} <= set(card["estimate"])
            assert set(card["estimate"]["metrics"]) == set(card["metrics"])


def _metrics(dice: float) -> dict:
    return {"dice": dice, "mask_iou": dice / (2 - dice), "ravd": 1.0, "assd": 2.0, "hd95": 9.0, "fp_slices": 0,
            "liver_free_slices": 31}


def test_a_card_with_an_estimate_says_which_figures_saw_the_volumes(monkeypatch):
    from liverrt.models.bundled import BundledModel

    card = {**REGISTRY[0].card, "metrics": {"ircad01": _metrics(0.9611)},
            "estimate": {"method": "Leave one volume out.", "measured_by": ["python eval_real.py RUN"],
                         "metrics": {"ircad01": _metrics(0.9233)}}}
    monkeypatch.setattr(BundledModel, "card", property(lambda self: card))
    text = REGISTRY[0].card_markdown()
    estimate, seen = text.index("## Estimate for scans it has not seen"), text.index("seen in training: optimistic")
    assert estimate < text.index("0.9233") < seen < text.index("0.9611")
    assert "never seen in training" not in text and "`python eval_real.py RUN`" in text
    del card["estimate"]
    text = REGISTRY[0].card_markdown()
    assert "## Measured on real CT (never seen in training)" in text and "Estimate" not in text


def test_a_bundled_model_is_post_processed_as_its_card_was_measured(monkeypatch):
    from liverrt.models.bundled import BundledModel, postprocess_options

    model = REGISTRY[0]
    post = model.postprocess
    assert set(post) == {"smooth_z_mm", "threshold", "fill_holes", "keep_largest"}
    # the command that measured the card's figures ran with the same post-processing
    flags = {"keep_largest": "--keep-largest", "fill_holes": "--fill-holes"}
    assert all((flag in model.card["measured_by"]) == post[key] for key, flag in flags.items())
    assert ("--smooth-z" in model.card["measured_by"]) == bool(post["smooth_z_mm"])
    assert postprocess_options(model) == post
    assert postprocess_options(model, smooth_z_mm=3.0, fill_holes=None) == {**post, "smooth_z_mm": 3.0}
    assert postprocess_options(None) == {"smooth_z_mm": 0.0, "threshold": None, "fill_holes": False,
                                         "keep_largest": False}
    card = {**model.card, "postprocess": {"smooth_z_mm": 8.0, "threshold": 0.55, "fill_holes": True,
                                          "keep_largest": False}}
    monkeypatch.setattr(BundledModel, "card", property(lambda self: card))
    text = model.card_markdown()
    assert "post-processing (on by default): probabilities smoothed across slices (Gaussian, sigma 8 mm), " \
           "threshold 0.55, holes filled in each slice\n" in text


@pytest.mark.slow
@pytest.mark.parametrize("model", REGISTRY, ids=lambda m: m.name)
def test_the_bundled_onnx_passes_the_gate_against_its_checkpoint(model):
    checkpoint = ROOT / model.card["checkpoint"]
    assert checkpoint.is_file(), f"{checkpoint}: the checkpoint the bundled model was exported from"
    assert artifact_info(checkpoint).spec == artifact_info(model.path).spec
    volumes = [synth_case(3000 + k, PhantomConfig(size=256, slices=12), case_id=f"g{k}") for k in range(2)]
    report = verify_artifact(checkpoint, model.path, volumes)
    assert report.passed, report.failures


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "ircad01").is_dir(), reason="needs ../shared/data (the real volumes)")
@pytest.mark.parametrize("model", REGISTRY, ids=lambda m: m.name)
def test_the_cards_numbers_are_what_the_measuring_script_prints(model):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import eval_real
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    card = model.card["metrics"]
    result = eval_real.score(model.path, tuple(card), engine="onnxruntime", **model.postprocess,
                             data=DATA)
    for case, expected in card.items():
        got = {**result["cases"][case]["volume"], **result["cases"][case]}
        for key in ("dice", "mask_iou", "ravd", "assd", "hd95"):
            assert got[key] == pytest.approx(expected[key], rel=1e-3, abs=1e-3), (case, key)
        assert got["fp_slices"] == expected["fp_slices"]


def _phantom(size: int = 128, slices: int = 12):
    return synth_case(5, PhantomConfig(size=size, slices=slices))


def test_segment_takes_an_array_with_its_spacing_and_a_file():
    vol = _phantom()
    result = liverrt.segment(vol.image.astype(np.int16), spacing=vol.spacing)
    assert result.mask.shape == vol.shape and result.mask.dtype == bool
    assert result.liver_ml == pytest.approx(result.mask.sum() * np.prod(vol.spacing) / 1000)
    assert result.model == str(bundled_model().path)
    assert np.allclose(result.affine, np.diag([-vol.spacing[2], -vol.spacing[1], vol.spacing[0], 1.0]))


def test_segment_from_a_nifti_file_matches_the_array_call(tmp_path):
    from liverrt.data.io import write_nifti

    vol = _phantom()
    write_nifti(vol.image, vol.affine, tmp_path / "ct.nii.gz")
    from_file = liverrt.segment(tmp_path / "ct.nii.gz")
    from_array = liverrt.segment(vol.image, spacing=vol.spacing)
    assert np.array_equal(from_file.mask, from_array.mask)


@pytest.mark.parametrize(("call", "message"), [
    (lambda v: liverrt.segment(v.image), "needs spacing"),
    (lambda v: liverrt.segment(v.image, spacing=(1.0, 0.0, 1.0)), "three positive numbers"),
    (lambda v: liverrt.segment(v.image.astype(bool), spacing=v.spacing), "numbers in HU"),
    (lambda v: liverrt.segment(v.image, spacing=v.spacing, model="no-such-model"), "No bundled model"),
])
def test_segment_refuses_bad_input_with_one_line(call, message):
    with pytest.raises(InputError, match=message):
        call(_phantom(size=64, slices=2))


def test_infer_without_a_model_uses_the_bundled_one_with_post_processing(tmp_path):
    from liverrt.data.io import write_nifti

    vol = _phantom()
    write_nifti(vol.image, vol.affine, tmp_path / "ct.nii.gz")
    r = CliRunner().invoke(cli, ["infer", "--input", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "seg")])
    assert r.exit_code == 0, r.output
    assert f"model: {DEFAULT} (bundled" in r.output
    from liverrt.data.io import read_nifti

    mask, _, _ = read_nifti(tmp_path / "seg" / "ct" / "mask.nii.gz", labels=True)
    expected = liverrt.segment(vol.image, spacing=vol.spacing).mask  # post-processing on, as for bundled models
    assert np.array_equal(mask.astype(bool), expected)
    # each post-processing option overrides the card's
    r = CliRunner().invoke(cli, ["infer", "--input", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "seg2"),
                                 "--smooth-z", "6", "--threshold", "0.6", "--no-keep-largest"])
    assert r.exit_code == 0, r.output
    mask, _, _ = read_nifti(tmp_path / "seg2" / "ct" / "mask.nii.gz", labels=True)
    from liverrt.models.bundled import postprocess_options
    from liverrt.runtime import open_engine
    from liverrt.runtime.segmenter import Segmenter

    options = postprocess_options(bundled_model(), smooth_z_mm=6.0, threshold=0.6, keep_largest=False)
    with open_engine("onnxruntime", bundled_model().path) as eng:
        expected = Segmenter(eng, **options).segment(vol).mask
    assert options["smooth_z_mm"] == 6.0 and np.array_equal(mask.astype(bool), expected)
    r = CliRunner().invoke(cli, ["infer", "--input", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "seg3"),
                                 "--smooth-z", "-1"])
    assert r.exit_code == 2 and "--smooth-z" in r.output


def test_infer_refuses_a_missing_model_file_and_the_torch_engine_without_a_checkpoint(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["infer", "--model", str(tmp_path / "gone.onnx"), "--input", str(tmp_path),
                            "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "gone.onnx does not exist" in r.output
    r = runner.invoke(cli, ["infer", "--engine", "torch", "--input", str(tmp_path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "bundled models are ONNX" in r.output


def test_models_lists_the_bundled_models_and_prints_a_card():
    r = CliRunner().invoke(cli, ["models"])
    assert r.exit_code == 0, r.output
    assert f"{DEFAULT} (default)" in r.output and "## Training data" in r.output
    r = CliRunner().invoke(cli, ["models", "no-such-model"])
    assert r.exit_code == 2 and "No bundled model" in r.output
