"""``liverrt eval`` with NRRD/MetaImage and DICOM SEG masks on either side, against NIfTI of the same mask."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from badinput.builders import dicom_seg
from click.testing import CliRunner
from liverrt_test_helpers import SHARED_DATA, make_volume, write_ct_series

from liverrt.cli import cli
from liverrt.data.dicom import read_dicom_series
from liverrt.data.dicom_seg import write_dicom_seg
from liverrt.data.io import write_nifti
from liverrt.evaluation import evaluate
from liverrt.metrics import dice

DCMQI = SHARED_DATA / "dcmqi_ct3slice"


def _eval(pred, gt, tmp_path, *extra):
    out = tmp_path / "metrics.json"
    r = CliRunner().invoke(cli, ["eval", "--pred", str(pred), "--gt", str(gt), "--json", str(out), *map(str, extra)])
    return r, (json.loads(out.read_text()) if out.exists() else None)


def _series_and_mask(tmp_path):
    """A 6-slice series (file names out of position order) and a liver mask with empty first, middle and
    last slices, whose SEG frames are omitted."""
    write_ct_series(tmp_path / "ct", [(0.0, 0.0, 2.5 * k) for k in (3, 0, 5, 1, 4, 2)],
                    [f"im{k}.dcm" for k in range(6)], shape=(24, 20), spacing=(0.8, 0.7))
    vol, _ = read_dicom_series(tmp_path / "ct")
    mask = make_volume(shape=vol.shape, seed=4).mask
    mask[[0, 3, 5]] = False
    assert mask[1].any() and mask[4].any()
    return vol, mask


def test_nrrd_truth_against_nifti_prediction_scores_dice_one(tmp_path):
    vol = make_volume(shape=(5, 32, 28), spacing=(2.5, 0.8, 0.7))
    write_nifti(vol.mask, vol.affine, tmp_path / "pred.nii.gz")
    image = sitk.ReadImage(str(tmp_path / "pred.nii.gz"))  # the same voxels and geometry, as NRRD and MetaImage
    for suffix in (".nrrd", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"gt{suffix}"))
        r, result = _eval(tmp_path / "pred.nii.gz", tmp_path / f"gt{suffix}", tmp_path)
        assert r.exit_code == 0, r.output
        case = result["cases"][0]
        assert case["volume"]["dice"] == 1.0 and case["volume"]["hd95"] == 0.0
        assert case["spacing_mm"] == pytest.approx([2.5, 0.8, 0.7], abs=1e-5) and case["warnings"] == []


def test_a_seg_truth_omitting_empty_frames_scores_the_nifti_of_its_mask_dice_one(tmp_path):
    vol, mask = _series_and_mask(tmp_path)
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "gt" / "seg.dcm")
    write_nifti(mask, vol.affine, tmp_path / "pred.nii.gz")  # what `liverrt infer` writes for the series
    r, result = _eval(tmp_path / "pred.nii.gz", tmp_path / "gt" / "seg.dcm", tmp_path)
    assert r.exit_code == 0, r.output
    case = result["cases"][0]
    assert case["volume"]["dice"] == 1.0 and case["slices"]["n"] == 3 and case["warnings"] == []
    assert case["spacing_mm"] == pytest.approx(vol.spacing)
    r, result = _eval(tmp_path / "gt" / "seg.dcm", tmp_path / "pred.nii.gz", tmp_path, "--overwrite")  # as the prediction
    assert r.exit_code == 0, r.output
    assert result["cases"][0]["volume"]["dice"] == 1.0


def test_a_seg_scores_a_shifted_prediction_like_the_nifti_of_its_mask(tmp_path):
    vol, mask = _series_and_mask(tmp_path)
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm")
    write_nifti(mask, vol.affine, tmp_path / "truth.nii.gz")
    pred = np.roll(mask, 1, axis=0)  # one slice off: partly in slices the SEG omits
    write_nifti(pred, vol.affine, tmp_path / "pred.nii.gz")
    with_seg = evaluate(tmp_path / "pred.nii.gz", tmp_path / "seg.dcm")["cases"][0]["volume"]
    with_nifti = evaluate(tmp_path / "pred.nii.gz", tmp_path / "truth.nii.gz")["cases"][0]["volume"]
    assert with_seg == with_nifti
    assert with_seg["dice"] == pytest.approx(dice(pred, mask))


def test_two_segs_of_one_series_share_the_grid_of_their_frames(tmp_path):
    vol, mask = _series_and_mask(tmp_path)
    pred = mask.copy()
    pred[1] = False  # the prediction's SEG omits a frame the truth's has
    pred[3, 5:9, 5:9] = True  # and has one the truth's omits
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "truth.dcm")
    write_dicom_seg(pred, tmp_path / "ct", tmp_path / "pred.dcm")
    case = evaluate(tmp_path / "pred.dcm", tmp_path / "truth.dcm")["cases"][0]
    assert case["volume"]["dice"] == pytest.approx(dice(pred, mask))
    assert case["slices"]["n"] == 4  # slices 1 to 4 hold liver in one of them (the grid spans them)


def test_a_seg_against_a_prediction_on_another_grid_is_refused_in_one_line(tmp_path):
    vol, mask = _series_and_mask(tmp_path)
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm")
    shifted = vol.affine.copy()
    shifted[:3, 3] += 0.35  # half a column
    write_nifti(mask, shifted, tmp_path / "pred.nii.gz")
    r, _ = _eval(tmp_path / "pred.nii.gz", tmp_path / "seg.dcm", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output
    error = r.output.strip().splitlines()[-1]
    assert error.startswith("Error: No case could be scored") and "do not lie on the voxel grid of" in error


def test_an_infer_output_folder_holding_only_seg_dcm_is_a_prediction(tmp_path):
    vol, mask = _series_and_mask(tmp_path)
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "out" / "ct" / "seg.dcm")
    write_nifti(mask, vol.affine, tmp_path / "gt" / "ct" / "mask.nii.gz")
    r, result = _eval(tmp_path / "out", tmp_path / "gt", tmp_path)
    assert r.exit_code == 0, r.output
    assert [c["id"] for c in result["cases"]] == ["ct"] and result["cases"][0]["volume"]["dice"] == 1.0


def test_a_multi_segment_seg_is_scored_on_its_liver(tmp_path):
    vol, mask = _series_and_mask(tmp_path)
    spleen = np.zeros(vol.shape, bool)
    spleen[2, :4, :4] = True
    dicom_seg(tmp_path / "ct", tmp_path / "gt.dcm", {"Spleen": spleen, "Liver": mask})
    write_nifti(mask, vol.affine, tmp_path / "pred.nii.gz")
    assert evaluate(tmp_path / "pred.nii.gz", tmp_path / "gt.dcm")["cases"][0]["volume"]["dice"] == 1.0


@pytest.mark.skipif(not DCMQI.is_dir(), reason="shared real-data samples not present")
def test_the_real_dcmqi_nrrd_against_its_seg_scores_dice_one(tmp_path):
    r, result = _eval(DCMQI / "liver_seg.nrrd", DCMQI / "liver.dcm", tmp_path)
    assert r.exit_code == 0, r.output
    assert result["cases"][0]["volume"]["dice"] == 1.0 and result["cases"][0]["warnings"] == []
