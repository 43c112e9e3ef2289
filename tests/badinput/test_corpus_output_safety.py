"""Output safety: liverrt never replaces what it did not write (exit 2 naming the path and --overwrite),
never writes into its own input, and replaces what it wrote itself. Audit findings are marked
``# audit (N)``.

The user's dataset below is built without liverrt (no ``.liverrt-output.json`` marker): it is the user's.
"""

from __future__ import annotations

import pytest

from .builders import infer_case_complete, nifti_case, png_folder, random_bytes
from .harness import Case, Scenario, invoke, params, run_case

#: bench and demo must refuse before any heavy work (minutes): they run as `python -m liverrt` (a few seconds
#: to start) and one still running after this is killed and fails its case
FAIL_FAST_S = 20.0


def user_dataset(root):
    """A user's dataset: ``case1/``, ``case2/`` with ``image.nii.gz`` + ``mask.nii.gz`` (no liverrt marker)."""
    nifti_case(root, "case1", mask=True)
    nifti_case(root, "case2", seed=1, mask=True)
    (root / "README.txt").write_text("my dataset, do not touch\n")
    return root


def input_case1(tmp):
    """``in/case1/image.nii.gz``: an input case named like the dataset's case1."""
    nifti_case(tmp / "in", "case1", seed=7)
    return tmp / "in"


def infer_args(model, src, out, *extra):
    return ["infer", "--model", model, "--input", src, "--out", out, *extra]


def infer_over_dataset(tmp, art):
    ds, src = user_dataset(tmp / "dataset"), input_case1(tmp)
    return Scenario(infer_args(art.tiny_onnx, src, ds), inputs=[src, art.tiny_onnx], keep=[ds], outs=[ds])


def convert_over_dataset(tmp, art):
    ds, src = user_dataset(tmp / "dataset"), input_case1(tmp)
    return Scenario(["data", "convert", src, "--out", ds, "--to", "nifti"], inputs=[src], keep=[ds], outs=[ds])


def eval_over_user_file(option, name):
    def build(tmp, art):
        ds = user_dataset(tmp / "dataset")
        mine = tmp / name
        mine.write_text("the user's own notes\n")
        return Scenario(["eval", "--pred", ds, "--gt", ds, option, mine], inputs=[ds], keep=[mine], outs=[mine])

    return build


def eval_json_over_input(tmp, art):
    ds = user_dataset(tmp / "dataset")
    return Scenario(["eval", "--pred", ds, "--gt", ds, "--json", ds / "case1" / "mask.nii.gz"], inputs=[ds])


def export_over_user_file(tmp, art):
    mine = random_bytes(tmp / "model.onnx")
    return Scenario(["export", art.tiny_checkpoint, "--out", mine, "--no-verify"], inputs=[art.tiny_checkpoint],
                    keep=[mine], outs=[mine], absent=[tmp / "model.onnx.verify.json"])


def train_over_user_folder(tmp, art):
    ds = user_dataset(tmp / "dataset")
    mine = tmp / "myrun"
    mine.mkdir()
    (mine / "notes.txt").write_text("my experiment notes\n")
    random_bytes(mine / "best.pt")
    return Scenario(["train", "unet", "--data", ds, "--out", mine, "--size", 32, "--epochs", 1, "--batch-size", 4,
                     "--val-fraction", 0.5, "--device", "cpu"], inputs=[ds], keep=[mine], outs=[mine])


def synth_over_user_folder(tmp, art):
    mine = tmp / "mysynth"
    (mine / "phantom_000").mkdir(parents=True)
    (mine / "phantom_000" / "notes.txt").write_text("mine\n")
    return Scenario(["data", "synth", "--out", mine, "--cases", 1, "--size", 32, "--slices", 2], keep=[mine],
                    outs=[mine])


def split_over_user_file(tmp, art):
    ds = user_dataset(tmp / "dataset")
    mine = tmp / "folds.json"
    mine.write_text('{"my": "hand-made folds"}\n')
    return Scenario(["data", "split", ds, "--folds", 2, "--out", mine], inputs=[ds], keep=[mine], outs=[mine])


def heavy_over_user_folder(command, name, *extra):
    def build(tmp, art):
        mine = tmp / name
        mine.mkdir()
        (mine / "report.md").write_text("# my report\n")
        return Scenario([command, "--out", mine, *extra], keep=[mine], outs=[mine], subprocess=True,
                        timeout=FAIL_FAST_S)

    return build


def infer_twice(tmp, art):
    """The same infer twice into one --out: the second replaces what the first wrote."""
    src, out = input_case1(tmp), tmp / "out"
    first = invoke(infer_args(art.tiny_onnx, src, out))
    assert first.code == 0, first.output
    return Scenario(infer_args(art.tiny_onnx, src, out), inputs=[src, art.tiny_onnx], outs=[out],
                    good=[infer_case_complete(out, "case1", shape=(32, 32, 4))])


def infer_overwrite_user_folder(tmp, art):
    ds, src = user_dataset(tmp / "dataset"), input_case1(tmp)

    def replaced(o):
        assert not (ds / "case1" / "image.nii.gz").exists(), "--overwrite kept the user's old case1 content"

    return Scenario(infer_args(art.tiny_onnx, src, ds, "--overwrite"), inputs=[src, art.tiny_onnx],
                    keep=[ds / "case2", ds / "README.txt"], outs=[ds],
                    good=[infer_case_complete(ds, "case1", shape=(32, 32, 4))], after=replaced)


def infer_out_is_input(tmp, art):
    png_folder(tmp / "ctpng")
    return Scenario(infer_args(art.tiny_onnx, tmp / "ctpng", tmp / "ctpng"), inputs=[tmp / "ctpng", art.tiny_onnx])


def infer_out_inside_input(tmp, art):
    ds = user_dataset(tmp / "dataset")
    return Scenario(infer_args(art.tiny_onnx, ds, ds / "mypred"), inputs=[ds, art.tiny_onnx])


def convert_out_inside_input(tmp, art):
    ds = user_dataset(tmp / "dataset")
    return Scenario(["data", "convert", ds, "--out", ds / "myconv", "--to", "png"], inputs=[ds])


SAFETY = [
    # audit (1): data loss via --out over a dataset case
    Case("infer-out-over-dataset-case", infer_over_dataset, 2, ("case1", "--overwrite"), finding=1),
    # audit (1)
    Case("convert-out-over-dataset-case", convert_over_dataset, 2, ("case1", "--overwrite"), finding=1),
    # audit (1)
    Case("eval-json-over-user-file", eval_over_user_file("--json", "metrics.json"), 2,
         ("metrics.json", "--overwrite"), finding=1),
    # audit (1)
    Case("eval-csv-over-user-file", eval_over_user_file("--csv", "slices.csv"), 2, ("slices.csv", "--overwrite"),
         finding=1),
    Case("eval-json-over-its-input", eval_json_over_input, 2, ("mask.nii.gz",)),
    # audit (1)
    Case("export-out-over-user-file", export_over_user_file, 2, ("model.onnx", "--overwrite"), finding=1),
    # audit (1)
    Case("train-out-over-user-folder", train_over_user_folder, 2, ("myrun",), finding=1),
    # audit (1)
    Case("synth-out-over-user-folder", synth_over_user_folder, 2, ("mysynth", "--overwrite"), finding=1),
    # audit (1)
    Case("split-out-over-user-file", split_over_user_file, 2, ("folds.json", "--overwrite"), finding=1),
    # audit (1): must refuse before the benchmark starts (FAIL_FAST_S)
    Case("bench-out-over-user-folder", heavy_over_user_folder("bench", "mybench", "--quick"), 2,
         ("mybench", "--overwrite"), finding=1),
    # audit (1): must refuse before the demo starts (FAIL_FAST_S)
    Case("demo-out-over-user-folder", heavy_over_user_folder("demo", "mydemo"), 2, ("mydemo", "--overwrite"),
         finding=1),
    Case("infer-twice-into-one-out", infer_twice, 0),
    Case("infer-overwrite-replaces-user-folder", infer_overwrite_user_folder, 0),
    # audit (7): --out == --input PNG folder
    Case("infer-out-is-the-png-input", infer_out_is_input, 2, ("ctpng",), finding=7),
    # audit (7)
    Case("infer-out-inside-the-input", infer_out_inside_input, 2, ("mypred",), finding=7),
    # audit (7)
    Case("convert-out-inside-the-input", convert_out_inside_input, 2, ("myconv",), finding=7),
]


@pytest.mark.parametrize("case", params(*SAFETY))
def test_output_safety(case, tmp_path, art):
    run_case(case, tmp_path, art)
