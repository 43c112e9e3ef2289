"""NRRD/MetaImage volumes and DICOM SEG masks: damaged, of the wrong kind, or of another grid.

Each must end in one ``Error:`` line naming the file (exit 2), and a good NRRD beside a damaged one is
still segmented whole.
"""

from __future__ import annotations

import numpy as np
import pytest

from liverrt.data.dicom import read_dicom_series
from liverrt.data.io import write_nifti

from .builders import ct_volume, dicom_seg, dicom_series, infer_case_complete, json_file, truncate
from .harness import Case, Scenario, params, run_case

N = 6  # DICOM slices


def _nrrd(path, values, affine_like):
    """``values`` (D, H, W) as NRRD (via SimpleITK, from the NIfTI liverrt writes with ``affine_like``)."""
    import SimpleITK as sitk

    nii = path.with_name(path.name + ".tmp.nii.gz")
    write_nifti(values, affine_like, nii)
    sitk.WriteImage(sitk.ReadImage(str(nii)), str(path))
    nii.unlink()
    return path


def nrrd_eval(tmp, art):
    """A NRRD ground truth against the NIfTI of the same mask: Dice 1."""
    vol = ct_volume()
    write_nifti(vol.mask, vol.affine, tmp / "pred" / "liver.nii.gz")
    _nrrd(tmp / "gt" / "liver.nrrd", vol.mask.astype(np.uint8), vol.affine)
    out = tmp / "m.json"

    def perfect(o):
        assert json_file(out)["cases"][0]["volume"]["dice"] == 1.0, "NRRD truth and NIfTI prediction differ"

    return Scenario(["eval", "--pred", tmp / "pred" / "liver.nii.gz", "--gt", tmp / "gt" / "liver.nrrd", "--json", out],
                    inputs=[tmp / "pred", tmp / "gt"], outs=[out], after=perfect)


def nrrd_corrupt_gt(tmp, art):
    vol = ct_volume()
    write_nifti(vol.mask, vol.affine, tmp / "pred" / "liver.nii.gz")
    truncate(_nrrd(tmp / "gt" / "broken.nrrd", vol.mask.astype(np.uint8), vol.affine), 120)
    return Scenario(["eval", "--pred", tmp / "pred" / "liver.nii.gz", "--gt", tmp / "gt" / "broken.nrrd"],
                    inputs=[tmp / "pred", tmp / "gt"])


def nrrd_corrupt_infer(tmp, art):
    """``in/good.nrrd`` and ``in/broken.nrrd`` (cut in its header): the good one is segmented whole."""
    root, out = tmp / "in", tmp / "out"
    vol = ct_volume()
    _nrrd(root / "good.nrrd", vol.image, vol.affine)
    (root / "broken.nrrd").write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 32 32\nencoding: raw\n\n")
    return Scenario(["infer", "--model", art.tiny_onnx, "--input", root, "--out", out],
                    inputs=[root, art.tiny_onnx], outs=[out], good=[infer_case_complete(out, "good", shape=(32, 32, 4))],
                    absent=[out / "broken"])


def _seg_case(tmp, segments):
    """A series, a NIfTI prediction on it, and a SEG of ``segments`` (label -> mask) as the truth."""
    dicom_series(tmp / "ct", N)
    vol, _ = read_dicom_series(tmp / "ct")
    mask = ct_volume(shape=vol.shape).mask
    write_nifti(mask, vol.affine, tmp / "pred" / "liver.nii.gz")
    dicom_seg(tmp / "ct", tmp / "gt" / "seg.dcm", {label: mask for label in segments})
    return vol, mask


def ct_slice_as_gt(tmp, art):
    _seg_case(tmp, ["Liver"])
    return Scenario(["eval", "--pred", tmp / "pred" / "liver.nii.gz", "--gt", tmp / "ct" / "s002.dcm"],
                    inputs=[tmp / "ct", tmp / "pred"])


def seg_without_liver(tmp, art):
    _seg_case(tmp, ["Spleen", "Kidney"])
    return Scenario(["eval", "--pred", tmp / "pred" / "liver.nii.gz", "--gt", tmp / "gt" / "seg.dcm"],
                    inputs=[tmp / "ct", tmp / "pred", tmp / "gt"])


def seg_truncated(tmp, art):
    _seg_case(tmp, ["Liver"])
    truncate(tmp / "gt" / "seg.dcm", -40)
    return Scenario(["eval", "--pred", tmp / "pred" / "liver.nii.gz", "--gt", tmp / "gt" / "seg.dcm"],
                    inputs=[tmp / "ct", tmp / "pred", tmp / "gt"])


def seg_on_another_grid(tmp, art):
    """A SEG against a prediction whose grid is shifted by half a pixel: refused, not scored."""
    vol, mask = _seg_case(tmp, ["Liver"])
    shifted = vol.affine.copy()
    shifted[:3, 3] += 0.4
    write_nifti(mask, shifted, tmp / "pred" / "liver.nii.gz")
    return Scenario(["eval", "--pred", tmp / "pred" / "liver.nii.gz", "--gt", tmp / "gt" / "seg.dcm"],
                    inputs=[tmp / "ct", tmp / "pred", tmp / "gt"])


CASES = [
    Case("nrrd-gt-eval", nrrd_eval, 0),
    Case("nrrd-corrupt-gt-eval", nrrd_corrupt_gt, 2, ("broken.nrrd", "NRRD")),
    Case("nrrd-corrupt-infer", nrrd_corrupt_infer, 2, ("broken.nrrd",)),
    Case("dicom-ct-slice-as-gt-eval", ct_slice_as_gt, 2, ("s002.dcm", "not a segmentation", "DICOM SEG")),
    Case("seg-without-liver-eval", seg_without_liver, 2, ("seg.dcm", "'Spleen'", "'Kidney'", "no liver segment")),
    Case("seg-truncated-eval", seg_truncated, 2, ("seg.dcm",)),
    Case("seg-on-another-grid-eval", seg_on_another_grid, 2, ("seg.dcm", "do not lie on the voxel grid")),
]


@pytest.mark.parametrize("case", params(*CASES))
def test_format(case, tmp_path, art):
    run_case(case, tmp_path, art)
