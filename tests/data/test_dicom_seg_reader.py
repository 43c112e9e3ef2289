"""DICOM SEG as a mask: a SEG of a series lands on exactly the series' voxels; the liver segment is chosen
or refused with its labels; frames off a grid are refused."""

import logging

import numpy as np
import pytest
from badinput.builders import dicom_seg
from liverrt_test_helpers import AXIAL, SHARED_DATA, write_ct_series

from liverrt.data.dicom import read_dicom_series
from liverrt.data.dicom_seg import write_dicom_seg
from liverrt.data.dicom_seg_reader import Grid, read_dicom_seg, read_seg_frames
from liverrt.errors import BackendUnavailableError, InputError

DCMQI = SHARED_DATA / "dcmqi_ct3slice"
ORIENTATIONS = {
    "axial": AXIAL,
    "flipped": (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # columns toward the patient's right
    "transposed": (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),  # rows and columns swapped
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # reoriented to axial slices by the reader
}


def _series(folder, iop=AXIAL):
    """Five slices 2 mm apart whose file names f0..f4 are out of position order; the volume liverrt reads."""
    normal = np.cross(iop[:3], iop[3:])
    write_ct_series(folder, [normal * 2.0 * k for k in (2, 0, 4, 1, 3)], [f"f{k}.dcm" for k in range(5)], iop=iop)
    vol, _ = read_dicom_series(folder)
    return vol


def _grid(vol):
    return Grid(vol.affine, vol.shape, vol.spacing)


@pytest.mark.parametrize("iop", ORIENTATIONS.values(), ids=ORIENTATIONS.keys())
def test_a_seg_of_a_series_reads_back_on_the_series_voxels(tmp_path, iop):
    vol = _series(tmp_path / "ct", iop)
    mask = np.random.default_rng(1).random(vol.shape) > 0.5  # every frame has liver: none omitted
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm")
    got, grid, frames = read_dicom_seg(tmp_path / "seg.dcm")
    assert got.shape == vol.shape and np.array_equal(got, mask)
    assert np.allclose(grid.affine, vol.affine, atol=1e-6)
    assert grid.spacing == pytest.approx(vol.spacing)
    assert frames.segment == "Liver"


def test_omitted_empty_frames_become_empty_slices(tmp_path):
    vol = _series(tmp_path / "ct")
    mask = np.zeros(vol.shape, bool)
    mask[1, 1:4, 2:5] = True
    mask[3, 0, 0] = True  # slices 0, 2 and 4 are empty: their frames are omitted
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm")
    assert len(read_seg_frames(tmp_path / "seg.dcm").pixels) == 2
    own, grid, _ = read_dicom_seg(tmp_path / "seg.dcm")  # from the first frame to the last, the gap filled
    assert np.array_equal(own, mask[1:4])
    assert np.allclose(grid.affine[:3, :3], vol.affine[:3, :3], atol=1e-6)
    assert np.allclose(grid.affine[:3, 3], vol.affine[:3, :3] @ [0, 0, 1] + vol.affine[:3, 3])  # starts at slice 1
    on_series, _, _ = read_dicom_seg(tmp_path / "seg.dcm", grid=_grid(vol))
    assert np.array_equal(on_series, mask)


def test_gantry_tilt_keeps_the_series_shear(tmp_path):
    write_ct_series(tmp_path / "ct", [(0.0, 0.3 * k, 2.0 * k) for k in range(4)], [f"t{k}.dcm" for k in range(4)])
    vol, warnings = read_dicom_series(tmp_path / "ct")
    assert any("tilt" in w for w in warnings)
    mask = np.random.default_rng(2).random(vol.shape) > 0.3
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm")
    got, grid, _ = read_dicom_seg(tmp_path / "seg.dcm")
    assert np.array_equal(got, mask) and np.allclose(grid.affine, vol.affine, atol=1e-6)


def test_frames_off_the_grid_are_refused(tmp_path):
    vol = _series(tmp_path / "ct")
    mask = np.ones(vol.shape, bool)
    write_dicom_seg(mask, tmp_path / "ct", tmp_path / "seg.dcm")
    shifted = vol.affine.copy()
    shifted[:3, 3] += vol.affine[:3, 0] * 0.5  # half a column
    with pytest.raises(InputError, match="do not lie on the voxel grid of the given grid") as err:
        read_dicom_seg(tmp_path / "seg.dcm", grid=Grid(shifted, vol.shape, vol.spacing))
    assert "\n" not in str(err.value)
    finer = vol.affine.copy()
    finer[:3, :3] /= 2  # half the voxel size: one pixel is two voxels
    with pytest.raises(InputError, match="do not lie on the voxel grid"):
        read_dicom_seg(tmp_path / "seg.dcm", grid=Grid(finer, vol.shape, vol.spacing))
    smaller = (vol.shape[0] - 1, *vol.shape[1:])
    with pytest.raises(InputError, match="fall outside the grid"):
        read_dicom_seg(tmp_path / "seg.dcm", grid=Grid(vol.affine, smaller, vol.spacing))


@pytest.mark.parametrize("labels, chosen", [
    (("Spleen", "Liver", "Liver tumor"), "Liver"),  # the one labelled Liver, though another mentions it
    (("Kidney", "liver (manual)"), "liver (manual)"),  # the one that mentions the liver
    (("Segment_1",), "Segment_1"),  # the only segment
], ids=["exact", "mentioned", "only"])
def test_the_liver_segment_is_chosen(tmp_path, labels, chosen, caplog):
    vol = _series(tmp_path / "ct")
    rng = np.random.default_rng(3)
    masks = {label: rng.random(vol.shape) > 0.5 for label in labels}
    dicom_seg(tmp_path / "ct", tmp_path / "seg.dcm", masks)
    with caplog.at_level(logging.WARNING):
        got, _, frames = read_dicom_seg(tmp_path / "seg.dcm", grid=_grid(vol))
    assert frames.segment == chosen and np.array_equal(got, masks[chosen])
    assert ("does not name the liver" in caplog.text) == (chosen == "Segment_1")


def test_an_empty_liver_beside_another_segment_is_an_empty_mask(tmp_path):
    vol = _series(tmp_path / "ct")
    spleen = np.zeros(vol.shape, bool)
    spleen[1:3, :2, :2] = True
    dicom_seg(tmp_path / "ct", tmp_path / "seg.dcm", {"Spleen": spleen, "Liver": np.zeros(vol.shape, bool)})
    got, _, frames = read_dicom_seg(tmp_path / "seg.dcm", grid=_grid(vol))
    assert frames.segment == "Liver" and not got.any() and got.shape == vol.shape


@pytest.mark.parametrize("kind", ["FRACTIONAL", "LABELMAP"])
def test_fractional_and_label_map_segs_are_read(tmp_path, kind):
    vol = _series(tmp_path / "ct")
    rng = np.random.default_rng(5)
    liver = rng.random(vol.shape) > 0.5
    spleen = ~liver & (rng.random(vol.shape) > 0.5)
    dicom_seg(tmp_path / "ct", tmp_path / "seg.dcm", {"Spleen": spleen, "Liver": liver}, kind=kind)
    got, grid, frames = read_dicom_seg(tmp_path / "seg.dcm")
    assert frames.segment == "Liver" and np.array_equal(got, liver)  # fractional: at least half the maximum
    assert np.allclose(grid.affine, vol.affine, atol=1e-6)


@pytest.mark.parametrize("labels, message", [
    (("Spleen", "Kidney"), r"no liver segment among its 2 segments \(1 'Spleen', 2 'Kidney'\)"),
    (("Liver left", "Liver right"), r"2 segments could be the liver \(1 'Liver left', 2 'Liver right'\)"),
], ids=["none", "ambiguous"])
def test_no_or_several_liver_segments_are_refused_listing_the_labels(tmp_path, labels, message):
    vol = _series(tmp_path / "ct")
    dicom_seg(tmp_path / "ct", tmp_path / "seg.dcm", {label: np.ones(vol.shape, bool) for label in labels})
    with pytest.raises(InputError, match=message) as err:
        read_seg_frames(tmp_path / "seg.dcm")
    assert "\n" not in str(err.value)


def test_a_ct_slice_or_a_non_dicom_file_is_not_a_seg(tmp_path):
    _series(tmp_path / "ct")
    with pytest.raises(InputError, match=r"f0.dcm is a DICOM CT Image Storage object \(Modality CT\), not a "
                                         "segmentation; expected a DICOM SEG"):
        read_seg_frames(tmp_path / "ct" / "f0.dcm")
    (tmp_path / "notes.dcm").write_text("not DICOM at all\n" * 20)
    with pytest.raises(InputError, match="Cannot read .*notes.dcm as DICOM"):
        read_seg_frames(tmp_path / "notes.dcm")


def test_missing_highdicom_is_a_one_line_install_hint(tmp_path, monkeypatch):
    import sys

    _series(tmp_path / "ct")
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(BackendUnavailableError, match=r"needs highdicom, which is not installed: pip install "
                                                      r"'liverrt\[dicom\]'"):
        read_seg_frames(tmp_path / "ct" / "f0.dcm")


@pytest.mark.skipif(not DCMQI.is_dir(), reason="shared real-data samples not present")
def test_the_real_dcmqi_seg_lands_on_its_series_and_matches_the_nrrd():
    from liverrt.data.io import read_nifti

    vol, _ = read_dicom_series(DCMQI)
    got, grid, frames = read_dicom_seg(DCMQI / "liver.dcm")  # dcmqi's SEG: SRT code T-62000, label "Liver"
    assert frames.segment == "Liver" and got.shape == vol.shape and got.any()
    assert np.allclose(grid.affine, vol.affine, atol=1e-4)  # the SEG stores -235.2 where the CT has -235.199997
    nrrd, affine, _ = read_nifti(DCMQI / "liver_seg.nrrd", labels=True)
    assert np.array_equal(got, nrrd > 0) and np.allclose(affine, vol.affine, atol=1e-4)
