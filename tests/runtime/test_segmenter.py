import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from liverrt_test_helpers import make_volume

from liverrt.atomic import MARKER
from liverrt.data.io import read_nifti, write_nifti, write_png_slices
from liverrt.errors import InputError
from liverrt.metrics import smooth_z
from liverrt.runtime import open_engine
from liverrt.runtime.infer import run_inference
from liverrt.runtime.outputs import write_case
from liverrt.runtime.segmenter import Segmenter


def test_segmenter_maps_back_to_source_geometry_for_any_batch(tiny_onnx):
    vol = make_volume(shape=(7, 50, 38))
    with open_engine("onnxruntime", tiny_onnx) as eng:
        a = Segmenter(eng, batch_size=3, keep_prob=True).segment(vol)
        b = Segmenter(eng, batch_size=7, keep_prob=True).segment(vol)
    assert a.mask.shape == vol.shape and a.mask.dtype == bool
    assert np.abs(a.prob - b.prob).max() < 1e-5
    assert set(a.timings) == {"preprocess", "engine", "postprocess"}


def test_engines_agree_through_the_segmenter(tiny_checkpoint, tiny_onnx):
    vol = make_volume()
    probs = []
    for name, path in (("torch", tiny_checkpoint), ("onnxruntime", tiny_onnx)):
        with open_engine(name, path) as eng:
            probs.append(Segmenter(eng, keep_prob=True).segment(vol).prob)
    assert np.abs(probs[0] - probs[1]).max() < 1e-4


def test_bad_threshold_and_batch(tiny_onnx):
    eng = open_engine("onnxruntime", tiny_onnx)
    with pytest.raises(InputError):
        Segmenter(eng, batch_size=0)
    with pytest.raises(InputError):
        Segmenter(eng, threshold=1.5)


def test_run_inference_writes_nifti_with_source_affine_and_skips_bad_cases(tiny_onnx, tmp_path):
    src = tmp_path / "in"
    vol = make_volume(case_id="good")
    write_nifti(vol.image, vol.affine, src / "good.nii.gz")
    (src / "broken.nii.gz").write_bytes(b"garbage")
    before = (src / "good.nii.gz").read_bytes()
    report = run_inference(tiny_onnx, src, tmp_path / "out", formats=("nifti", "png"), overlays=2)
    assert [c["id"] for c in report.cases] == ["good"]
    assert [s["id"] for s in report.skipped] == ["broken"]
    mask, affine, _ = read_nifti(tmp_path / "out" / "good" / "mask.nii.gz")
    assert mask.shape == vol.shape and np.allclose(affine, vol.affine)
    assert len(list((tmp_path / "out" / "good" / "masks").glob("*.png"))) == vol.shape[0]
    assert (tmp_path / "out" / "summary.json").is_file()
    assert not (tmp_path / "out" / "broken").exists()
    # no temp leftovers: only liverrt's list of what it wrote (liverrt.atomic.MARKER)
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == [MARKER]
    assert (src / "good.nii.gz").read_bytes() == before


def test_output_folder_holding_the_input_is_refused(tiny_onnx, tmp_path):
    vol = make_volume(case_id="case")
    write_nifti(vol.image, vol.affine, tmp_path / "case" / "image.nii.gz")
    with pytest.raises(InputError, match="would replace the input"):
        run_inference(tiny_onnx, tmp_path / "case", tmp_path)
    assert (tmp_path / "case" / "image.nii.gz").is_file()
    from liverrt.runtime.segmenter import Segmentation

    with pytest.raises(InputError):
        write_case(
            make_volume(case_id="case").__class__(**{**vol.__dict__, "source": str(tmp_path / "case" / "image.nii.gz")}),
            Segmentation("case", vol.mask), tmp_path,
        )


def test_postprocessing_fills_holes_and_keeps_the_largest_component(tiny_onnx):
    eng = open_engine("onnxruntime", tiny_onnx)
    raw = np.zeros((3, 20, 20), bool)
    raw[:, 2:12, 2:12] = True
    raw[:, 5:8, 5:8] = False  # a hole
    raw[1, 16:19, 16:19] = True  # a separate speck
    seg = Segmenter(eng, fill_holes=True, keep_largest=True)
    out = seg.postprocess(raw)
    expected = np.zeros_like(raw)
    expected[:, 2:12, 2:12] = True
    assert np.array_equal(out, expected)
    assert np.array_equal(Segmenter(eng).postprocess(raw), raw)  # off by default


def test_smoothing_across_slices_comes_before_the_threshold_and_needs_slice_geometry(tiny_onnx, tiny_onnx_8bit):
    vol = make_volume(shape=(9, 40, 36), spacing=(2.0, 0.8, 0.8))
    with open_engine("onnxruntime", tiny_onnx) as eng:
        raw = Segmenter(eng, keep_prob=True).segment(vol)
        smoothed = Segmenter(eng, keep_prob=True, smooth_z_mm=6.0, threshold=0.55).segment(vol)
        with pytest.raises(InputError, match="smooth_z_mm"):
            Segmenter(eng, smooth_z_mm=-1.0)
    expected = smooth_z(raw.prob, 6.0, 2.0)
    assert np.allclose(smoothed.prob, expected, atol=1e-6) and not np.allclose(smoothed.prob, raw.prob)
    assert np.array_equal(smoothed.mask, expected >= 0.55)
    # 8-bit slices have no spacing and may be unrelated pictures: never smoothed
    slices = replace(vol, intensity="8bit", image=np.clip(vol.image + 1000, 0, 255).astype(np.uint8))
    with open_engine("onnxruntime", tiny_onnx_8bit) as eng:
        a = Segmenter(eng, keep_prob=True, smooth_z_mm=6.0).segment(slices)
        b = Segmenter(eng, keep_prob=True).segment(slices)
    assert np.array_equal(a.prob, b.prob) and np.array_equal(a.mask, b.mask)


def test_nifti_output_matches_the_source_file_voxel_for_voxel(tiny_onnx, tmp_path):
    import nibabel as nib

    vol = make_volume(case_id="ras")
    # store the volume RAS-ordered with an origin, as many converters do
    data = np.ascontiguousarray(vol.image.transpose(2, 1, 0)[::-1, ::-1, :])
    affine = np.array([[0.8, 0, 0, -20.0], [0, 0.8, 0, -30.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "ras.nii.gz"))
    run_inference(tiny_onnx, tmp_path / "ras.nii.gz", tmp_path / "out", overlays=0)
    out = nib.load(str(tmp_path / "out" / "ras" / "mask.nii.gz"))
    assert out.shape == data.shape
    assert np.allclose(out.affine, affine)
    # the mask lines up with the source: same voxel index, same anatomy
    with open_engine("onnxruntime", tiny_onnx) as eng:
        expected = Segmenter(eng).segment(vol).mask.transpose(2, 1, 0)[::-1, ::-1, :]
    assert np.array_equal(np.asarray(out.dataobj) > 0, expected)


def test_inference_ignores_unreadable_ground_truth(tiny_onnx_8bit, tmp_path):
    from PIL import Image

    img = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    write_png_slices(img, tmp_path / "case" / "images", ("a", "b"))
    (tmp_path / "case" / "masks").mkdir()
    for name in ("a", "b"):  # CVAT-style colour masks: not a binary mask, but not needed to segment
        Image.fromarray(np.dstack([img[0], img[1], img[0] // 2])).save(tmp_path / "case" / "masks" / f"{name}.png")
    report = run_inference(tiny_onnx_8bit, tmp_path / "case", tmp_path / "out", overlays=0)
    assert [c["id"] for c in report.cases] == ["case"] and not report.skipped


def test_a_crashing_case_is_reported_and_the_others_still_run(tiny_onnx, tmp_path, monkeypatch):
    from liverrt.runtime import segmenter as seg_mod

    for cid in ("a", "b"):
        v = make_volume(case_id=cid)
        write_nifti(v.image, v.affine, tmp_path / "in" / f"{cid}.nii.gz")
    real = seg_mod.Segmenter.segment

    def flaky(self, volume, on_batch=None):
        if volume.case_id == "a":
            raise RuntimeError("engine exploded")
        return real(self, volume, on_batch)

    monkeypatch.setattr(seg_mod.Segmenter, "segment", flaky)
    report = run_inference(tiny_onnx, tmp_path / "in", tmp_path / "out", overlays=0)
    assert [c["id"] for c in report.cases] == ["b"]
    assert report.skipped[0]["kind"] == "runtime" and "engine exploded" in report.skipped[0]["reason"]
    assert not (tmp_path / "out" / "a").exists()


def _dncnn_checkpoint(path, spec, *, scale=1, zero_tail=True):
    from liverrt.artifacts.checkpoint import save_checkpoint
    from liverrt.models.dncnn_sr import DnCNNSR

    model = DnCNNSR(scale=scale, channels=8)
    if not zero_tail:  # a denoiser that changes its input
        torch.nn.init.normal_(model.tail.weight, std=0.5)
    return save_checkpoint(path, model, model_name="dncnn_sr", spec=spec)


def test_denoiser_runs_before_the_engine(tmp_path, tiny_checkpoint, tiny_spec, volume):
    from liverrt.runtime import open_engine

    identity = _dncnn_checkpoint(tmp_path / "id.pt", tiny_spec)  # zero-initialised tail: output == input
    changing = _dncnn_checkpoint(tmp_path / "ch.pt", tiny_spec, zero_tail=False)
    with open_engine("torch", tiny_checkpoint) as eng:
        plain = Segmenter(eng, keep_prob=True).segment(volume)
        with open_engine("torch", identity) as den:
            same = Segmenter(eng, keep_prob=True, denoiser=den).segment(volume)
        with open_engine("torch", changing) as den:
            other = Segmenter(eng, keep_prob=True, denoiser=den).segment(volume)
    assert np.allclose(plain.prob, same.prob, atol=1e-6) and "denoise" in same.timings
    assert not np.allclose(plain.prob, other.prob, atol=1e-3)


def test_incompatible_denoisers_are_refused(tmp_path, tiny_checkpoint, tiny_spec):
    from dataclasses import replace

    from liverrt.runtime import open_engine

    cases = [
        (_dncnn_checkpoint(tmp_path / "sr.pt", tiny_spec, scale=2), "super-resolution"),
        (_dncnn_checkpoint(tmp_path / "w.pt", replace(tiny_spec, window_center=40.0)), "window_center 40.0 vs 50.0"),
        (_dncnn_checkpoint(tmp_path / "s.pt", tiny_spec.with_size(64)), "size 64 vs 32"),
        (tiny_checkpoint, "expected a DnCNN-SR"),
    ]
    with open_engine("torch", tiny_checkpoint) as eng:
        for path, match in cases:
            with pytest.raises(InputError, match=match):
                Segmenter(eng, denoiser=open_engine("torch", path))


def test_infer_cli_denoise_option(tmp_path, tiny_checkpoint, tiny_spec, volume):
    from click.testing import CliRunner

    from liverrt.cli import cli
    from liverrt.data.io import write_nifti

    write_nifti(volume.image, volume.affine, tmp_path / "in" / "case.nii.gz")
    good = _dncnn_checkpoint(tmp_path / "id.pt", tiny_spec)
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_checkpoint), "--engine", "torch", "--input",
                                 str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--denoise", str(good)])
    assert r.exit_code == 0, r.output
    assert "denoise" in json.loads((tmp_path / "out" / "summary.json").read_text())["cases"][0]["timings_s"]
    bad = _dncnn_checkpoint(tmp_path / "sr.pt", tiny_spec, scale=2)
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_checkpoint), "--engine", "torch", "--input",
                                 str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "--denoise", str(bad)])
    assert r.exit_code == 2 and "scale-2" in r.output and not (tmp_path / "out2").exists()
