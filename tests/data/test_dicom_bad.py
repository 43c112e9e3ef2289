"""Damaged and malformed DICOM input: one-line InputErrors that name the file and the tag, never a silently lost slice.

Every damaged file is made here from a good synthetic series (no binary files are shipped).
"""

import numpy as np
import pydicom
import pytest
from liverrt_test_helpers import write_ct_series
from PIL import Image

from liverrt.data.dicom import read_chaos_case, read_dicom_series, series_spacing
from liverrt.errors import InputError

NAMES = ["a.dcm", "b.dcm", "c.dcm"]


def _series(folder, names=NAMES):
    write_ct_series(folder, [(0.0, 0.0, 2.0 * i) for i in range(len(names))], names)
    return folder


def _edit(path, **changes):
    """Rewrite one file with some elements changed (None deletes the element)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def _patch(path, old: bytes, new: bytes):
    """Replace an element's text in place (same length), for values pydicom refuses to write."""
    raw = path.read_bytes()
    assert raw.count(old) == 1 and len(old) == len(new)
    path.write_bytes(raw.replace(old, new))


def _assert_one_line(err, folder, *needles):
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    assert len(text.replace(str(folder), "")) < 250, text
    for needle in needles:
        assert needle in text, (needle, text)


def _truncate(path):
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _garble(path):
    """Keep the preamble and the DICM marker, overwrite everything after them."""
    raw = path.read_bytes()
    junk = np.random.default_rng(0).integers(0, 256, len(raw) - 132, dtype=np.uint8).tobytes()
    path.write_bytes(raw[:132] + junk)


# ----------------------------------------------------------------------------- 1. malformed header elements

MALFORMED = {
    "no-rows": (lambda p: _edit(p, Rows=None), "Rows (0028,0010)", "is missing"),
    "no-columns": (lambda p: _edit(p, Columns=None), "Columns (0028,0011)", "is missing"),
    "position-2-values": (lambda p: _edit(p, ImagePositionPatient=[1.0, 2.0]), "ImagePositionPatient (0020,0032)",
                          "[1.0, 2.0]"),
    "spacing-zero": (lambda p: _edit(p, PixelSpacing=[0.0, 0.7]), "PixelSpacing (0028,0030)", "[0.0, 0.7]"),
    "spacing-negative": (lambda p: _edit(p, PixelSpacing=[-0.8, 0.7]), "PixelSpacing (0028,0030)", "-0.8"),
    "spacing-text": (lambda p: _patch(p, b"0.8\\0.7", b"abc\\0.7"), "PixelSpacing (0028,0030)", "abc"),
    "spacing-one-value": (lambda p: _edit(p, PixelSpacing=[0.8]), "PixelSpacing (0028,0030)", "is 0.8; expected 2"),
    "orientation-5-values": (lambda p: _edit(p, ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0]),
                             "ImageOrientationPatient (0020,0037)", "6 numbers"),
    "orientation-zero-vector": (lambda p: _edit(p, ImageOrientationPatient=[0.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
                                "ImageOrientationPatient (0020,0037)", "perpendicular"),
    "orientation-parallel": (lambda p: _edit(p, ImageOrientationPatient=[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
                             "ImageOrientationPatient (0020,0037)", "perpendicular"),
    "slope-text": (lambda p: _patch(p, b"\x53\x10DS\x04\x002.0 ", b"\x53\x10DS\x04\x00two "),
                   "RescaleSlope (0028,1053)", "'two'"),
    "intercept-text": (lambda p: _patch(p, b"-1024.0 ", b"-1k24.0 "), "RescaleIntercept (0028,1052)", "-1k24.0"),
    "bits-12": (lambda p: _edit(p, BitsAllocated=12), "BitsAllocated (0028,0100)", "is 12; expected 8, 16 or 32"),
    "pixels-short": (lambda p: _edit(p, PixelData=b"\0" * 30), "PixelData (7FE0,0010)", "is 30 bytes; expected 60"),
    "pixels-long": (lambda p: _edit(p, PixelData=b"\0" * 120), "PixelData (7FE0,0010)", "is 120 bytes"),
}


@pytest.mark.parametrize("variant", list(MALFORMED))
def test_malformed_header_element_is_a_one_line_input_error(tmp_path, variant):
    damage, tag, detail = MALFORMED[variant]
    folder = _series(tmp_path / "ct")
    damage(folder / "b.dcm")  # a middle slice: every slice is checked, not only the first
    with pytest.raises(InputError, match=r"b\.dcm: " + tag.replace("(", r"\(").replace(")", r"\)")) as err:
        read_dicom_series(folder)
    _assert_one_line(err, folder, "b.dcm", tag, detail, "expected")


@pytest.mark.parametrize("variant", ["position-2-values", "spacing-zero", "spacing-text", "orientation-parallel"])
def test_header_only_spacing_refuses_the_same_geometry_errors(tmp_path, variant):
    damage, tag, _ = MALFORMED[variant]
    folder = _series(tmp_path / "ct")
    damage(folder / "b.dcm")
    with pytest.raises(InputError, match="b.dcm") as err:
        series_spacing(folder)
    _assert_one_line(err, folder, tag)


# ----------------------------------------------------------------------------- 2. corrupt files


@pytest.mark.parametrize("damage", [_truncate, _garble], ids=["truncated", "garbled"])
@pytest.mark.parametrize("name", ["a.dcm", "b.dcm", "c.dcm"], ids=["first", "middle", "last"])
def test_corrupt_dicom_file_is_an_input_error_naming_it(tmp_path, name, damage):
    folder = _series(tmp_path / "ct")
    damage(folder / name)
    with pytest.raises(InputError, match="cannot be read as DICOM") as err:
        read_dicom_series(folder)
    _assert_one_line(err, folder, str(folder / name), "remove or replace it")
    with pytest.raises(InputError, match="cannot be read as DICOM"):
        series_spacing(folder)


def test_corrupt_file_without_suffix_but_with_the_dicm_marker_is_an_input_error(tmp_path):
    folder = _series(tmp_path / "ct", ["IM1", "IM2", "IM3"])
    _garble(folder / "IM3")
    with pytest.raises(InputError, match="IM3 cannot be read as DICOM") as err:
        read_dicom_series(folder)
    _assert_one_line(err, folder, "IM3")


def test_stray_non_dicom_file_is_a_warning_naming_it_and_no_slice_is_lost(tmp_path):
    folder = _series(tmp_path / "ct", ["IM1", "IM2", "IM3"])
    (folder / "notes").write_text("scanned on the old console\n")  # no suffix: could have been a slice
    (folder / "IM2.bak").write_bytes(b"\0" * 40)
    for quiet in ("README.txt", "info.json", "DICOMDIR", "Thumbs.db", ".DS_Store", "liver.nrrd"):
        (folder / quiet).write_bytes(b"not a slice")
    vol, warnings = read_dicom_series(folder)
    assert vol.shape == (3, 5, 6) and vol.slice_names == ("IM1", "IM2", "IM3")
    assert len(warnings) == 2, warnings
    assert any("notes" in w and "not DICOM" in w for w in warnings)
    assert any("IM2.bak" in w and "not DICOM" in w for w in warnings)
    assert all("\n" not in w for w in warnings)


def test_folder_of_only_stray_files_says_what_was_skipped(tmp_path):
    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "notes").write_text("x")
    with pytest.raises(InputError, match="No DICOM image slices .*1 non-DICOM files were skipped, e.g. notes"):
        read_dicom_series(tmp_path / "ct")


# ----------------------------------------------------------------------------- 3. no pixel data


def test_series_without_pixel_data_says_so(tmp_path):
    folder = _series(tmp_path / "ct")
    for name in NAMES:
        _edit(folder / name, PixelData=None)
    with pytest.raises(InputError, match="PixelData .* is missing") as err:
        read_dicom_series(folder)
    _assert_one_line(err, folder, str(folder / "a.dcm"), "PixelData (7FE0,0010)", "3 of 3", "no pixel data")
    assert "without a slice position" not in str(err.value)


def test_one_slice_without_pixel_data_is_not_dropped(tmp_path):
    folder = _series(tmp_path / "ct")
    _edit(folder / "c.dcm", PixelData=None)
    with pytest.raises(InputError, match=r"c\.dcm: PixelData \(7FE0,0010\) is missing \(1 of 3") as err:
        read_dicom_series(folder)
    _assert_one_line(err, folder, "c.dcm")


# ----------------------------------------------------------------------------- 4. CHAOS and IRCADb


def test_chaos_case_with_a_corrupt_or_malformed_slice_is_an_input_error(tmp_path):
    case = tmp_path / "7"
    names = [f"i{i:04d},0000b.dcm" for i in range(3)]
    _series(case / "DICOM_anon", names)
    (case / "Ground").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((5, 6), np.uint8)).save(case / "Ground" / f"liver_GT_{i:03d}.png")
    read_chaos_case(case)  # reads while intact
    _truncate(case / "DICOM_anon" / names[2])
    with pytest.raises(InputError, match="cannot be read as DICOM") as err:
        read_chaos_case(case)
    _assert_one_line(err, case, names[2])
    _series(case / "DICOM_anon", names)  # rewrite, then break a header element
    _edit(case / "DICOM_anon" / names[0], PixelSpacing=[0.8, 0.0])
    with pytest.raises(InputError, match="PixelSpacing") as err:
        read_chaos_case(case)
    _assert_one_line(err, case, names[0], "PixelSpacing (0028,0030)")


def test_ircad_mask_series_with_a_corrupt_or_malformed_file_is_an_input_error(tmp_path):
    from liverrt.data.sources import find_cases, load_case

    case = tmp_path / "3Dircadb1.1"
    names = ["image_0", "image_1", "image_2"]
    _series(case / "PATIENT_DICOM", names)
    masks = case / "MASKS_DICOM" / "liver"
    _series(masks, names)
    (ref,) = find_cases(case)
    assert load_case(ref).mask is not None
    _garble(masks / "image_1")
    with pytest.raises(InputError, match="cannot be read as DICOM") as err:
        load_case(ref)
    _assert_one_line(err, case, str(masks / "image_1"))
    _series(masks, names)
    _edit(masks / "image_2", Rows=None)
    with pytest.raises(InputError, match=r"image_2: Rows \(0028,0010\) is missing") as err:
        load_case(ref)
    _assert_one_line(err, case, "image_2")


def test_cli_convert_reports_a_malformed_slice_on_one_line_with_exit_2(tmp_path):
    from click.testing import CliRunner

    from liverrt.cli import cli

    folder = _series(tmp_path / "src" / "ct")
    _edit(folder / "b.dcm", ImagePositionPatient=[1.0, 2.0])
    r = CliRunner().invoke(cli, ["data", "convert", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                                 "--to", "nifti"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "ImagePositionPatient (0020,0032)" in r.output and "b.dcm" in r.output
