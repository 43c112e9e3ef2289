"""DICOM SEG output: frames land on the right source instance and pixels, and the object is a valid SEG."""

import highdicom as hd
import numpy as np
import pydicom
import pytest
from liverrt_test_helpers import AXIAL, SHARED_DATA, write_ct_series

from liverrt.data.dicom import read_dicom_series
from liverrt.data.dicom_seg import write_dicom_seg
from liverrt.errors import InputError

DCMQI = SHARED_DATA / "dcmqi_ct3slice"
SLOPE, INTERCEPT = 2.0, -1024.0


def _predicate(hu):
    """A mask that depends on slice, row and column (via the coded stored values)."""
    stored = np.round((np.asarray(hu, float) - INTERCEPT) / SLOPE).astype(int)
    return (stored % 3 == 0) | (stored % 7 == 1)


def _seg_frames(path, sop_uids, *, ignore_spatial_locations=False):
    """The SEG's mask for each source instance, ``{uid: (rows, cols) bool}``.

    Our SEGs must declare SpatialLocationsPreserved; dcmqi's reference does not.
    """
    seg = hd.seg.segread(path)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(sop_uids), segment_numbers=[1], combine_segments=True,
        skip_overlap_checks=True, ignore_spatial_locations=ignore_spatial_locations,
    )
    return {uid: pixels[i] > 0 for i, uid in enumerate(sop_uids)}


def _uid_by_stem(folder):
    return {p.stem: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in folder.glob("*.dcm")}


def test_frames_land_on_their_source_instance_despite_file_names_out_of_order(tmp_path):
    folder = tmp_path / "series"
    # file names a, b, c, d lie at z = 20, 0, 30, 10: position order is b, d, a, c
    names = ["a.dcm", "b.dcm", "c.dcm", "d.dcm"]
    write_ct_series(folder, [(0, 0, 20), (0, 0, 0), (0, 0, 30), (0, 0, 10)], names)
    vol, _ = read_dicom_series(folder)
    assert vol.slice_names == ("b", "d", "a", "c")
    mask = np.zeros(vol.shape, bool)
    for k in range(vol.shape[0]):  # a distinct pattern per slice: slice k has k + 1 pixels set
        mask[k].flat[: k + 1] = True
    mask[1] = False  # an empty slice (omitted frame) reads back as empty
    out = write_dicom_seg(mask, folder, tmp_path / "out" / "seg.dcm")
    uids = _uid_by_stem(folder)
    frames = _seg_frames(out, [uids[s] for s in vol.slice_names])
    for k, stem in enumerate(vol.slice_names):
        assert np.array_equal(frames[uids[stem]], mask[k]), stem


@pytest.mark.parametrize(
    "iop",
    [
        AXIAL,
        (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0),  # columns toward the patient's right: flipped in-plane
        (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),  # rows and columns swapped: transposed in-plane
        (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),  # sagittal: reoriented to axial slices
    ],
    ids=["axial", "flipped", "transposed", "sagittal"],
)
def test_pixels_map_back_to_the_stored_grid_for_any_orientation(tmp_path, iop):
    folder = tmp_path / "series"
    normal = np.cross(iop[:3], iop[3:])
    positions = [normal * z for z in (2.0, 0.0, 3.0, 1.0)]
    write_ct_series(folder, positions, ["s1.dcm", "s2.dcm", "s3.dcm", "s4.dcm"], iop=iop)
    vol, _ = read_dicom_series(folder)
    mask = _predicate(vol.image)
    out = write_dicom_seg(mask, folder, tmp_path / "seg.dcm")
    sources = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    frames = _seg_frames(out, [ds.SOPInstanceUID for ds in sources])
    for ds in sources:
        expected = _predicate(ds.pixel_array * SLOPE + INTERCEPT)
        assert np.array_equal(frames[ds.SOPInstanceUID], expected)


def test_shape_mismatch_is_an_input_error(tmp_path):
    folder = tmp_path / "series"
    write_ct_series(folder, [(0, 0, 0), (0, 0, 1)], ["1.dcm", "2.dcm"])
    with pytest.raises(InputError, match="shape"):
        write_dicom_seg(np.zeros((2, 6, 5), bool), folder, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_refuses_to_overwrite_a_source_file(tmp_path):
    folder = tmp_path / "series"
    write_ct_series(folder, [(0, 0, 0), (0, 0, 1)], ["1.dcm", "2.dcm"])
    before = (folder / "2.dcm").read_bytes()
    with pytest.raises(InputError):
        write_dicom_seg(np.ones((2, 5, 6), bool), folder, folder / "2.dcm")
    assert (folder / "2.dcm").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["1.dcm", "2.dcm"]


def test_folder_without_a_ct_series_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No DICOM image slices"):
        write_dicom_seg(np.zeros((1, 5, 6), bool), tmp_path / "empty", tmp_path / "seg.dcm")
    with pytest.raises(InputError):
        write_dicom_seg(np.zeros((1, 5, 6), bool), tmp_path / "missing", tmp_path / "seg.dcm")


@pytest.mark.skipif(not DCMQI.is_dir(), reason="shared real-data samples not present")
def test_real_series_round_trips_the_dcmqi_liver(tmp_path):
    vol, _ = read_dicom_series(DCMQI)  # liver.dcm (the reference SEG) is ignored by the reader
    uids = _uid_by_stem(DCMQI)
    ct_stems = sorted(s for s in uids if s != "liver")
    assert sorted(vol.slice_names) == ct_stems
    order = [uids[s] for s in vol.slice_names]
    reference = _seg_frames(DCMQI / "liver.dcm", order, ignore_spatial_locations=True)  # dcmqi's liver, per source instance
    mask = np.stack([reference[uid] for uid in order])
    assert mask.any() and not mask.all()

    out = write_dicom_seg(mask, DCMQI, tmp_path / "liver_seg.dcm", algorithm="liverrt test", version="9.9")
    assert sorted(p.name for p in DCMQI.iterdir() if p.name.startswith(".")) == []  # nothing left in the source

    ds = pydicom.dcmread(out)
    ct = pydicom.dcmread(DCMQI / "01.dcm", stop_before_pixels=True)
    assert ds.Modality == "SEG"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert ds.StudyInstanceUID == ct.StudyInstanceUID
    assert ds.PatientID == ct.PatientID
    assert ds.SeriesInstanceUID != ct.SeriesInstanceUID
    assert ds.Manufacturer == "liverrt"
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == set(order)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID

    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "Liver"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "85756007"
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("liverrt test", "9.9")
    assert algo.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"

    ours = _seg_frames(out, order)
    for k, uid in enumerate(order):
        assert np.array_equal(ours[uid], mask[k]), vol.slice_names[k]
    seg = hd.seg.segread(out)
    assert seg.segmented_property_types[0].value == "10200004"


def test_an_empty_mask_still_writes_a_valid_seg(tmp_path):
    folder = tmp_path / "series"
    write_ct_series(folder, [(0, 0, 0), (0, 0, 1)], ["1.dcm", "2.dcm"])
    out = write_dicom_seg(np.zeros((2, 5, 6), bool), folder, tmp_path / "seg.dcm")
    uids = _uid_by_stem(folder)
    frames = _seg_frames(out, [uids["1"], uids["2"]])
    assert not any(f.any() for f in frames.values())
    assert pydicom.dcmread(out).Modality == "SEG"


def test_missing_highdicom_is_a_clear_backend_error(tmp_path, monkeypatch):
    import sys

    from liverrt.errors import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "highdicom", None)  # makes ``import highdicom`` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'liverrt\[dicom\]'"):
        write_dicom_seg(np.zeros((1, 5, 6), bool), tmp_path, tmp_path / "seg.dcm")


def test_infer_writes_a_dicom_seg_for_a_dicom_series_input(tmp_path, tiny_onnx):
    from click.testing import CliRunner

    from liverrt.cli import cli

    write_ct_series(tmp_path / "ct", [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0)], ["c.dcm", "a.dcm", "b.dcm"],
                  shape=(24, 20))
    r = CliRunner().invoke(cli, ["infer", "--model", str(tiny_onnx), "--input", str(tmp_path / "ct"),
                                 "--out", str(tmp_path / "out"), "--format", "dicom-seg", "--format", "nifti"])
    assert r.exit_code == 0, r.output
    seg = pydicom.dcmread(tmp_path / "out" / "ct" / "seg.dcm")
    assert seg.Modality == "SEG"
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert referenced == set(_uid_by_stem(tmp_path / "ct").values())
    assert (tmp_path / "out" / "ct" / "mask.nii.gz").is_file()
