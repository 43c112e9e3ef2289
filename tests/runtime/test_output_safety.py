"""What a review found after the bad-input corpus: case ids, the Python API, files inside inputs, Triton configs."""

import shutil

import pytest
from click.testing import CliRunner
from liverrt_test_helpers import make_volume

from liverrt.cli import cli
from liverrt.data.io import write_nifti
from liverrt.data.phantom import PhantomConfig, synth_dataset
from liverrt.errors import InputError
from liverrt.runtime.infer import run_inference


def _nifti(path):
    vol = make_volume(case_id="v")
    write_nifti(vol.image, vol.affine, path)
    return path


@pytest.mark.parametrize("name", ["..nii.gz", ".nii.gz", "...nii"])
def test_a_case_id_that_names_no_folder_is_refused(tiny_onnx, tmp_path, name):
    """``out / '.'`` is ``out`` itself: with --overwrite it would replace the whole output folder."""
    src = tmp_path / "in"
    src.mkdir()
    _nifti(tmp_path / "v.nii.gz").rename(src / name)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="cannot name an output folder"):
        run_inference(tiny_onnx, src / name, tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_two_cases_with_one_id_are_refused_before_any_work(tiny_onnx, tmp_path):
    src = tmp_path / "in"
    _nifti(src / "a.nii.gz")
    shutil.copy(src / "a.nii.gz", tmp_path / "a.nii.gz")
    vol = make_volume(case_id="a")
    write_nifti(vol.image, vol.affine, src / "a.nii")
    with pytest.raises(InputError, match="are both case 'a'"):
        run_inference(tiny_onnx, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_python_api_never_replaces_a_dataset_case_either(tiny_onnx, tmp_path):
    """The issue's data-loss reproduction, through the library instead of the CLI."""
    ds = tmp_path / "ds"
    synth_dataset(ds, 2, config=PhantomConfig(size=64, slices=4))
    before = (ds / "phantom_001" / "mask.nii.gz").read_bytes()
    (tmp_path / "in").mkdir()
    shutil.copy(ds / "phantom_001" / "image.nii.gz", tmp_path / "in" / "phantom_001.nii.gz")
    with pytest.raises(InputError, match="written by `liverrt data synth`, not by this command"):
        run_inference(tiny_onnx, tmp_path / "in", ds)
    assert (ds / "phantom_001" / "mask.nii.gz").read_bytes() == before
    synth_dataset(ds, 2, config=PhantomConfig(size=64, slices=4))  # the dataset's own writer may replace it
    report = run_inference(tiny_onnx, tmp_path / "in", ds, overwrite=True)  # and so may the user, explicitly
    assert [c["id"] for c in report.cases] == ["phantom_001"]
    assert not (ds / "phantom_001" / "image.nii.gz").exists()


def test_outputs_inside_an_input_folder_are_refused_the_first_time_too(tmp_path):
    ds = tmp_path / "ds"
    synth_dataset(ds, 2, config=PhantomConfig(size=64, slices=4))
    for args in (["eval", "--pred", ds, "--gt", ds, "--json", ds / "scores.json"],
                 ["data", "split", ds, "--folds", 2, "--out", ds / "split.json"]):
        for _ in range(2):  # the same answer before and after the file exists
            r = CliRunner().invoke(cli, [str(a) for a in args])
            assert r.exit_code == 2, r.output
            assert "lies inside the input folder" in r.output
    assert not (ds / "scores.json").exists() and not (ds / "split.json").exists()


def test_json_and_csv_cannot_be_one_file(tmp_path):
    ds = tmp_path / "ds"
    synth_dataset(ds, 1, config=PhantomConfig(size=64, slices=4))
    out = tmp_path / "m.txt"
    r = CliRunner().invoke(cli, ["eval", "--pred", str(ds), "--gt", str(ds), "--json", str(out), "--csv", str(out)])
    assert r.exit_code == 2 and "name the same file" in r.output and not out.exists()


def test_a_new_triton_version_never_replaces_a_config_the_user_edited(tiny_onnx, tmp_path):
    from liverrt.export.triton import write_triton_repo

    repo = tmp_path / "repo"
    write_triton_repo(tiny_onnx, repo, name="tiny", version=1)
    write_triton_repo(tiny_onnx, repo, name="tiny", version=2)  # liverrt's own config: replaced
    config = repo / "tiny" / "config.pbtxt"
    config.write_text(config.read_text() + "\n# tuned by hand\n")
    with pytest.raises(InputError, match=r"config\.pbtxt: it changed after liverrt wrote it"):
        write_triton_repo(tiny_onnx, repo, name="tiny", version=3)
    assert config.read_text().endswith("# tuned by hand\n") and not (repo / "tiny" / "3").exists()
    write_triton_repo(tiny_onnx, repo, name="tiny", version=3, overwrite=True)
    assert (repo / "tiny" / "3").is_dir()
