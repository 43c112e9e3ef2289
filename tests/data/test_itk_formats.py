"""NRRD and MetaImage volumes are read exactly as a NIfTI of the same data and geometry (SimpleITK writes all)."""

import numpy as np
import pytest
import SimpleITK as sitk
from liverrt_test_helpers import SHARED_DATA

from liverrt.data.io import load_nifti, nifti_spacing, read_nifti, write_nifti
from liverrt.data.sources import find_cases, find_masks, load_case, read_mask
from liverrt.errors import InputError

SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


DIRECTIONS = {  # ITK direction matrices (LPS)
    "identity": np.eye(3),
    "ras-stored": np.diag([-1.0, -1.0, 1.0]),  # x toward the right, y anterior: flipped to LPS on reading
    "sagittal": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique": _rotation(2, 30.0) @ _rotation(0, 10.0),
}


def _image(direction, *, values=None) -> sitk.Image:
    """A (k, j, i) = (4, 5, 6) int16 image with anisotropic spacing, an origin and ``direction``."""
    data = np.arange(120, dtype=np.int16).reshape(4, 5, 6) if values is None else values
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(np.asarray(direction, float).ravel().tolist())
    return image


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
def test_nrrd_and_metaimage_read_as_the_nifti_of_the_same_data(tmp_path, direction):
    image = _image(direction)
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    ref_array, ref_affine, ref_spacing = read_nifti(tmp_path / "ct.nii.gz")
    for suffix in SUFFIXES:
        sitk.WriteImage(image, str(tmp_path / f"ct{suffix}"))
        array, affine, spacing = read_nifti(tmp_path / f"ct{suffix}")
        assert np.array_equal(array, ref_array), suffix
        assert np.allclose(affine, ref_affine, atol=1e-5), suffix  # NIfTI stores its affine in float32
        assert spacing == pytest.approx(ref_spacing, abs=1e-5), suffix
        assert nifti_spacing(tmp_path / f"ct{suffix}") == pytest.approx(spacing), suffix  # from the header alone


def test_the_oblique_affine_is_kept_and_the_axes_are_the_nearest_lps_ones(tmp_path):
    direction = DIRECTIONS["oblique"]
    sitk.WriteImage(_image(direction), str(tmp_path / "ct.nrrd"))
    d = load_nifti(tmp_path / "ct.nrrd")
    lps_columns = np.diag([-1.0, -1.0, 1.0]) @ d.affine[:3, :3]  # back to LPS: (w, h, d) ~ +x, +y, +z
    assert (np.argmax(np.abs(lps_columns), axis=0) == [0, 1, 2]).all()
    assert (np.diag(lps_columns) > 0).all()
    assert np.allclose(d.source_affine[:3, :3], np.diag([-1.0, -1.0, 1.0]) @ direction @ np.diag([0.7, 0.8, 2.5]))


def test_an_nrrd_input_is_a_case_and_its_mask_is_written_back_on_its_own_grid(tmp_path):
    image = _image(DIRECTIONS["ras-stored"], values=np.random.default_rng(0).normal(0, 300, (4, 5, 6)).astype(np.int16))
    sitk.WriteImage(image, str(tmp_path / "abdomen.nrrd"))
    (ref,) = find_cases(tmp_path / "abdomen.nrrd")
    assert (ref.case_id, ref.kind) == ("abdomen", "nifti")
    vol = load_case(ref, with_mask=False)
    assert vol.image.shape == (4, 5, 6) and vol.intensity == "hu"
    out = write_nifti(vol.image, vol.source_affine, tmp_path / "back.nii.gz", to_source=vol.to_source)
    back = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))  # voxel for voxel
    assert np.allclose(back.GetDirection(), image.GetDirection()) and np.allclose(back.GetOrigin(), image.GetOrigin())


def test_case_folders_and_mask_folders_find_nrrd_and_metaimage_files(tmp_path):
    mask = (np.arange(120).reshape(4, 5, 6) % 3 == 0).astype(np.uint8)
    (tmp_path / "c1").mkdir()
    (tmp_path / "root").mkdir()
    ct = np.random.default_rng(0).normal(0, 300, (4, 5, 6)).astype(np.int16)
    sitk.WriteImage(_image(np.eye(3), values=ct), str(tmp_path / "c1" / "image.mha"))
    sitk.WriteImage(_image(np.eye(3), values=mask), str(tmp_path / "c1" / "mask.nrrd"))
    (ref,) = find_cases(tmp_path / "c1")
    assert ref.image.name == "image.mha" and ref.mask.name == "mask.nrrd"
    assert np.array_equal(load_case(ref).mask, read_mask(tmp_path / "c1" / "mask.nrrd").mask)
    assert find_masks(tmp_path / "c1") == {"c1": tmp_path / "c1" / "mask.nrrd"}
    sitk.WriteImage(_image(np.eye(3), values=mask), str(tmp_path / "root" / "c2.mhd"))
    assert find_masks(tmp_path / "root") == {"c2": tmp_path / "root" / "c2.mhd"}  # its .raw is not a case


def test_an_nrrd_image_is_not_a_mask_and_damaged_files_are_one_line_errors(tmp_path):
    sitk.WriteImage(_image(np.eye(3), values=np.random.default_rng(0).normal(0, 300, (4, 5, 6)).astype(np.int16)),
                    str(tmp_path / "ct.nrrd"))
    with pytest.raises(InputError, match=r"NRRD mask .*ct.nrrd looks like an image, not a mask"):
        read_mask(tmp_path / "ct.nrrd")
    (tmp_path / "cut.nrrd").write_bytes((tmp_path / "ct.nrrd").read_bytes()[:200])
    (tmp_path / "junk.mha").write_bytes(b"not an image\n" * 30)
    for name, fmt in (("cut.nrrd", "NRRD"), ("junk.mha", "MetaImage")):
        with pytest.raises(InputError, match=f"Cannot read {fmt} file .*{name}") as err:
            read_nifti(tmp_path / name)
        assert "\n" not in str(err.value) and ".cxx" not in str(err.value)
    rgb = sitk.Compose(*[sitk.GetImageFromArray(np.zeros((2, 3, 4), np.uint8))] * 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(InputError, match=r"got 3 values per voxel .* expected grey-scale numbers \(not RGB\)"):
        read_nifti(tmp_path / "rgb.nrrd")


def test_a_2d_metaimage_is_one_slice_like_a_2d_nifti(tmp_path):
    image = sitk.GetImageFromArray(np.arange(12, dtype=np.int16).reshape(3, 4))
    image.SetSpacing((0.5, 0.6))
    for suffix in (".nii.gz", ".mha"):
        sitk.WriteImage(image, str(tmp_path / f"slice{suffix}"))
    (a, affine_a, _), (b, affine_b, _) = (read_nifti(tmp_path / f"slice{s}") for s in (".nii.gz", ".mha"))
    assert a.shape == (1, 3, 4) and np.array_equal(a, b) and np.allclose(affine_a, affine_b, atol=1e-6)


@pytest.mark.skipif(not (SHARED_DATA / "dcmqi_ct3slice").is_dir(), reason="shared real-data samples not present")
def test_the_real_dcmqi_nrrd_is_on_its_dicom_series_grid():
    from liverrt.data.dicom import read_dicom_series

    vol, _ = read_dicom_series(SHARED_DATA / "dcmqi_ct3slice")
    mask = read_mask(SHARED_DATA / "dcmqi_ct3slice" / "liver_seg.nrrd")
    assert mask.mask.shape == vol.shape and mask.mask.any()
    assert np.allclose(mask.affine, vol.affine, atol=1e-4) and mask.spacing == pytest.approx(vol.spacing, abs=1e-4)
