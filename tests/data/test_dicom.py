"""DICOM series and CHAOS cases: order, HU, spacing and the affine against the DICOM patient positions."""

import gzip

import nibabel as nib
import numpy as np
import pytest
from liverrt_test_helpers import AXIAL, SHARED_DATA, stored_pixels, write_ct_series
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from liverrt.data.dicom import read_chaos_case, read_dicom_series, series_spacing
from liverrt.errors import InputError

DCMQI = SHARED_DATA / "dcmqi_ct3slice"


def _world_lps(ipp, iop, spacing, r, c):
    dy, dx = spacing
    return np.asarray(ipp, float) + c * dx * np.asarray(iop[:3], float) + r * dy * np.asarray(iop[3:], float)


def _assert_matches_source(vol, ipps, iop, spacing, stored, slope=2.0, intercept=-1024.0):
    """Every voxel's affine position is the DICOM position of the pixel whose HU it holds."""
    lookup = {}
    for i, ipp in enumerate(ipps):
        rows, cols = stored[i].shape
        for r in range(rows):
            for c in range(cols):
                ras = _world_lps(ipp, iop, spacing, r, c) * [-1, -1, 1]
                lookup[tuple(np.round(ras, 3))] = stored[i][r, c] * slope + intercept
    d, h, w = vol.shape
    for k in range(d):
        for y in range(h):
            for x in range(w):
                ras = (vol.affine @ [x, y, k, 1.0])[:3]
                assert lookup[tuple(np.round(ras, 3))] == vol.image[k, y, x]
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")


def test_axial_series_values_order_spacing_and_affine(tmp_path):
    folder = tmp_path / "ct"
    z = [15.0, 10.0, 17.5, 12.5]  # file-name order is not position order
    ipps = [(-100.0, -120.0, zz) for zz in z]
    names = ["b", "a.dcm", "IM10", "1.2.840.5"]
    write_ct_series(folder, ipps, names)
    (folder / "README.txt").write_text("not dicom")
    seg = Dataset()  # a non-image DICOM object (no position): ignored
    seg.file_meta = FileMetaDataset()
    seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    seg.SeriesInstanceUID = generate_uid()
    seg.BitsAllocated = 1
    seg.PixelData = b"\0\0"
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)

    vol, warnings = read_dicom_series(folder)
    assert warnings == []
    assert vol.shape == (4, 5, 6) and vol.image.dtype == np.int16 and vol.intensity == "hu"
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))
    by_z = np.argsort(z)  # file index of each output slice, inferior first
    assert vol.slice_names == tuple(["a", "1.2.840.5", "b", "IM10"])
    for k, i in enumerate(by_z):
        np.testing.assert_array_equal(vol.image[k], stored_pixels(i, 5, 6).astype(np.int32) * 2 - 1024)
    # voxel (w, h, d) -> RAS equals the DICOM patient position (LPS) with x and y negated
    for w, h, d in [(0, 0, 0), (5, 0, 0), (0, 4, 1), (3, 2, 3)]:
        lps = _world_lps(ipps[by_z[d]], AXIAL, (0.8, 0.7), h, w)
        np.testing.assert_allclose((vol.affine @ [w, h, d, 1])[:3], lps * [-1, -1, 1], atol=1e-6)
    assert nib.aff2axcodes(vol.affine) == ("L", "P", "S")
    assert vol.case_id == "ct" and vol.source == str(folder)
    assert series_spacing(folder) == pytest.approx((2.5, 0.8, 0.7))


def test_series_stored_superior_to_inferior_with_rows_toward_anterior(tmp_path):
    iop = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows run anterior; the normal points inferior
    ipps = [(-100.0, 50.0, 40.0 - 3.0 * i) for i in range(4)]  # files top to bottom
    names = [f"IM{i}.dcm" for i in range(4)]
    write_ct_series(tmp_path / "ct", ipps, names, iop=iop)
    vol, warnings = read_dicom_series(tmp_path / "ct")
    assert warnings == []
    assert vol.slice_names == ("IM3", "IM2", "IM1", "IM0")  # inferior first
    assert vol.spacing == pytest.approx((3.0, 0.8, 0.7))
    # the stored first row is the most anterior: it becomes the last row in LPS order
    np.testing.assert_array_equal(vol.image[0, -1], stored_pixels(3, 5, 6)[0].astype(np.int32) * 2 - 1024)
    _assert_matches_source(vol, ipps, iop, (0.8, 0.7), [stored_pixels(i, 5, 6) for i in range(4)])


def test_transposed_in_plane_axes_are_reoriented(tmp_path):
    iop = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0)  # columns run posterior, rows run left
    ipps = [(-60.0, -80.0, 5.0 * i) for i in range(3)]
    write_ct_series(tmp_path / "ct", ipps, ["x", "y", "z"], iop=iop)
    vol, _ = read_dicom_series(tmp_path / "ct")
    assert vol.shape == (3, 6, 5)  # stored 5 rows x 6 columns: the 6 columns run posterior -> H
    assert vol.spacing == pytest.approx((5.0, 0.7, 0.8))
    _assert_matches_source(vol, ipps, iop, (0.8, 0.7), [stored_pixels(i, 5, 6) for i in range(3)])


def test_mixed_series_are_refused_with_their_names(tmp_path):
    uid_a = write_ct_series(tmp_path / "ct", [(0, 0, 0), (0, 0, 2)], ["a1", "a2"], description="arterial")
    uid_b = write_ct_series(tmp_path / "ct", [(0, 0, 0), (0, 0, 2), (0, 0, 4)], ["b1", "b2", "b3"],
                          description="venous")
    with pytest.raises(InputError, match="mixes 2 DICOM series") as err:
        read_dicom_series(tmp_path / "ct")
    text = str(err.value)
    assert uid_a in text and uid_b in text and "'venous' (3 files)" in text and "'arterial' (2 files)" in text


def test_missing_slice_is_a_warning_naming_the_files(tmp_path):
    ipps = [(0.0, 0.0, z) for z in (0.0, 2.5, 5.0, 10.0, 12.5)]
    write_ct_series(tmp_path / "ct", ipps, [f"s{i}" for i in range(5)])
    vol, warnings = read_dicom_series(tmp_path / "ct")
    assert vol.shape[0] == 5 and vol.spacing[0] == pytest.approx(2.5)
    assert len(warnings) == 1 and "uneven slice gaps" in warnings[0] and "s2 and s3" in warnings[0]


def test_duplicate_position_is_dropped_with_a_warning(tmp_path):
    ipps = [(0.0, 0.0, z) for z in (0.0, 2.0, 2.0, 4.0)]
    write_ct_series(tmp_path / "ct", ipps, ["s0", "s1", "s1copy", "s3"])
    vol, warnings = read_dicom_series(tmp_path / "ct")
    assert vol.slice_names == ("s0", "s1", "s3")
    assert any("duplicate slice position" in w and "s1copy" in w for w in warnings)


def test_gantry_tilt_is_a_warning_and_the_affine_follows_the_positions(tmp_path):
    ipps = [(-10.0, -20.0 + 0.5 * i, 2.5 * i) for i in range(4)]  # y drifts with z: ~11 degrees
    write_ct_series(tmp_path / "ct", ipps, [f"t{i}" for i in range(4)])
    vol, warnings = read_dicom_series(tmp_path / "ct")
    assert any("gantry tilt of 11.3" in w for w in warnings)
    assert vol.spacing[0] == pytest.approx(2.5)
    _assert_matches_source(vol, ipps, AXIAL, (0.8, 0.7), [stored_pixels(i, 5, 6) for i in range(4)])


def test_fractional_rescale_gives_float32(tmp_path):
    write_ct_series(tmp_path / "ct", [(0, 0, 0), (0, 0, 1)], ["a", "b"], slope=0.5, intercept=-1000.0)
    vol, _ = read_dicom_series(tmp_path / "ct")
    assert vol.image.dtype == np.float32
    assert vol.image[0, 0, 1] == pytest.approx(0.5 * 1 - 1000.0)


def test_folder_without_image_slices_is_an_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="No DICOM image slices"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        read_dicom_series(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- CHAOS


def _chaos_case(root, *, n=4, iop=AXIAL, seed=0):
    """A CHAOS-style case whose i-th mask (by name) marks the bright pixels of the i-th DICOM file by name."""
    rng = np.random.default_rng(seed)
    case = root / "7"
    pixels = [rng.integers(0, 2000, (5, 6)).astype(np.uint16) for _ in range(n)]
    z = rng.permutation(n) * 2.0  # file-name order differs from position order
    names = [f"i{i:04d},0000b.dcm" for i in range(n)]
    write_ct_series(case / "DICOM_anon", [(0.0, 0.0, zz) for zz in z], names, iop=iop, pixels=pixels)
    (case / "Ground").mkdir(parents=True)
    for i, px in enumerate(pixels):
        Image.fromarray(np.where(px > 1000, 255, 0).astype(np.uint8)).save(case / "Ground" / f"liver_GT_{i:03d}.png")
    return case, z


@pytest.mark.parametrize("iop", [AXIAL, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)])
def test_chaos_masks_pair_by_file_name_and_follow_the_slice_order(tmp_path, iop):
    case, z = _chaos_case(tmp_path, iop=iop)
    vol, warnings = read_chaos_case(case)
    assert warnings == [] and vol.case_id == "7" and vol.mask is not None and vol.mask.any()
    np.testing.assert_array_equal(vol.mask, vol.image > 2 * 1000 - 1024)
    expected = tuple(f"i{i:04d},0000b" for i in np.argsort(z))
    assert vol.slice_names == expected  # inferior first, whichever way the normal points


def test_chaos_mask_count_and_shape_must_match(tmp_path):
    case, _ = _chaos_case(tmp_path)
    (case / "Ground" / "liver_GT_003.png").unlink()
    with pytest.raises(InputError, match="3 masks .* but 4 DICOM slices"):
        read_chaos_case(case)
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(case / "Ground" / "liver_GT_003.png")
    with pytest.raises(InputError, match=r"liver_GT_003.png has shape \(6, 5\), expected the DICOM slice shape \(5, 6\)"):
        read_chaos_case(case)


def test_chaos_case_without_ground_reads_without_mask(tmp_path):
    case, _ = _chaos_case(tmp_path)
    for p in (case / "Ground").iterdir():
        p.unlink()
    (case / "Ground").rmdir()
    vol, warnings = read_chaos_case(case)
    assert vol.mask is None and "no Ground" in warnings[0]
    with pytest.raises(InputError, match="no DICOM_anon"):
        read_chaos_case(tmp_path)


# ----------------------------------------------------------------------------- real sample


def _read_nrrd(path):
    """Header fields and the gzip-encoded data of a small NRRD file (enough for the dcmqi sample)."""
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields = {}
    for line in head.decode().splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields, gzip.decompress(body)


def _vectors(text):
    return [[float(v) for v in part.strip("() ").split(",")] for part in text.split(") (")]


@pytest.mark.skipif(not DCMQI.is_dir(), reason="shared real-data samples not present")
def test_real_ct_series_ignores_the_seg_and_matches_the_nrrd_label_geometry():
    vol, warnings = read_dicom_series(DCMQI)
    assert warnings == []
    assert vol.shape == (3, 512, 512) and vol.image.dtype == np.int16
    assert vol.spacing == pytest.approx((1.0, 0.810547, 0.810547), abs=1e-6)
    assert vol.slice_names == ("03", "02", "01")  # 03.dcm is the most inferior (z = -128.69)
    assert np.median(vol.image[:, 20:60, 236:276]) == pytest.approx(-1000, abs=60)  # air above the body
    assert 0 <= np.median(vol.image[:, 192:256, 96:160]) <= 100  # soft tissue (liver) on the image left

    fields, data = _read_nrrd(DCMQI / "liver_seg.nrrd")
    assert fields["space"] == "left-posterior-superior" and fields["sizes"] == "512 512 3"
    directions = np.array(_vectors(fields["space directions"])).T  # columns: i, j, k in LPS
    origin = np.array(_vectors(fields["space origin"])[0])
    expected = np.eye(4)
    expected[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ directions
    expected[:3, 3] = origin * [-1, -1, 1]
    np.testing.assert_allclose(vol.affine, expected, atol=1e-3)
    labels = np.frombuffer(data, "<i2").reshape(3, 512, 512)  # i fastest: (k, j, i) = (D, H, W)
    liver = vol.image[labels > 0]
    assert labels.sum() > 1000 and 30 < np.median(liver) < 200  # the label sits on enhancing liver tissue


def test_file_without_preamble_is_still_read(tmp_path):
    write_ct_series(tmp_path / "ct", [(0, 0, 0), (0, 0, 1)], ["a", "b"])
    raw = (tmp_path / "ct" / "b").read_bytes()
    (tmp_path / "ct" / "b").write_bytes(raw[128 + 4:])  # drop preamble + DICM (meta group stays)
    vol, _ = read_dicom_series(tmp_path / "ct")
    assert vol.slice_names == ("a", "b")


def test_dicom_and_chaos_folders_are_found_by_the_sources_layer(tmp_path):
    from liverrt.data.sources import find_cases, load_case, load_cases

    write_ct_series(tmp_path / "root" / "series1", [(0.0, 0.0, z) for z in (0.0, 2.0, 4.0)], ["b", "a", "c"])
    _chaos_case(tmp_path / "root")
    refs = {r.case_id: r.kind for r in find_cases(tmp_path / "root")}
    assert refs == {"series1": "dicom", "7": "chaos"}
    labelled = load_cases(tmp_path / "root", require_mask=True)
    assert [v.case_id for v in labelled.volumes] == ["7"]  # the plain series has no labels
    series = load_case(next(r for r in find_cases(tmp_path / "root") if r.kind == "dicom"))
    assert series.shape == (3, 5, 6) and series.intensity == "hu"


def test_inspect_reports_layouts_annotations_and_two_region_slices(tmp_path):
    import json

    from click.testing import CliRunner

    from liverrt.cli import cli

    _chaos_case(tmp_path / "root")
    runner = CliRunner()
    assert runner.invoke(cli, ["data", "synth", "--out", str(tmp_path / "root" / "ph"), "--cases", "1",
                               "--size", "64", "--slices", "8"]).exit_code == 0
    r = runner.invoke(cli, ["data", "inspect", str(tmp_path / "root" / "ph")])
    assert r.exit_code == 0 and "phantom_000 [nifti: image.nii.gz + mask.nii.gz]" in r.output
    r = runner.invoke(cli, ["data", "inspect", str(tmp_path / "root" / "7"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    case = report["cases"][0]
    assert case["layout"] == "chaos" and case["n_images"] == 4 and case["n_annotated"] == 4
    assert case["spacing"] == pytest.approx([2.0, 0.8, 0.7]) and isinstance(case["two_region_slices"], list)
    (tmp_path / "empty").mkdir()
    r = runner.invoke(cli, ["data", "inspect", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_ircad_case_pairs_the_liver_mask_series_with_the_ct(tmp_path):
    from liverrt.data.sources import find_cases, load_case

    case = tmp_path / "3Dircadb1.1"
    ipps = [(0.0, 0.0, z) for z in (4.0, 0.0, 2.0)]
    write_ct_series(case / "PATIENT_DICOM", ipps, ["image_0", "image_1", "image_2"])
    liver = [np.where(stored_pixels(i, 5, 6) % 3 == 0, 255, 0).astype(np.uint16) for i in range(3)]
    write_ct_series(case / "MASKS_DICOM" / "liver", ipps, ["image_0", "image_1", "image_2"], pixels=liver,
                  slope=1.0, intercept=0.0)
    (ref,) = find_cases(case)
    assert ref.kind == "ircad"
    vol = load_case(ref)
    ct, _ = read_dicom_series(case / "PATIENT_DICOM")
    # the mask marks exactly the voxels whose stored CT value is divisible by 3, slice for slice
    stored = (ct.image.astype(int) + 1024) // 2
    assert np.array_equal(vol.mask, stored % 3 == 0)


@pytest.mark.skipif(not DCMQI.is_dir(), reason="shared real-data samples not present")
def test_real_series_matches_simpleitk_voxel_for_voxel():
    import pydicom
    import SimpleITK as sitk

    uid = pydicom.dcmread(DCMQI / "01.dcm", stop_before_pixels=True).SeriesInstanceUID
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(DCMQI), uid))
    itk = reader.Execute()
    ref = sitk.GetArrayFromImage(itk)  # (k, j, i) in ITK's LPS index order
    vol, _ = read_dicom_series(DCMQI)
    direction = np.array(itk.GetDirection()).reshape(3, 3)
    spacing, origin = np.array(itk.GetSpacing()), np.array(itk.GetOrigin())
    inverse = np.linalg.inv(vol.affine)
    rng = np.random.default_rng(0)
    for _ in range(500):  # the same world point holds the same HU in both readers
        k, j, i = rng.integers(0, ref.shape[0]), rng.integers(0, 512), rng.integers(0, 512)
        lps = origin + direction @ (spacing * np.array([i, j, k]))
        w, h, d = np.round(inverse @ np.array([-lps[0], -lps[1], lps[2], 1.0]))[:3].astype(int)
        assert vol.image[d, h, w] == ref[k, j, i]
    assert vol.spacing == pytest.approx(tuple(spacing[::-1]), abs=1e-6)
