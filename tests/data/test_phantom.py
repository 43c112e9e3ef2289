"""The synthetic phantom: determinism, label geometry, CT-like content and the dataset files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from liverrt.data.io import list_slice_images, read_nifti
from liverrt.data.phantom import (
    PhantomConfig,
    case_seed,
    synth_case,
    synth_dataset,
    window_to_uint8,
)
from liverrt.data.volume import default_affine

SMALL = PhantomConfig(size=112, slices=14)
EIGHT = np.ones((3, 3), dtype=bool)


@pytest.fixture(scope="module")
def case():
    return synth_case(3, SMALL, case_id="c3")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom")
    calls = []
    folders = synth_dataset(out, 2, seed=7, config=SMALL, on_case=lambda k, n: calls.append((k, n)))
    return out, folders, calls


def _components(sl: np.ndarray) -> int:
    return ndimage.label(sl, structure=EIGHT)[1]


# ----------------------------------------------------------------------------- volume contract


def test_volume_contract(case):
    D, H, W = SMALL.slices, SMALL.size, SMALL.size
    assert case.shape == (D, H, W)
    assert case.image.dtype == np.int16 and case.intensity == "hu"
    assert case.image.min() >= -1024 and case.image.max() <= 3071
    assert case.mask.dtype == bool and case.mask.shape == case.shape
    assert case.instances.dtype in (np.uint8, np.uint16)
    px = SMALL.fov_mm / SMALL.size
    assert case.spacing == pytest.approx((SMALL.slice_thickness_mm, px, px))
    np.testing.assert_allclose(case.affine, default_affine(case.spacing))
    assert case.slice_names == tuple(f"slice_{i:03d}" for i in range(D))
    assert case.case_id == "c3" and case.source == "phantom"


def test_config_validation():
    with pytest.raises(ValueError, match="two_region_fraction"):
        PhantomConfig(two_region_fraction=1.5)
    with pytest.raises(ValueError, match="size"):
        PhantomConfig(size=8)
    with pytest.raises(ValueError, match="non-negative"):
        synth_case(-1, SMALL)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_case(case):
    again = synth_case(3, SMALL, case_id="c3")
    np.testing.assert_array_equal(case.image, again.image)
    np.testing.assert_array_equal(case.mask, again.mask)
    np.testing.assert_array_equal(case.instances, again.instances)


def test_different_seed_different_case(case):
    other = synth_case(4, SMALL)
    assert not np.array_equal(case.image, other.image)
    assert not np.array_equal(case.mask, other.mask)


def test_case_k_does_not_depend_on_case_count(tmp_path):
    a = synth_dataset(tmp_path / "a", 2, seed=11, config=SMALL)
    b = synth_dataset(tmp_path / "b", 3, seed=11, config=SMALL)
    for k in range(2):
        for name in ("image.nii.gz", "mask.nii.gz"):
            np.testing.assert_array_equal(read_nifti(a[k] / name)[0], read_nifti(b[k] / name)[0])
    ja = json.loads((tmp_path / "a" / "phantom.json").read_text())
    jb = json.loads((tmp_path / "b" / "phantom.json").read_text())
    assert ja["cases"] == jb["cases"][:2]
    vol = synth_case(case_seed(11, 1), SMALL)
    np.testing.assert_array_equal(read_nifti(a[1] / "image.nii.gz")[0], vol.image)


def test_dataset_files_are_reproducible(dataset, tmp_path):
    out, folders, _ = dataset
    again = synth_dataset(tmp_path, 2, seed=7, config=SMALL)
    for f1, f2 in zip(folders, again, strict=True):
        for name in ("image.nii.gz", "mask.nii.gz"):
            np.testing.assert_array_equal(read_nifti(f1 / name)[0], read_nifti(f2 / name)[0])
    assert (
        json.loads((out / "phantom.json").read_text())["cases"]
        == json.loads((tmp_path / "phantom.json").read_text())["cases"]
    )


# ----------------------------------------------------------------------------- label geometry


def test_liver_on_image_left_with_liver_hu(case):
    D, _, W = case.shape
    per_slice = case.mask.reshape(D, -1).any(axis=1)
    assert per_slice.sum() >= D // 2
    cols = np.nonzero(case.mask)[2]
    assert cols.mean() < W / 2  # patient's right is on the image left
    assert 40 <= np.median(case.image[case.mask]) <= 140


def test_two_region_slices_match_instances(case):
    counts = [_components(sl) for sl in case.mask]
    assert max(counts) >= 2
    assert [int(sl.max()) for sl in case.instances] == counts
    np.testing.assert_array_equal(case.instances > 0, case.mask)
    liver_slices = sum(c > 0 for c in counts)
    two = sum(c >= 2 for c in counts)
    assert 1 <= two <= 0.5 * liver_slices


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_region_gap_holds_at_128(seed):
    vol = synth_case(seed, PhantomConfig(size=128, slices=12))
    split = [d for d in range(vol.shape[0]) if vol.instances[d].max() >= 2]
    assert split
    for d in split:
        # >= 2 background pixels between regions: growing one by 2 px never reaches another
        grown = ndimage.binary_dilation(vol.instances[d] == 1, structure=np.ones((5, 5), bool))
        assert not (grown & (vol.instances[d] >= 2)).any()


def test_no_two_region_slices_when_fraction_is_zero():
    vol = synth_case(5, PhantomConfig(size=96, slices=12, two_region_fraction=0.0))
    assert vol.instances.max() == 1


def test_lesions_are_inside_the_mask():
    cfg = PhantomConfig(size=112, slices=14, noise_hu=0.0)
    with_lesions = synth_case(2, cfg)
    without = synth_case(2, PhantomConfig(size=112, slices=14, noise_hu=0.0, lesions=False))
    np.testing.assert_array_equal(with_lesions.mask, without.mask)  # lesions are part of the liver
    darker = with_lesions.image.astype(np.int32) < without.image.astype(np.int32) - 20
    assert darker.any()
    assert with_lesions.mask[darker].all()
    assert with_lesions.image[darker].min() < 45


# ----------------------------------------------------------------------------- CT-like content


def test_air_outside_bone_and_stomach_gas(case):
    img = case.image
    corners = np.concatenate([img[:, :4, :4].ravel(), img[:, :4, -4:].ravel()])
    assert corners.max() < -900
    assert img.max() > 300  # spine
    body = ndimage.binary_fill_holes(img > -500, structure=np.ones((1, 3, 3), bool))
    interior = ndimage.binary_erosion(body, structure=np.ones((1, 9, 9), bool))
    gas = (img < -900) & interior
    assert gas.reshape(case.shape[0], -1).any(axis=1).sum() >= 2


def test_window_to_uint8():
    hu = np.array([-1000, -150, 50, 250, 3000], dtype=np.int16)
    np.testing.assert_array_equal(window_to_uint8(hu), [0, 0, 128, 255, 255])
    assert window_to_uint8(hu).dtype == np.uint8


# ----------------------------------------------------------------------------- dataset files


def test_dataset_layout_and_manifest(dataset):
    out, folders, calls = dataset
    D, H, W = SMALL.slices, SMALL.size, SMALL.size
    assert [f.name for f in folders] == ["phantom_000", "phantom_001"]
    assert calls == [(0, 2), (1, 2)]
    manifest = json.loads((out / "phantom.json").read_text())
    assert manifest["generator"] == "liverrt phantom" and manifest["version"] == 1
    assert manifest["seed"] == 7 and manifest["config"]["size"] == SMALL.size
    assert "not a substitute" in manifest["note"]
    for folder, entry in zip(folders, manifest["cases"], strict=True):
        image, affine, spacing = read_nifti(folder / "image.nii.gz")
        mask, mask_affine, _ = read_nifti(folder / "mask.nii.gz")
        assert image.dtype == np.int16 and image.shape == (D, H, W)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        px = SMALL.fov_mm / SMALL.size
        assert spacing == pytest.approx((SMALL.slice_thickness_mm, px, px))
        np.testing.assert_allclose(affine, default_affine(spacing), atol=1e-5)
        np.testing.assert_allclose(mask_affine, affine)
        assert entry["id"] == folder.name and entry["shape"] == [D, H, W]
        assert entry["spacing"] == pytest.approx(list(spacing))
        counts = [_components(sl) for sl in mask.astype(bool)]
        assert entry["liver_slices"] == sum(c > 0 for c in counts)
        assert entry["two_region_slices"] == [d for d, c in enumerate(counts) if c >= 2]
        assert entry["two_region_slices"]
        assert 1 <= entry["lesions"] <= 4
        _check_png_folders(folder, image, mask)


def _check_png_folders(folder: Path, image: np.ndarray, mask: np.ndarray) -> None:
    D = image.shape[0]
    pngs = list_slice_images(folder / "images")
    masks = list_slice_images(folder / "masks")
    assert [p.stem for p in pngs] == [f"slice_{i:03d}" for i in range(D)]
    assert [p.stem for p in masks] == [p.stem for p in pngs]
    for d in (0, D // 2):
        with Image.open(pngs[d]) as im:
            assert im.mode == "L"
            np.testing.assert_array_equal(np.asarray(im), window_to_uint8(image[d]))
        with Image.open(masks[d]) as im:
            arr = np.asarray(im)
            assert im.mode == "L" and set(np.unique(arr)) <= {0, 255}
            np.testing.assert_array_equal(arr > 0, mask[d] > 0)
