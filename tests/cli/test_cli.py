"""The command line: happy paths on tiny data, and every error path exits cleanly."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from liverrt_test_helpers import make_volume

from liverrt.cli import cli
from liverrt.data.io import read_nifti, write_nifti, write_png_slices


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_clean_error(result, code):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_version_and_help():
    assert run("--version").exit_code == 0
    out = run("--help").output
    for cmd in ("demo", "train", "export", "infer", "eval", "bench", "data"):
        assert cmd in out


def test_help_lists_each_command_by_its_own_docstring_without_importing_it():
    """``liverrt --help`` and ``liverrt data --help`` read their groups' stored lines, so that they (and
    ``liverrt data inspect``) do not import torch; the lines must be the commands' own first sentences,
    and every command must load."""
    import subprocess
    import sys

    from liverrt.cli import COMMANDS
    from liverrt.cli.common import LazyGroup

    assert isinstance(cli, LazyGroup) and cli.lazy == COMMANDS
    groups = [cli, cli.get_command(None, "data")]
    for group in groups:
        assert isinstance(group, LazyGroup) and group.lazy
        for name, (_, short) in group.lazy.items():
            command = group.get_command(None, name)
            assert command is not None and command.name == name
            assert command.get_short_help_str(limit=10_000) == short, name
    probe = ("import sys; from click.testing import CliRunner; from liverrt.cli import cli; "
             "r = [CliRunner().invoke(cli, a) for a in (['--help'], ['data', '--help'], ['data', 'inspect', '--help'])]; "
             "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_synth_then_eval_of_truth_against_itself(tmp_path):
    r = run("data", "synth", "--out", tmp_path / "ph", "--cases", 2, "--size", 64, "--slices", 6)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ph" / "phantom.json").is_file()
    r = run("eval", "--pred", tmp_path / "ph", "--gt", tmp_path / "ph", "--json", tmp_path / "m.json")
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "m.json").read_text())
    assert len(data["cases"]) == 2 and data["mean"]["volume"]["mask_iou"] == 1.0
    assert "| **mean** |" in r.output


def test_infer_then_eval_end_to_end(tiny_onnx, tmp_path):
    vol = make_volume(case_id="c1")
    write_nifti(vol.image, vol.affine, tmp_path / "data" / "c1" / "image.nii.gz")
    write_nifti(vol.mask, vol.affine, tmp_path / "data" / "c1" / "mask.nii.gz")
    r = run("infer", "--model", tiny_onnx, "--input", tmp_path / "data", "--out", tmp_path / "pred",
            "--batch-size", 4, "--fill-holes", "--keep-largest")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred" / "c1" / "mask.nii.gz").is_file()
    assert len(list((tmp_path / "pred" / "c1" / "overlays").glob("*.png"))) >= 1
    r = run("eval", "--pred", tmp_path / "pred", "--gt", tmp_path / "data")
    assert r.exit_code == 0, r.output
    # the table has one row for c1, and its Dice is that of the two mask files, computed here
    pred = read_nifti(tmp_path / "pred" / "c1" / "mask.nii.gz", labels=True)[0] > 0
    gt = read_nifti(tmp_path / "data" / "c1" / "mask.nii.gz", labels=True)[0] > 0
    dice = 2 * np.count_nonzero(pred & gt) / (np.count_nonzero(pred) + np.count_nonzero(gt))
    assert 0 < dice < 1  # an untrained net: some overlap, no copy of the truth (measured 0.1086)
    rows = [line.split("|")[1:-1] for line in r.output.splitlines() if line.startswith("| c1 |")]
    assert len(rows) == 1, r.output
    assert float(rows[0][1]) == pytest.approx(dice, abs=5e-5), r.output  # the Dice column, 4 decimals


def test_png_slice_folder_inference_writes_png_masks(tiny_onnx_8bit, tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (3, 40, 40), dtype=np.uint8)
    write_png_slices(img, tmp_path / "slices", ("a1", "a2", "a10"))
    r = run("infer", "--model", tiny_onnx_8bit, "--input", tmp_path / "slices", "--out", tmp_path / "pred")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "pred" / "slices" / "mask.nii.gz").exists()  # 8-bit slices -> PNG masks by default
    assert sorted(p.name for p in (tmp_path / "pred" / "slices" / "masks").iterdir()) == ["a1.png", "a10.png", "a2.png"]


def test_missing_input_exits_2(tiny_onnx, tmp_path):
    r = run("infer", "--model", tiny_onnx, "--input", tmp_path / "nope", "--out", tmp_path / "o")
    assert_clean_error(r, 2)
    assert not (tmp_path / "o").exists()


def test_empty_folder_exits_2_without_output(tiny_onnx, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run("infer", "--model", tiny_onnx, "--input", tmp_path / "empty", "--out", tmp_path / "o")
    assert_clean_error(r, 2)
    assert "No cases found" in r.output
    assert not (tmp_path / "o").exists()


def test_unreadable_volume_exits_2_and_others_are_still_processed(tiny_onnx, tmp_path):
    vol = make_volume(case_id="ok")
    write_nifti(vol.image, vol.affine, tmp_path / "in" / "ok.nii.gz")
    (tmp_path / "in" / "truncated.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    r = run("infer", "--model", tiny_onnx, "--input", tmp_path / "in", "--out", tmp_path / "o")
    assert_clean_error(r, 2)
    assert "truncated" in r.output
    assert (tmp_path / "o" / "ok" / "mask.nii.gz").is_file()
    assert not (tmp_path / "o" / "truncated").exists()


def test_checkpoint_of_the_wrong_kind_exits_2(tmp_path):
    torch.save({"format": "liverrt.checkpoint", "format_version": 1, "kind": "transformer",
                "model_config": {}, "state_dict": {}, "preprocess": {}}, tmp_path / "odd.pt")
    r = run("export", tmp_path / "odd.pt", "--out", tmp_path / "m.onnx")
    assert_clean_error(r, 2)
    assert "transformer" in r.output and "expected one of" in r.output
    assert not (tmp_path / "m.onnx").exists()


def test_foreign_checkpoint_exits_2(tmp_path):
    torch.save({"model": torch.zeros(2)}, tmp_path / "foreign.pt")
    r = run("export", tmp_path / "foreign.pt", "--out", tmp_path / "m.onnx")
    assert_clean_error(r, 2)
    assert "not a liverrt checkpoint" in r.output


def test_onnx_without_liverrt_metadata_exits_2(tmp_path):
    torch.onnx.export(torch.nn.Conv2d(1, 1, 1), (torch.zeros(1, 1, 8, 8),), str(tmp_path / "plain.onnx"),
                      dynamo=False)
    write_nifti(make_volume().image, np.eye(4), tmp_path / "ct.nii.gz")
    r = run("infer", "--model", tmp_path / "plain.onnx", "--input", tmp_path / "ct.nii.gz", "--out", tmp_path / "o")
    assert_clean_error(r, 2)
    assert "no liverrt metadata" in r.output
    assert not (tmp_path / "o").exists()


def test_engine_and_model_mismatch_exits_2(tiny_onnx, tmp_path):
    write_nifti(make_volume().image, np.eye(4), tmp_path / "ct.nii.gz")
    r = run("infer", "--engine", "torch", "--model", tiny_onnx, "--input", tmp_path / "ct.nii.gz",
            "--out", tmp_path / "o")
    assert_clean_error(r, 2)
    assert "needs a .pt checkpoint" in r.output


def test_eval_shape_mismatch_names_both_shapes(tmp_path):
    a, b = make_volume(shape=(4, 16, 16)), make_volume(shape=(5, 16, 16))
    write_nifti(a.mask, a.affine, tmp_path / "p.nii.gz")
    write_nifti(b.mask, b.affine, tmp_path / "g.nii.gz")
    r = run("eval", "--pred", tmp_path / "p.nii.gz", "--gt", tmp_path / "g.nii.gz")
    assert_clean_error(r, 2)
    assert "(4, 16, 16)" in r.output and "(5, 16, 16)" in r.output


def test_train_cli_on_unlabelled_data_exits_2(tmp_path):
    write_nifti(make_volume().image, np.eye(4), tmp_path / "d" / "a.nii.gz")
    r = run("train", "unet", "--data", tmp_path / "d", "--out", tmp_path / "run", "--size", 32)
    assert_clean_error(r, 2)
    assert "no liver mask" in r.output


@pytest.mark.slow
def test_train_export_infer_eval_through_the_cli(tmp_path):
    assert run("data", "synth", "--out", tmp_path / "ph", "--cases", 3, "--size", 64, "--slices", 8).exit_code == 0
    # on the CPU: what one epoch learns (next line) is not the same on a GPU
    r = run("train", "unet", "--data", tmp_path / "ph", "--out", tmp_path / "run", "--size", 32,
            "--epochs", 1, "--batch-size", 4, "--val-fraction", 0.34, "--device", "cpu")
    assert r.exit_code == 0, r.output
    ckpt = tmp_path / "run" / "best.pt"
    r = run("export", ckpt, "--out", tmp_path / "m.onnx", "--verify-data", tmp_path / "ph")
    # one epoch at 32² finds no liver yet: the gate cannot tell a broken export from this one, and says so
    assert r.exit_code == 1 and "inconclusive" in r.output and not (tmp_path / "m.onnx").exists()
    r = run("export", ckpt, "--out", tmp_path / "m.onnx", "--no-verify")
    assert r.exit_code == 0, r.output
    assert "parity passed" in r.output
    for engine, model in (("torch", ckpt), ("onnxruntime", tmp_path / "m.onnx")):
        r = run("infer", "--engine", engine, "--model", model, "--input", tmp_path / "ph",
                "--out", tmp_path / engine)
        assert r.exit_code == 0, r.output
    r = run("eval", "--pred", tmp_path / "torch", "--gt", tmp_path / "onnxruntime")
    assert r.exit_code == 0, r.output


def test_output_that_is_a_file_and_bad_training_options_exit_2(tiny_onnx, tmp_path):
    (tmp_path / "afile").write_text("x")
    write_nifti(make_volume().image, np.eye(4), tmp_path / "ct.nii.gz")
    r = run("infer", "--model", tiny_onnx, "--input", tmp_path / "ct.nii.gz", "--out", tmp_path / "afile")
    assert_clean_error(r, 2)
    assert run("data", "synth", "--out", tmp_path / "ph", "--cases", 2, "--size", 48, "--slices", 4).exit_code == 0
    for extra in (("--lr", "-1"), ("--device", "foo")):
        r = run("train", "unet", "--data", tmp_path / "ph", "--out", tmp_path / "run", "--size", 32, *extra)
        assert_clean_error(r, 2)
    assert not (tmp_path / "run").exists()


def test_val_data_validates_on_other_cases_and_a_resumed_run_keeps_them(tmp_path):
    from liverrt.artifacts.checkpoint import read_checkpoint

    assert run("data", "synth", "--out", tmp_path / "tr", "--cases", 2, "--size", 64, "--slices", 4).exit_code == 0
    assert run("data", "synth", "--out", tmp_path / "va", "--cases", 1, "--size", 64, "--slices", 4,
               "--seed", 9).exit_code == 0
    # the phantoms of another seed are other cases; rename so that no id is shared with --data
    (tmp_path / "va" / "phantom_000").rename(tmp_path / "va" / "held_out")
    base = ("train", "unet", "--data", tmp_path / "tr", "--val-data", tmp_path / "va", "--out", tmp_path / "run",
            "--size", 32, "--batch-size", 4, "--device", "cpu")
    r = run(*base, "--epochs", 1)
    assert r.exit_code == 0, r.output
    split = read_checkpoint(tmp_path / "run" / "last.pt")["split"]
    assert split == {"train": ["phantom_000", "phantom_001"], "val": ["held_out"]}
    r = run(*base, "--epochs", 2, "--resume")
    assert r.exit_code == 0, r.output
    assert read_checkpoint(tmp_path / "run" / "last.pt")["split"] == split


def test_init_starts_a_new_run_from_a_checkpoints_weights(tmp_path):
    from liverrt.artifacts.checkpoint import read_checkpoint

    assert run("data", "synth", "--out", tmp_path / "ph", "--cases", 3, "--size", 64, "--slices", 4).exit_code == 0
    base = ("train", "unet", "--data", tmp_path / "ph", "--size", 32, "--batch-size", 4, "--val-fraction", 0.34,
            "--device", "cpu", "--epochs", 1, "--steps-per-epoch", 2)
    assert run(*base, "--out", tmp_path / "a", "--warmup-steps", 0).exit_code == 0  # full lr: far from seed 0's init
    start = read_checkpoint(tmp_path / "a" / "best.pt")["state_dict"]
    r = run(*base, "--out", tmp_path / "b", "--init", tmp_path / "a" / "best.pt", "--lr", 1e-12, "--warmup-steps", 0)
    assert r.exit_code == 0, r.output
    tuned = read_checkpoint(tmp_path / "b" / "best.pt")["state_dict"]
    weights = [k for k in start if k.endswith("weight")]
    assert all(torch.allclose(tuned[k], start[k], atol=1e-6) for k in weights)  # lr 1e-12: still the init
    assert run(*base, "--out", tmp_path / "c", "--width-scale", 0.5,
               "--init", tmp_path / "a" / "best.pt").exit_code == 2  # another width: refused
    r = run(*base, "--out", tmp_path / "a", "--init", tmp_path / "a" / "best.pt", "--resume")
    assert r.exit_code == 2 and "--init" in r.output


def test_a_model_trained_at_a_fixed_pixel_size_keeps_it_through_export_and_inference(tmp_path):
    from liverrt.artifacts.checkpoint import read_checkpoint

    assert run("data", "synth", "--out", tmp_path / "ph", "--cases", 2, "--size", 64, "--slices", 4).exit_code == 0
    r = run("train", "unet", "--data", tmp_path / "ph", "--out", tmp_path / "run", "--size", 32, "--pixel-mm", 9.0,
            "--epochs", 1, "--steps-per-epoch", 1, "--batch-size", 4, "--val-fraction", 0.5, "--device", "cpu")
    assert r.exit_code == 0, r.output
    spec = read_checkpoint(tmp_path / "run" / "best.pt")["preprocess"]
    assert spec["resize"] == "spacing" and spec["pixel_mm"] == 9.0
    r = run("export", tmp_path / "run" / "best.pt", "--out", tmp_path / "m.onnx", "--no-verify")
    assert r.exit_code == 0, r.output
    # a CT at another pixel size than training's comes back on its own grid
    write_nifti(make_volume(shape=(3, 40, 56)).image, np.diag([0.7, 0.9, 2.5, 1.0]), tmp_path / "ct" / "a.nii.gz")
    r = run("infer", "--model", tmp_path / "m.onnx", "--input", tmp_path / "ct", "--out", tmp_path / "seg")
    assert r.exit_code == 0, r.output
    seg, _, spacing = read_nifti(next((tmp_path / "seg").rglob("*.nii.gz")), labels=True)
    assert seg.shape == (3, 40, 56) and np.allclose(spacing, (2.5, 0.9, 0.7))


def test_a_2p5d_model_takes_adjacent_slices_through_training_export_and_any_batch_size(tmp_path):
    import onnx

    from liverrt.artifacts.checkpoint import read_checkpoint
    from liverrt.data.sources import load_cases
    from liverrt.runtime import open_engine
    from liverrt.runtime.segmenter import Segmenter

    assert run("data", "synth", "--out", tmp_path / "ph", "--cases", 2, "--size", 64, "--slices", 6).exit_code == 0
    r = run("train", "unet", "--data", tmp_path / "ph", "--out", tmp_path / "run", "--size", 32, "--context", 1,
            "--epochs", 1, "--steps-per-epoch", 2, "--batch-size", 4, "--val-fraction", 0.5, "--device", "cpu",
            "--warmup-steps", 0)
    assert r.exit_code == 0, r.output
    ckpt = read_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["preprocess"]["context"] == 1 and ckpt["model_config"]["in_channels"] == 3
    r = run("export", tmp_path / "run" / "best.pt", "--out", tmp_path / "m.onnx", "--no-verify")
    assert r.exit_code == 0, r.output
    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    r = run("infer", "--model", tmp_path / "m.onnx", "--input", tmp_path / "ph", "--out", tmp_path / "seg")
    assert r.exit_code == 0, r.output
    vol = load_cases(tmp_path / "ph").volumes[0]
    probs = []
    for engine, model, batch in (("torch", tmp_path / "run" / "best.pt", 1), ("onnxruntime", tmp_path / "m.onnx", 4)):
        with open_engine(engine, model) as eng:
            probs.append(Segmenter(eng, batch_size=batch, keep_prob=True).segment(vol).prob)
    assert np.allclose(probs[0], probs[1], atol=1e-4)  # batches of 1 and 4 from the volume: the same input
