"""Commands that take paths: missing, empty, foreign or non-finite inputs to eval, export, train, data
split/inspect/convert and import-detectron2. Audit findings are marked ``# audit (N)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from .builders import copy, float_ct, nifti_case, nifti_file, random_bytes, raw_nifti
from .harness import Case, Scenario, params, run_case


def eval_pred_missing(tmp, art):
    gt = copy(art.phantoms, tmp / "gt")
    return Scenario(["eval", "--pred", tmp / "nopred", "--gt", gt], inputs=[gt])


def eval_names_differ(tmp, art):
    nifti_case(tmp / "pred", "caseA", mask=True)
    nifti_case(tmp / "gt", "caseB", mask=True)
    return Scenario(["eval", "--pred", tmp / "pred", "--gt", tmp / "gt", "--json", tmp / "m.json"],
                    inputs=[tmp / "pred", tmp / "gt"], outs=[tmp / "m.json"])


def eval_nan_prediction(tmp, art):
    gt = nifti_file(tmp / "gt_img.nii.gz", with_mask=tmp / "truth.nii.gz")
    pred = float_ct()
    pred = (pred > 100).astype(np.float32)
    pred[5:9, 5:9, 1] = np.nan
    raw_nifti(tmp / "prednan.nii.gz", pred, np.diag([-0.8, -0.8, 2.5, 1.0]))
    return Scenario(["eval", "--pred", tmp / "prednan.nii.gz", "--gt", tmp / "truth.nii.gz", "--json", tmp / "m.json"],
                    inputs=[tmp / "prednan.nii.gz", gt, tmp / "truth.nii.gz"], outs=[tmp / "m.json"])


def train_empty(tmp, art):
    (tmp / "nodata").mkdir()
    return Scenario(["train", "unet", "--data", tmp / "nodata", "--out", tmp / "run", "--size", 32, "--epochs", 1,
                     "--device", "cpu"], inputs=[tmp / "nodata"], outs=[tmp / "run"])


def split_empty(tmp, art):
    (tmp / "nosplit").mkdir()
    return Scenario(["data", "split", tmp / "nosplit", "--out", tmp / "folds.json"], inputs=[tmp / "nosplit"],
                    outs=[tmp / "folds.json"])


def split_too_many_folds(tmp, art):
    ph = copy(art.phantoms, tmp / "ph")
    return Scenario(["data", "split", ph, "--folds", 5, "--out", tmp / "folds.json"], inputs=[ph],
                    outs=[tmp / "folds.json"])


def inspect_random_file(tmp, art):
    junk = random_bytes(tmp / "junk.bin")
    return Scenario(["data", "inspect", junk], inputs=[junk])


def inspect_empty(tmp, art):
    (tmp / "noinspect").mkdir()
    return Scenario(["data", "inspect", tmp / "noinspect", "--json"], inputs=[tmp / "noinspect"])


def convert_empty(tmp, art):
    (tmp / "noconvert").mkdir()
    return Scenario(["data", "convert", tmp / "noconvert", "--out", tmp / "out", "--to", "png"],
                    inputs=[tmp / "noconvert"], outs=[tmp / "out"])


def convert_into_file(tmp, art):
    ph = copy(art.phantoms, tmp / "ph")
    (tmp / "afile").write_text("the user's notes\n")
    return Scenario(["data", "convert", ph, "--out", tmp / "afile", "--to", "nifti"], inputs=[ph],
                    keep=[tmp / "afile"], outs=[tmp / "afile"])


def import_random(tmp, art):
    junk = random_bytes(tmp / "garbage.pth")
    return Scenario(["import-detectron2", junk, "--out", tmp / "d2.pt"], inputs=[junk], outs=[tmp / "d2.pt"])


def export_verify_empty(tmp, art):
    (tmp / "noverify").mkdir()
    return Scenario(["export", art.tiny_checkpoint, "--out", tmp / "m.onnx", "--verify", tmp / "noverify"],
                    inputs=[art.tiny_checkpoint, tmp / "noverify"], outs=[tmp / "m.onnx"])


def export_wrong_suffix(tmp, art):
    return Scenario(["export", art.tiny_checkpoint, "--out", tmp / "model.txt", "--no-verify"],
                    inputs=[art.tiny_checkpoint], outs=[tmp / "model.txt"])


def infer_model_missing(tmp, art):
    ct = nifti_file(tmp / "ct.nii.gz")
    return Scenario(["infer", "--model", tmp / "nomodel.onnx", "--input", ct, "--out", tmp / "out"], inputs=[ct],
                    outs=[tmp / "out"])


def infer_input_not_nifti(tmp, art):
    junk = random_bytes(tmp / "scan.bin")
    return Scenario(["infer", "--model", art.tiny_onnx, "--input", junk, "--out", tmp / "out"],
                    inputs=[junk, art.tiny_onnx], outs=[tmp / "out"])


COMMANDS = [
    Case("eval-pred-missing", eval_pred_missing, 2, ("nopred",)),
    Case("eval-case-names-differ", eval_names_differ, 2, ("caseB",)),
    # audit (6): a NaN in a prediction is not a 0
    Case("eval-nan-prediction", eval_nan_prediction, 2, ("prednan.nii.gz",), finding=6),
    Case("train-data-empty-folder", train_empty, 2, ("nodata",)),
    Case("data-split-empty-folder", split_empty, 2, ("nosplit",)),
    Case("data-split-more-folds-than-cases", split_too_many_folds, 2, ("folds",)),
    Case("data-inspect-random-file", inspect_random_file, 2, ("junk.bin",)),
    Case("data-inspect-empty-folder", inspect_empty, 2, ("noinspect",)),
    Case("data-convert-empty-folder", convert_empty, 2, ("noconvert",)),
    Case("data-convert-out-is-a-file", convert_into_file, 2, ("afile",)),
    Case("import-detectron2-random-file", import_random, 2, ("garbage.pth",)),
    Case("export-verify-empty-folder", export_verify_empty, 2, ("noverify",)),
    Case("export-out-not-onnx", export_wrong_suffix, 2, ("model.txt",)),
    Case("infer-model-missing", infer_model_missing, 2, ("nomodel.onnx",)),
    Case("infer-input-not-a-volume", infer_input_not_nifti, 2, ("scan.bin",)),
]


@pytest.mark.parametrize("case", params(*COMMANDS))
def test_command(case, tmp_path, art):
    run_case(case, tmp_path, art)
