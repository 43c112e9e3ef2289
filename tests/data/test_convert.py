"""``liverrt data convert``: NIfTI and PNG case folders, with nothing lost on the way and back."""

import numpy as np
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import make_volume

from liverrt.cli import cli
from liverrt.data.convert import convert
from liverrt.data.io import read_nifti, write_nifti, write_png_slices
from liverrt.data.sources import find_cases, load_case
from liverrt.errors import InputError


def test_nifti_to_nifti_loses_nothing(tmp_path):
    vol = make_volume(case_id="c1")
    write_nifti(vol.image, vol.affine, tmp_path / "src" / "c1" / "image.nii.gz")
    write_nifti(vol.mask, vol.affine, tmp_path / "src" / "c1" / "mask.nii.gz")
    report = convert(tmp_path / "src", tmp_path / "a", to="nifti")
    assert report["cases"][0]["mask"] and not report["skipped"]
    convert(tmp_path / "a", tmp_path / "b", to="nifti")
    back = load_case(find_cases(tmp_path / "b")[0])
    assert np.array_equal(back.image, vol.image) and np.array_equal(back.mask, vol.mask)
    assert np.allclose(back.affine, vol.affine) and back.intensity == "hu"


def test_png_slices_round_trip_through_nifti_keep_8bit_and_stems(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8)
    mask = img > 200
    names = ("s1", "s2", "s10")
    write_png_slices(img, tmp_path / "src" / "case" / "images", names)
    write_png_slices(mask, tmp_path / "src" / "case" / "masks", names)
    convert(tmp_path / "src", tmp_path / "nii", to="nifti")
    as_nifti = load_case(find_cases(tmp_path / "nii")[0])
    assert as_nifti.intensity == "8bit" and np.array_equal(as_nifti.image, img)
    convert(tmp_path / "nii", tmp_path / "png", to="png")
    again = load_case(find_cases(tmp_path / "png")[0])
    assert np.array_equal(again.image, img) and np.array_equal(again.mask, mask)


def test_kitti_instances_are_kept_and_hu_to_png_is_reported(tmp_path):
    from test_kitti import write_kitti_case

    from liverrt.data.phantom import PhantomConfig, synth_case

    ph = synth_case(0, PhantomConfig(size=64, slices=12))
    write_kitti_case(tmp_path / "rel" / "case1", ph)
    convert(tmp_path / "rel", tmp_path / "nii", to="nifti")
    inst, _, _ = read_nifti(tmp_path / "nii" / "case1" / "instances.nii.gz")
    assert inst.max() >= 2  # a two-region slice survives
    write_nifti(ph.image, ph.affine, tmp_path / "hu" / "p" / "image.nii.gz")
    report = convert(tmp_path / "hu", tmp_path / "png", to="png")
    assert "windowed" in report["notes"][0]


def test_convert_refuses_to_replace_its_input_and_cli_errors(tmp_path):
    vol = make_volume(case_id="c1")
    src = tmp_path / "src"
    write_nifti(vol.image, vol.affine, src / "c1" / "image.nii.gz")
    before = (src / "c1" / "image.nii.gz").read_bytes()
    with pytest.raises(InputError):
        convert(src, src, to="nifti")
    with pytest.raises(InputError, match="lies inside the input folder"):  # never writes into its input
        convert(src, src / "o", to="nifti")
    assert (src / "c1" / "image.nii.gz").read_bytes() == before and not (src / "o").exists()
    r = CliRunner().invoke(cli, ["data", "convert", str(src), "--out", str(tmp_path / "o"), "--to", "jpeg"])
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["data", "convert", str(src), "--out", str(tmp_path / "o"), "--to", "png"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "c1" / "images").is_dir()
