import nibabel as nib
import numpy as np
import pytest
from liverrt_test_helpers import SHARED_DATA, make_volume
from PIL import Image

from liverrt.data.io import (
    natural_key,
    read_nifti,
    read_nifti_volume,
    read_slice_folder,
    write_nifti,
    write_png_slices,
)
from liverrt.data.sources import find_cases, find_masks, load_cases, read_mask
from liverrt.errors import InputError


def test_natural_sort():
    names = ["image10", "image2", "Image1", "image11"]
    assert sorted(names, key=natural_key) == ["Image1", "image2", "image10", "image11"]


def test_nifti_round_trip_keeps_array_affine_and_spacing(tmp_path):
    vol = make_volume()
    path = write_nifti(vol.image, vol.affine, tmp_path / "ct.nii.gz")
    arr, affine, spacing = read_nifti(path)
    assert np.array_equal(arr, vol.image)
    assert np.allclose(affine, vol.affine)
    assert spacing == pytest.approx(vol.spacing)


def test_nifti_in_ras_order_is_reoriented_to_lps_display(tmp_path):
    # the same volume stored RAS (x to the right, y anterior): columns and rows flipped
    vol = make_volume()
    data = vol.image.transpose(2, 1, 0)[::-1, ::-1, :]
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), str(tmp_path / "ras.nii.gz"))
    arr, _, spacing = read_nifti(tmp_path / "ras.nii.gz")
    assert np.array_equal(arr, vol.image)
    assert spacing == pytest.approx((2.5, 0.8, 0.8))


def test_mask_with_other_shape_is_rejected(tmp_path):
    vol = make_volume()
    write_nifti(vol.image, vol.affine, tmp_path / "image.nii.gz")
    write_nifti(vol.mask[:, :-1], vol.affine, tmp_path / "mask.nii.gz")
    with pytest.raises(InputError, match="shape"):
        read_nifti_volume(tmp_path / "image.nii.gz", tmp_path / "mask.nii.gz")


def test_png_slice_folder_round_trip_and_stem_pairing(tmp_path):
    img = (np.arange(3 * 20 * 16) % 256).astype(np.uint8).reshape(3, 20, 16)
    mask = img > 128
    names = ("image2", "image10", "image1")
    write_png_slices(img, tmp_path / "images", names)
    write_png_slices(mask, tmp_path / "masks", names)
    vol = read_slice_folder(tmp_path / "images", tmp_path / "masks")
    order = [2, 0, 1]  # natural order image1, image2, image10
    assert vol.slice_names == ("image1", "image2", "image10")
    assert np.array_equal(vol.image, img[order])
    assert np.array_equal(vol.mask, mask[order])
    assert vol.intensity == "8bit"


def test_missing_mask_slice_is_named(tmp_path):
    write_png_slices(np.zeros((2, 8, 8), np.uint8), tmp_path / "images", ("a", "b"))
    write_png_slices(np.zeros((1, 8, 8), bool), tmp_path / "masks", ("a",))
    with pytest.raises(InputError, match="b.png"):
        read_slice_folder(tmp_path / "images", tmp_path / "masks")


def test_rgb_with_equal_channels_is_grey(tmp_path):
    grey = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    (tmp_path / "s").mkdir()
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "s" / "x.png")
    assert np.array_equal(read_slice_folder(tmp_path / "s").image[0], grey)


def test_sources_find_cases_skip_bad_ones_and_report(tmp_path):
    good = make_volume(case_id="good")
    (tmp_path / "good").mkdir()
    write_nifti(good.image, good.affine, tmp_path / "good" / "image.nii.gz")
    write_nifti(good.mask, good.affine, tmp_path / "good" / "mask.nii.gz")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "image.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "bad" / "mask.nii.gz").write_bytes(b"not a nifti")
    (tmp_path / "unlabelled").mkdir()
    write_nifti(good.image, good.affine, tmp_path / "unlabelled" / "image.nii.gz")
    assert [c.case_id for c in find_cases(tmp_path)] == ["bad", "good", "unlabelled"]
    result = load_cases(tmp_path, require_mask=True)
    assert [v.case_id for v in result.volumes] == ["good"]
    assert len(result.skipped) == 2
    masks = find_masks(tmp_path)
    assert sorted(masks) == ["bad", "good"]  # found by name; reading the bad one fails clearly
    with pytest.raises(InputError, match="bad"):
        read_mask(masks["bad"])
    assert np.array_equal(read_mask(tmp_path / "good" / "mask.nii.gz").mask, good.mask)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="No cases found"):
        find_cases(tmp_path)


@pytest.mark.skipif(not (SHARED_DATA / "ircad01").is_dir(), reason="shared real-data samples not present")
def test_real_ircad_volume_liver_hu_is_plausible():
    vol = read_nifti_volume(SHARED_DATA / "ircad01" / "ct.nii.gz", SHARED_DATA / "ircad01" / "liver.nii.gz")
    assert vol.image.shape[1:] == (512, 512)
    assert vol.spacing[0] == pytest.approx(1.6, abs=0.01)
    liver_hu = np.median(vol.image[vol.mask])
    assert 40 <= liver_hu <= 200
    # LPS display: the liver (patient's right) lies on the image's left half
    assert np.nonzero(vol.mask)[2].mean() < vol.image.shape[2] / 2


def test_2d_nifti_is_one_slice_and_odd_files_are_clear_errors(tmp_path):
    nib.save(nib.Nifti1Image(np.arange(12, dtype=np.int16).reshape(3, 4), np.eye(4)), str(tmp_path / "2d.nii.gz"))
    arr, _, _ = read_nifti(tmp_path / "2d.nii.gz")
    assert arr.shape == (1, 4, 3)
    rgb = np.zeros((4, 4, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(tmp_path / "rgb.nii.gz"))
    with pytest.raises(InputError, match="not RGB"):
        read_nifti(tmp_path / "rgb.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 3), np.int16), np.eye(4)), str(tmp_path / "4d.nii.gz"))
    with pytest.raises(InputError, match="3D volume"):
        read_nifti(tmp_path / "4d.nii.gz")


def test_nan_voxels_become_the_bottom_of_the_window():
    from liverrt.data.preprocess import PreprocessSpec, normalize

    x = normalize(np.array([[[np.nan, 50.0, np.inf]]]), "hu", PreprocessSpec())
    assert np.allclose(x, [[[0.0, 0.5, 1.0]]])


@pytest.mark.skipif(not (SHARED_DATA / "amos").is_dir(), reason="shared real-data samples not present")
@pytest.mark.parametrize("name", ["amos", "chaos_jpg"])
def test_real_8bit_slice_folders_pair_masks_with_their_images(name):
    vol = read_slice_folder(SHARED_DATA / name / "images", SHARED_DATA / name / "masks")
    assert vol.intensity == "8bit" and vol.image.shape[1:] == (512, 512)
    img = vol.image.astype(float)
    body = (img > 20) & ~vol.mask
    assert vol.mask.reshape(vol.shape[0], -1).any(axis=1).all()  # every slice has liver
    # enhanced liver is brighter than the rest of the body, and on the image left (patient's right)
    assert img[vol.mask].mean() > img[body].mean() + 20
    assert np.nonzero(vol.mask)[2].mean() < vol.image.shape[2] / 2
