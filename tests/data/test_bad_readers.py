"""Damaged or unusual inputs: refused with one line naming the file, or converted with a warning.

Every damaged file is built here; none is shipped.
"""

import logging

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import make_volume
from PIL import Image

from liverrt.data.io import (
    nifti_spacing,
    read_nifti,
    read_nifti_volume,
    read_slice_folder,
    read_slice_image,
)
from liverrt.data.sources import read_mask
from liverrt.data.volume import finite_image
from liverrt.errors import InputError


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def _ct(tmp_path):
    """A small volume and its image as float32 (the dtype that can hold NaN)."""
    vol = make_volume(shape=(3, 16, 12))
    return vol, vol.image.astype(np.float32)


def _save(data_dhw, affine, path):
    """A (D, H, W) array as a NIfTI file with a plain RAS+ affine (written without liverrt)."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data_dhw.transpose(2, 1, 0)), affine), str(path))
    return path


LPS_AFFINE = np.diag([-0.8, -0.8, 2.5, 1.0])


# ----------------------------------------------------------------------------- non-finite voxels


def test_some_nan_and_inf_voxels_are_replaced_with_a_warning(tmp_path, caplog):
    _, data = _ct(tmp_path)
    lo, hi = float(data.min()), float(data.max())
    data[0, 0, :3] = [np.nan, -np.inf, np.inf]
    data[1, 2, 2] = np.nan
    path = _save(data, LPS_AFFINE, tmp_path / "partly_nan.nii.gz")
    with caplog.at_level(logging.WARNING):
        vol = read_nifti_volume(path)
    assert np.isfinite(vol.image).all()
    assert vol.image[0, 0, 0] == lo and vol.image[0, 0, 1] == lo and vol.image[0, 0, 2] == hi
    assert vol.image[1, 2, 2] == lo
    ok = np.isfinite(data)
    assert np.array_equal(vol.image[ok], data[ok])  # the finite voxels are untouched
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "partly_nan.nii.gz" in text and "4 of" in text and "NaN 2" in text and "+Inf 1" in text


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_volume_without_any_finite_voxel_is_refused(tmp_path, value):
    _, data = _ct(tmp_path)
    data[:] = value
    path = _save(data, LPS_AFFINE, tmp_path / "all_bad.nii.gz")
    with pytest.raises(InputError) as err:
        read_nifti_volume(path)
    assert "all_bad.nii.gz" in _one_line(err) and "NaN or infinite" in str(err.value)


def test_finite_image_leaves_integer_and_finite_images_alone():
    ints = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    assert finite_image(ints, "x") is ints
    floats = ints.astype(np.float32)
    assert finite_image(floats, "x") is floats


def test_nan_in_a_nifti_mask_is_refused(tmp_path):
    vol, data = _ct(tmp_path)
    image = _save(data, LPS_AFFINE, tmp_path / "image.nii.gz")
    labels = vol.mask.astype(np.float32)
    labels[1, 1, 1] = np.nan
    mask = _save(labels, LPS_AFFINE, tmp_path / "mask.nii.gz")
    with pytest.raises(InputError) as err:
        read_nifti_volume(image, mask)
    assert "mask.nii.gz" in _one_line(err) and "1 of" in str(err.value)
    with pytest.raises(InputError, match="mask.nii.gz"):
        read_mask(mask)
    assert read_nifti(mask)[0].shape == labels.shape  # plain read: values as stored


# ----------------------------------------------------------------------------- affines


def test_nan_affine_is_refused_naming_the_file(tmp_path):
    _, data = _ct(tmp_path)
    affine = LPS_AFFINE.copy()
    affine[0, 3] = np.nan
    path = _save(data, affine, tmp_path / "nan_affine.nii.gz")
    for read in (read_nifti_volume, read_nifti, nifti_spacing):
        with pytest.raises(InputError) as err:
            read(path)
        assert "nan_affine.nii.gz" in _one_line(err) and "non-finite" in str(err.value)


def test_singular_affine_is_refused_naming_the_file(tmp_path):
    _, data = _ct(tmp_path)
    img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), LPS_AFFINE)
    hdr = img.header.copy()
    hdr["srow_x"] = [0.0, 0.0, 0.0, 0.0]  # zero voxel size along x (nibabel refuses to build such an affine)
    hdr["sform_code"] = 1
    path = tmp_path / "singular.nii.gz"
    nib.save(nib.Nifti1Image(img.dataobj, None, hdr), str(path))
    assert nib.load(str(path)).affine[0, 0] == 0.0
    for read in (read_nifti_volume, nifti_spacing):
        with pytest.raises(InputError) as err:
            read(path)
        assert "singular.nii.gz" in _one_line(err) and "singular" in str(err.value).replace("singular.nii", "")


# ----------------------------------------------------------------------------- eval of non-finite masks


def test_eval_refuses_a_nan_prediction(tmp_path):
    from liverrt.cli import cli
    from liverrt.evaluation import evaluate

    gt = make_volume(shape=(3, 24, 24))
    _save(gt.mask.astype(np.uint8), LPS_AFFINE, tmp_path / "g.nii.gz")
    _save(np.full(gt.shape, np.nan, np.float32), LPS_AFFINE, tmp_path / "p.nii.gz")
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz")
    assert "p.nii.gz" in _one_line(err) and "NaN or infinite" in str(err.value)
    r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "p.nii.gz"), "--gt", str(tmp_path / "g.nii.gz")])
    assert r.exit_code == 2 and "p.nii.gz" in r.output and "Traceback" not in r.output
    # a ground truth with one NaN voxel: that case is refused, the others are still scored
    for case in ("c1", "c2"):
        labels = gt.mask.astype(np.float32)
        if case == "c2":
            labels[0, 0, 0] = np.nan
        for side, data in (("pred", gt.mask.astype(np.uint8)), ("gt", labels)):
            (tmp_path / side / case).mkdir(parents=True)
            _save(data, LPS_AFFINE, tmp_path / side / case / "mask.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert [c["id"] for c in result["cases"]] == ["c1"]
    assert result["skipped"][0]["id"] == "c2" and "NaN or infinite" in result["skipped"][0]["reason"]


# ----------------------------------------------------------------------------- PNG/JPG modes


def _palette_png(path, indices, palette_rgb, transparency=None):
    im = Image.fromarray(indices.astype(np.uint8), mode="P")
    im.putpalette(np.asarray(palette_rgb, np.uint8).ravel().tolist())
    if transparency is not None:
        im.info["transparency"] = transparency
        im.save(path, transparency=transparency)
    else:
        im.save(path)
    return path


def test_palette_png_is_read_through_its_palette_not_its_indices(tmp_path):
    rng = np.random.default_rng(0)
    indices = rng.integers(0, 4, (8, 10))
    grey_levels = np.array([200, 10, 255, 90])  # index i is grey level grey_levels[i]
    path = _palette_png(tmp_path / "grey.png", indices, np.repeat(grey_levels[:, None], 3, axis=1))
    assert Image.open(path).mode == "P"
    out = read_slice_image(path)
    assert out.dtype == np.uint8 and np.array_equal(out, grey_levels[indices])
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])
    coloured = _palette_png(tmp_path / "coloured.png", indices, colours)
    with pytest.raises(InputError) as err:
        read_slice_image(coloured)
    assert "coloured.png" in _one_line(err) and "palette" in str(err.value)
    with pytest.raises(InputError, match="coloured.png"):
        read_slice_image(coloured, as_mask=True)
    # a palette mask whose background is black and whose liver is white
    mask = _palette_png(tmp_path / "mask.png", indices % 2, [[0, 0, 0], [255, 255, 255]])
    assert np.array_equal(read_slice_image(mask, as_mask=True), indices % 2 == 1)


def test_palette_png_with_transparency_is_refused(tmp_path):
    indices = np.array([[0, 1], [1, 1]])
    path = _palette_png(tmp_path / "transparent.png", indices, [[0, 0, 0], [128, 128, 128]], transparency=0)
    with pytest.raises(InputError) as err:
        read_slice_image(path)
    assert "transparent.png" in _one_line(err) and "1 transparent" in str(err.value)


def test_cmyk_jpeg_becomes_grey_with_a_warning(tmp_path, caplog):
    k = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 3] = k  # black ink only: grey 255 - k
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(cmyk, mode="CMYK").save(path, quality=100)
    assert Image.open(path).mode == "CMYK"
    with caplog.at_level(logging.WARNING):
        out = read_slice_image(path)
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    assert np.abs(out.astype(int) - (255 - k.astype(int))).max() <= 8  # not the ink values
    assert any("cmyk.jpg" in r.getMessage() and "CMYK" in r.getMessage() for r in caplog.records)


def test_alpha_is_dropped_only_when_fully_opaque(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (6, 7)).astype(np.uint8)
    opaque = np.full_like(grey, 255)
    Image.fromarray(np.dstack([grey, grey, grey, opaque]), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([grey, opaque]), mode="LA").save(tmp_path / "la.png")
    assert np.array_equal(read_slice_image(tmp_path / "rgba.png"), grey)
    assert np.array_equal(read_slice_image(tmp_path / "la.png"), grey)
    half = opaque.copy()
    half[0, :3] = 128
    Image.fromarray(np.dstack([grey, grey, grey, half]), mode="RGBA").save(tmp_path / "see_through.png")
    Image.fromarray(np.dstack([grey, half]), mode="LA").save(tmp_path / "see_through_la.png")
    for name in ("see_through.png", "see_through_la.png"):
        with pytest.raises(InputError) as err:
            read_slice_image(tmp_path / name)
        assert name in _one_line(err) and "3 transparent pixels" in str(err.value)


def test_one_bit_png_masks_and_images(tmp_path):
    mask = np.zeros((3, 8, 8), bool)
    mask[:, 2:6, 1:5] = True
    mask[1] = False
    for d in range(3):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * d, np.uint8)).save(tmp_path / "images" / f"s{d}.png")
        Image.fromarray(mask[d]).convert("1").save(tmp_path / "masks" / f"s{d}.png")
    assert Image.open(tmp_path / "masks" / "s0.png").mode == "1"
    vol = read_slice_folder(tmp_path / "images", tmp_path / "masks")
    assert np.array_equal(vol.mask, mask)
    image = read_slice_image(tmp_path / "masks" / "s0.png")
    assert image.dtype == np.uint8 and set(np.unique(image)) == {0, 255}


# ----------------------------------------------------------------------------- the Python API


def test_segmenter_refuses_a_non_finite_volume_built_in_python(tiny_checkpoint):
    from dataclasses import replace

    from liverrt.runtime import open_engine
    from liverrt.runtime.segmenter import Segmenter

    vol = make_volume(shape=(2, 32, 32))
    image = vol.image.astype(np.float32)
    image[1, 3, 4] = np.nan
    bad = replace(vol, image=image, case_id="built", source="memory")
    with open_engine("torch", tiny_checkpoint, device="cpu") as eng:
        seg = Segmenter(eng)
        with pytest.raises(InputError) as err:
            seg.segment(bad)
        assert "'built'" in _one_line(err) and "1 of" in str(err.value)
        assert seg.segment(replace(bad, image=finite_image(image, "memory"))).mask.shape == vol.shape
