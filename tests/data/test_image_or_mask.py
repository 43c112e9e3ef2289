"""A file is known for an image or a mask before it is used (issue 18, item 1)."""

import numpy as np
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import make_volume

from liverrt.cli import cli
from liverrt.data.io import write_nifti
from liverrt.data.volume import MAX_LABELS, check_image, check_label_map, label_values
from liverrt.errors import InputError

rng = np.random.default_rng(0)


@pytest.mark.parametrize(("array", "labels"), [
    (np.zeros((3, 8, 8), np.uint8), [0]),                                          # empty mask
    (np.ones((3, 8, 8), np.float32), [1]),                                         # full mask, stored as float
    ((rng.random((4, 16, 16)) > 0.5).astype(np.int16) * 2, [0, 2]),                # LiTS tumour label alone
    (rng.integers(0, 3, (4, 16, 16)).astype(np.float64), [0, 1, 2]),               # liver + tumour
    (rng.integers(0, MAX_LABELS, (20, 64, 64)).astype(np.int32), list(range(MAX_LABELS))),  # many organs
])
def test_label_maps_are_known_by_their_few_whole_non_negative_values(array, labels):
    assert label_values(array).tolist() == labels
    check_label_map(array, "m")


@pytest.mark.parametrize("array", [
    rng.normal(40, 300, (4, 32, 32)).round().astype(np.int16),          # CT in HU: air is negative
    rng.normal(400, 100, (4, 32, 32)).clip(0).round().astype(np.uint16),  # raw CT numbers without intercept
    rng.integers(0, 256, (4, 32, 32)).astype(np.uint8),                  # 8-bit slices
    rng.random((4, 8, 8)).astype(np.float32),                            # a probability map
    np.full((2, 4, 4), np.nan, np.float32),
])
def test_images_are_not_label_maps(array):
    assert label_values(array) is None
    with pytest.raises(InputError, match="looks like an image, not a mask"):
        check_label_map(array, "NIfTI mask x.nii.gz")


def test_a_large_volume_is_judged_on_a_sample_and_a_mask_refused_as_image():
    ct = rng.normal(40, 300, (200, 256, 256)).astype(np.float32)
    assert label_values(ct) is None
    check_image(ct, "ct")
    mask = np.zeros((200, 256, 256), np.uint8)
    mask[50:150, 60:200, 30:120] = 1
    with pytest.raises(InputError, match=r"looks like a mask, not an image: its only values are 0, 1"):
        check_image(mask, "Volume 'liver'")


def test_eval_refuses_a_ct_given_as_ground_truth_and_infer_a_mask_given_as_ct(tmp_path, tiny_onnx):
    vol = make_volume(shape=(6, 40, 40))
    write_nifti(vol.image, vol.affine, tmp_path / "ct.nii.gz")
    write_nifti(vol.mask.astype(np.uint8), vol.affine, tmp_path / "liver.nii.gz")
    r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "liver.nii.gz"), "--gt", str(tmp_path / "ct.nii.gz")])
    assert r.exit_code == 2 and "looks like an image, not a mask" in r.output and "Dice" not in r.output
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx), "--input", str(tmp_path / "liver.nii.gz"),
                                 "--out", str(tmp_path / "seg")])
    assert r.exit_code == 2 and "looks like a mask, not an image" in r.output
    assert not (tmp_path / "seg" / "liver").exists()


def test_an_hu_model_refuses_8bit_slices_and_the_batch_goes_on(tmp_path, tiny_onnx):
    """The finding: a model trained on HU run on 8-bit JPEG slices output ribs and heart, exit 0."""
    from liverrt.data.io import write_png_slices

    write_png_slices(rng.integers(0, 256, (3, 40, 40)).astype(np.uint8), tmp_path / "in" / "jpegs", ("a", "b", "c"))
    vol = make_volume(shape=(6, 40, 40))
    write_nifti(vol.image, vol.affine, tmp_path / "in" / "patient1.nii.gz")
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx), "--input", str(tmp_path / "in"),
                                 "--out", str(tmp_path / "seg")])
    assert "8-bit slices (0..255, PNG/JPG), and this model was trained on CT in HU" in " ".join(r.output.split())
    assert (tmp_path / "seg" / "patient1" / "mask.nii.gz").exists() and not (tmp_path / "seg" / "jpegs").exists()
    assert r.exit_code == 2  # a skipped case is reported in the exit status

    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx), "--input", str(tmp_path / "in" / "jpegs"),
                                 "--out", str(tmp_path / "seg2")])
    assert r.exit_code == 2 and not (tmp_path / "seg2").exists()
    assert "->" not in r.output  # no summary line pointing at an output folder that was not written


def test_an_8bit_model_takes_hu_ct_through_its_window_with_a_warning(tmp_path, tiny_onnx_8bit, caplog):
    from liverrt.data.preprocess import PreprocessSpec

    spec = PreprocessSpec(window_center=40, window_width=350, input_domain="8bit")
    assert spec.check_input("8bit", "x") is None
    assert "window 40/350 HU" in spec.check_input("hu", "Volume 'ct'")
    assert PreprocessSpec().check_input("hu", "x") is None
    with pytest.raises(InputError, match="trained on CT in HU"):
        PreprocessSpec().check_input("8bit", "Volume 'jpegs'")

    vol = make_volume(shape=(6, 40, 40))
    write_nifti(vol.image, vol.affine, tmp_path / "ct.nii.gz")
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx_8bit), "--input", str(tmp_path / "ct.nii.gz"),
                                 "--out", str(tmp_path / "seg")])
    assert r.exit_code == 0, r.output
    assert "CT in HU given to a model trained on 8-bit slices" in " ".join(r.output.split()) + caplog.text
