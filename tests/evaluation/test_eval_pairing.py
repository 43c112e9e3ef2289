"""``liverrt eval`` pairing: CHAOS-style slice names, one KITTI case as ground truth; inference
on a KITTI case without labels."""

import logging

import numpy as np
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import make_volume
from PIL import Image

from liverrt.cli import cli
from liverrt.data.io import write_png_slices
from liverrt.errors import InputError
from liverrt.evaluation import evaluate, markdown_table

# ----------------------------------------------------------------------------- CHAOS names


def _masks(n=4, size=24, seed=0):
    """n different masks, so a wrong pairing cannot score Dice 1."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for d in range(n):
        r, c = rng.integers(2, size // 2, 2)
        masks[d, r: r + 8, c: c + 6 + d] = True
    return masks


def test_chaos_results_pair_with_liver_gt_by_trailing_number(tmp_path, caplog):
    masks = _masks()
    write_png_slices(masks, tmp_path / "Ground", tuple(f"liver_GT_{i:03d}" for i in range(1, 5)))
    write_png_slices(masks, tmp_path / "results", tuple(f"results{i:03d}" for i in range(1, 5)))
    with caplog.at_level(logging.WARNING):
        result = evaluate(tmp_path / "results", tmp_path / "Ground")
    case = result["cases"][0]
    assert case["volume"]["dice"] == 1.0 and case["slices"]["n"] == 4
    note = "paired 4 slices by their trailing numbers (results001 <-> liver_GT_001)"
    assert case["warnings"] == [note]
    assert note in markdown_table(result)
    assert sum(note in r.getMessage() for r in caplog.records) == 1  # logged once for the case
    r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "results"), "--gt", str(tmp_path / "Ground")])
    assert r.exit_code == 0 and note in r.output


def test_trailing_numbers_pair_by_number_whatever_the_padding(tmp_path):
    masks = _masks(n=3)
    write_png_slices(masks, tmp_path / "gt", ("liver_GT_009", "liver_GT_010", "liver_GT_011"))
    write_png_slices(masks[[2, 0, 1]], tmp_path / "pred", ("results11", "results9", "results10"))
    assert evaluate(tmp_path / "pred", tmp_path / "gt")["cases"][0]["volume"]["dice"] == 1.0


def test_trailing_numbers_that_do_not_match_one_to_one_are_refused_on_one_line(tmp_path):
    masks = _masks()
    write_png_slices(masks, tmp_path / "gt", tuple(f"liver_GT_{i:03d}" for i in (1, 2, 3, 4)))
    write_png_slices(masks, tmp_path / "pred", tuple(f"results{i:03d}" for i in (1, 2, 3, 5)))
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "pred", tmp_path / "gt")
    text = str(err.value)
    assert "\n" not in text and "slice files differ" in text
    assert "results001" in text and "liver_GT_001" in text  # the first mismatching stems
    assert "only in prediction: [5]" in text and "only in ground truth: [4]" in text
    write_png_slices(masks, tmp_path / "dupes", ("a1", "b1", "a2", "a3"))  # two slices numbered 1
    with pytest.raises(InputError) as err:
        evaluate(tmp_path / "dupes", tmp_path / "gt")
    assert "\n" not in str(err.value) and "'a1' and 'b1' share the trailing number 1" in str(err.value)
    write_png_slices(masks, tmp_path / "words", ("a", "b", "c", "d"))
    with pytest.raises(InputError, match="'a' has no trailing number"):
        evaluate(tmp_path / "words", tmp_path / "gt")


# ----------------------------------------------------------------------------- KITTI

LABEL_COLORS = "0 0 0 background\n12 200 3 kidney\n250 50 83 liver\n"
LIVER_ID = 2
N_SLICES = 8
ANNOTATED = range(2, 6)


@pytest.fixture(scope="module")
def ct():
    return make_volume(shape=(N_SLICES, 32, 32), seed=3)


def _kitti_case(folder, vol, *, label_colors=LABEL_COLORS):
    """images/image1..N.png + a CVAT KITTI 1.0 export in masks/ with semantic masks for ANNOTATED."""
    images, sem = folder / "images", folder / "masks" / "default" / "semantic"
    images.mkdir(parents=True)
    sem.mkdir(parents=True)
    (folder / "masks" / "default" / "instance").mkdir()
    if label_colors is not None:
        (folder / "masks" / "label_colors.txt").write_text(label_colors)
    img8 = np.clip(vol.image + 100, 0, 255).astype(np.uint8)
    for d in range(vol.shape[0]):
        Image.fromarray(img8[d]).save(images / f"image{d + 1}.png")
        if d in ANNOTATED:
            Image.fromarray(np.where(vol.mask[d], LIVER_ID, 0).astype(np.uint8)).save(sem / f"image{d + 1}.png")
    return folder


def test_eval_against_one_kitti_case_scores_its_annotated_slices(tmp_path, ct):
    case = _kitti_case(tmp_path / "case1", ct)
    stems = tuple(f"image{d + 1}" for d in range(N_SLICES))
    write_png_slices(ct.mask, tmp_path / "pred" / "case1" / "masks", stems)  # perfect, every slice
    n_liver = int(ct.mask[list(ANNOTATED)].any(axis=(1, 2)).sum())
    for pred in (tmp_path / "pred", tmp_path / "pred" / "case1" / "masks"):  # a root of cases, or one mask folder
        result = evaluate(pred, case)
        c = result["cases"][0]
        assert c["id"] == "case1" and c["volume"]["dice"] == 1.0 and c["slices"]["n"] == n_liver
        assert f"annotated of {N_SLICES} predicted slices" in c["warnings"][0]
    wrong = ct.mask.copy()
    wrong[ANNOTATED[0]] = False  # a miss on an annotated slice counts
    write_png_slices(wrong, tmp_path / "other", stems)
    assert evaluate(tmp_path / "other", case)["cases"][0]["volume"]["dice"] < 1.0
    r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(case)])
    assert r.exit_code == 0, r.output
    assert "no prediction" not in r.output and "| case1 |" in r.output


def test_eval_root_mixing_a_kitti_case_and_mask_folders(tmp_path, ct):
    _kitti_case(tmp_path / "gt" / "case1", ct)
    write_png_slices(ct.mask, tmp_path / "gt" / "case2" / "masks", ("a", "b", "c", "d", "e", "f", "g", "h"))
    stems = tuple(f"image{d + 1}" for d in range(N_SLICES))
    write_png_slices(ct.mask, tmp_path / "pred" / "case1" / "masks", stems)
    write_png_slices(ct.mask, tmp_path / "pred" / "case2" / "masks", ("a", "b", "c", "d", "e", "f", "g", "h"))
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert [c["id"] for c in result["cases"]] == ["case1", "case2"]
    assert all(c["volume"]["dice"] == 1.0 for c in result["cases"]) and not result["skipped"]


def test_eval_against_one_chaos_case(tmp_path):
    from liverrt_test_helpers import write_ct_series

    from liverrt.data.dicom import read_chaos_case

    rng = np.random.default_rng(0)
    case = tmp_path / "7"
    pixels = [rng.integers(0, 2000, (5, 6)).astype(np.uint16) for _ in range(3)]
    names = [f"i{i:04d},0000b.dcm" for i in range(3)]
    write_ct_series(case / "DICOM_anon", [(0.0, 0.0, 2.0 * i) for i in range(3)], names, pixels=pixels)
    (case / "Ground").mkdir()
    for i, px in enumerate(pixels):
        Image.fromarray(np.where(px > 1000, 255, 0).astype(np.uint8)).save(case / "Ground" / f"liver_GT_{i:03d}.png")
    vol, _ = read_chaos_case(case)
    write_png_slices(vol.mask, tmp_path / "pred" / "7" / "masks", vol.slice_names)
    result = evaluate(tmp_path / "pred", case)
    assert result["cases"][0]["id"] == "7" and result["cases"][0]["volume"]["dice"] == 1.0


@pytest.mark.parametrize("label_colors", [None, "0 0 0 background\n12 200 3 kidney\n"])
def test_infer_on_a_kitti_case_needs_no_labels(tmp_path, ct, tiny_onnx_8bit, label_colors):
    from liverrt.data.sources import find_cases
    from liverrt.runtime.infer import run_inference

    case = _kitti_case(tmp_path / "case1", ct, label_colors=label_colors)
    assert [r.kind for r in find_cases(case)] == ["kitti"]
    report = run_inference(tiny_onnx_8bit, case, tmp_path / "out", overlays=0)
    assert not report.skipped and [c["id"] for c in report.cases] == ["case1"]
    stems = sorted(p.stem for p in (tmp_path / "out" / "case1" / "masks").glob("*.png"))
    assert len(stems) == N_SLICES  # every image, annotated or not


def test_eval_against_a_lits_root_reads_its_segmentations_not_its_volumes(tmp_path):
    from liverrt.data.io import write_nifti

    vol = make_volume(shape=(4, 24, 24))
    write_nifti(vol.image, vol.affine, tmp_path / "lits" / "volume-0.nii.gz")
    write_nifti(vol.mask, vol.affine, tmp_path / "lits" / "segmentation-0.nii.gz")
    write_nifti(vol.mask, vol.affine, tmp_path / "pred" / "volume-0" / "mask.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "lits")
    assert [c["id"] for c in result["cases"]] == ["volume-0"]
    assert result["cases"][0]["volume"]["dice"] == 1.0
    assert result["cases"][0]["gt"].endswith("segmentation-0.nii.gz")
