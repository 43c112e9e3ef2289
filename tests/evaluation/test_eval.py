"""``liverrt eval``: geometry sources, the full metric set, CSV/JSON, and clear errors."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from liverrt_test_helpers import SHARED_DATA, make_volume, write_ct_series

from liverrt.cli import cli
from liverrt.data.dicom import series_spacing
from liverrt.data.io import write_nifti, write_png_slices
from liverrt.errors import InputError
from liverrt.evaluation import evaluate, markdown_table
from liverrt.metrics import hd95


def _pair(tmp_path, spacing=(2.5, 0.8, 0.8)):
    gt = make_volume(shape=(6, 40, 40), spacing=spacing)
    pred = np.roll(gt.mask, 2, axis=2)
    write_nifti(gt.mask, gt.affine, tmp_path / "gt" / "c1" / "mask.nii.gz")
    write_nifti(pred, gt.affine, tmp_path / "pred" / "c1" / "mask.nii.gz")
    return pred, gt.mask


def test_full_metric_set_with_header_spacing(tmp_path):
    pred, gt = _pair(tmp_path)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", csv_path=tmp_path / "slices.csv")
    case = result["cases"][0]
    assert result["spacing_source"] == "ground-truth header"
    assert set(case["volume"]) == {"dice", "mask_iou", "ravd", "assd", "mssd", "hd95"}
    assert set(case["slices"]) == {"mask_iou", "dice", "f_measure", "boundary_iou", "trimap_iou", "boundary_f", "n"}
    assert case["volume"]["hd95"] == pytest.approx(hd95(pred, gt, (2.5, 0.8, 0.8)))
    assert 0 < case["volume"]["mask_iou"] < 1 and case["slices"]["n"] == 6
    rows = list(csv.DictReader((tmp_path / "slices.csv").open()))
    assert len(rows) == 6 and rows[0]["case_id"] == "c1"
    assert "HD95 mm" in markdown_table(result)


def test_explicit_spacing_scales_distances(tmp_path):
    _pair(tmp_path)
    base = evaluate(tmp_path / "pred", tmp_path / "gt")["cases"][0]["volume"]
    double = evaluate(tmp_path / "pred", tmp_path / "gt", spacing=(5.0, 1.6, 1.6))
    assert double["spacing_source"] == "given"
    assert double["cases"][0]["volume"]["assd"] == pytest.approx(2 * base["assd"])


def test_like_nifti_and_png_folders_without_geometry(tmp_path):
    gt = make_volume(shape=(4, 32, 32), spacing=(3.0, 0.7, 0.7))
    write_png_slices(gt.mask, tmp_path / "gt", ("s1", "s2", "s10", "s3"))
    write_png_slices(np.roll(gt.mask, 1, axis=1), tmp_path / "pred", ("s1", "s2", "s10", "s3"))
    pixels = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert pixels["spacing_source"] == "none: distances in pixels"
    write_nifti(gt.image, gt.affine, tmp_path / "ref.nii.gz")
    mm = evaluate(tmp_path / "pred", tmp_path / "gt", like=tmp_path / "ref.nii.gz")
    assert mm["cases"][0]["spacing_mm"] == pytest.approx([3.0, 0.7, 0.7])
    assert mm["cases"][0]["volume"]["mssd"] == pytest.approx(0.7 * pixels["cases"][0]["volume"]["mssd"])


def test_empty_prediction_gives_null_distance_with_reason(tmp_path):
    gt = make_volume(shape=(3, 24, 24))
    write_nifti(gt.mask, gt.affine, tmp_path / "g.nii.gz")
    write_nifti(np.zeros_like(gt.mask), gt.affine, tmp_path / "p.nii.gz")
    result = evaluate(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz")
    text = json.dumps(result)  # strict JSON: no Infinity/NaN
    assert "Infinity" not in text and "NaN" not in text
    assert result["cases"][0]["volume"]["hd95"] is None
    assert "no surface" in result["excluded"]["volume.hd95"][0]["reason"]
    assert result["cases"][0]["volume"]["dice"] == 0.0


def test_unequal_slice_counts_name_both_shapes(tmp_path):
    a, b = make_volume(shape=(4, 16, 16)), make_volume(shape=(5, 16, 16))
    write_nifti(a.mask, a.affine, tmp_path / "p.nii.gz")
    write_nifti(b.mask, b.affine, tmp_path / "g.nii.gz")
    with pytest.raises(InputError, match=r"\(4, 16, 16\).*\(5, 16, 16\)"):
        evaluate(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz")


def _write_ct_series(folder, positions, spacing=(0.7, 0.7)):
    names = [f"IM{i:04d}" for i in range(len(positions))]
    return write_ct_series(folder, [(-100.0, -120.0, float(z)) for z in positions], names, spacing=spacing)


def test_dicom_series_spacing_from_first_and_last_positions(tmp_path):
    _write_ct_series(tmp_path / "ct", [10.0, 12.5, 15.0, 17.5], spacing=(0.6, 0.65))
    (tmp_path / "ct" / "README.txt").write_text("not dicom")
    assert series_spacing(tmp_path / "ct") == pytest.approx((2.5, 0.6, 0.65))


def test_dicom_mixed_series_is_refused(tmp_path):
    _write_ct_series(tmp_path / "ct", [0.0, 5.0])
    other = tmp_path / "other"
    _write_ct_series(other, [0.0, 5.0])
    for f in other.iterdir():
        f.rename(tmp_path / "ct" / f"B{f.name}")
    with pytest.raises(InputError, match="mixes 2 DICOM series"):
        series_spacing(tmp_path / "ct")


@pytest.mark.skipif(not (SHARED_DATA / "dcmqi_ct3slice").is_dir(), reason="shared real-data samples not present")
def test_real_dicom_series_geometry_ignores_the_seg_object():
    dz, dy, dx = series_spacing(SHARED_DATA / "dcmqi_ct3slice")
    assert dy == pytest.approx(dx) and 0.7 < dx < 0.9
    # 1.25 mm thick slices reconstructed every 1.0 mm: the spacing is the position step, not the thickness
    assert dz == pytest.approx(1.0, abs=1e-6)


def test_cli_eval_errors_exit_2(tmp_path):
    _pair(tmp_path)
    runner = CliRunner()
    r = runner.invoke(cli, ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                            "--spacing", "1,2"])
    assert r.exit_code == 2 and "Z,Y,X" in r.output
    r = runner.invoke(cli, ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                            "--spacing", "1,1,1", "--like", str(tmp_path / "gt" / "c1" / "mask.nii.gz")])
    assert r.exit_code == 2
    (tmp_path / "empty").mkdir()
    r = runner.invoke(cli, ["eval", "--pred", str(tmp_path / "empty"), "--gt", str(tmp_path / "gt")])
    assert r.exit_code == 2 and "No masks found" in r.output and "Traceback" not in r.output


def test_cli_eval_writes_json_and_csv(tmp_path):
    _pair(tmp_path)
    r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                                 "--json", str(tmp_path / "m.json"), "--csv", str(tmp_path / "s.csv")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["cases"][0]["id"] == "c1" and data["mean"]["volume"]["hd95"] is not None
    assert (tmp_path / "s.csv").read_text().startswith("case_id,slice,counted,")


def test_eval_never_overwrites_its_inputs(tmp_path):
    _pair(tmp_path)
    gt_file = tmp_path / "gt" / "c1" / "mask.nii.gz"
    before = gt_file.read_bytes()
    for flag in ("--json", "--csv"):
        r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"),
                                     flag, str(gt_file)])
        assert r.exit_code == 2 and "Refusing to overwrite" in r.output
    assert gt_file.read_bytes() == before


def test_missing_predictions_error_skip_or_empty(tmp_path):
    _pair(tmp_path)
    extra = make_volume(shape=(6, 40, 40), case_id="c2")
    write_nifti(extra.mask, extra.affine, tmp_path / "gt" / "c2" / "mask.nii.gz")
    with pytest.raises(InputError, match="no prediction"):
        evaluate(tmp_path / "pred", tmp_path / "gt")
    skipped = evaluate(tmp_path / "pred", tmp_path / "gt", missing="skip")
    assert [c["id"] for c in skipped["cases"]] == ["c1"] and skipped["unmatched"]["gt"] == ["c2"]
    assert "without a prediction" in markdown_table(skipped)
    empty = evaluate(tmp_path / "pred", tmp_path / "gt", missing="empty")
    c2 = next(c for c in empty["cases"] if c["id"] == "c2")
    assert c2["volume"]["dice"] == 0.0 and c2["volume"]["hd95"] is None and empty["unmatched"]["gt"] == []
    assert empty["mean"]["volume"]["dice"] < skipped["mean"]["volume"]["dice"]


def test_case_folders_are_matched_by_name_even_when_there_is_one(tmp_path):
    _pair(tmp_path)
    (tmp_path / "pred" / "c1").rename(tmp_path / "pred" / "other")
    for missing in ("error", "skip", "empty"):  # no name in common: refused whatever --missing says
        with pytest.raises(InputError, match=r"No case names match .*\(--pred FILE --gt FILE\)"):
            evaluate(tmp_path / "pred", tmp_path / "gt", missing=missing)


def test_png_masks_are_paired_by_file_stem(tmp_path):
    gt = make_volume(shape=(3, 24, 24))
    names = ("s1", "s2", "s10")
    write_png_slices(gt.mask, tmp_path / "gt", names)
    write_png_slices(gt.mask[::-1], tmp_path / "pred", names[::-1])  # same slices, stored in another order
    assert evaluate(tmp_path / "pred", tmp_path / "gt")["cases"][0]["volume"]["dice"] == 1.0
    write_png_slices(gt.mask, tmp_path / "other", ("x1", "x2", "x3"))
    with pytest.raises(InputError, match="slice files differ"):
        evaluate(tmp_path / "other", tmp_path / "gt")


def test_one_bad_case_is_skipped_and_the_others_scored(tmp_path):
    _pair(tmp_path)
    bad = make_volume(shape=(5, 40, 40))
    write_nifti(bad.mask, bad.affine, tmp_path / "gt" / "c2" / "mask.nii.gz")
    write_nifti(bad.mask[:4], bad.affine, tmp_path / "pred" / "c2" / "mask.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "gt")
    assert [c["id"] for c in result["cases"]] == ["c1"]
    assert result["skipped"][0]["id"] == "c2" and "(4, 40, 40)" in result["skipped"][0]["reason"]
    r = CliRunner().invoke(cli, ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt")])
    assert r.exit_code == 2 and "c1" in r.output and "skipped c2" in r.output


def test_dicom_slices_are_ordered_by_position_not_file_name(tmp_path):
    _write_ct_series(tmp_path / "ct", [15.0, 10.0, 17.5, 12.5])  # names IM0000.. not in position order
    assert series_spacing(tmp_path / "ct")[0] == pytest.approx(2.5)
    _write_ct_series(tmp_path / "gap", [0.0, 2.5, 5.0, 10.0])
    with pytest.raises(InputError, match="uneven slice gaps"):
        series_spacing(tmp_path / "gap")


def _two_region_case():
    gt = np.zeros((3, 40, 40), bool)
    gt[0, 5:20, 2:15] = True
    gt[0, 25:35, 25:38] = True  # slice 0: two regions
    gt[1, 5:20, 2:15] = True
    gt[1, 0, 39] = True  # one-pixel fragment touching the border: not a region
    gt[2, 5:20, 2:15] = True
    gt[2, 25:35, 25:38] = True  # slice 2: two regions
    return gt


def test_two_region_slices_are_reported_separately(tmp_path):
    from liverrt.evaluation import region_report

    gt = _two_region_case()
    pred = gt.copy()
    pred[2, 18:27, 12:28] = True  # bridges the two regions of slice 2 into one
    rep = region_report(pred, gt, min_area=4)
    assert rep["gt"].tolist() == [2, 1, 2] and rep["pred"].tolist() == [2, 1, 1]
    assert rep["separated"].tolist() == [True, False, False]
    vol = make_volume(shape=(3, 40, 40))
    write_nifti(gt, vol.affine, tmp_path / "g.nii.gz")
    write_nifti(pred, vol.affine, tmp_path / "p.nii.gz")
    res = evaluate(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz", min_region_area=4, csv_path=tmp_path / "s.csv")
    mr = res["multi_region"]
    assert mr["slices"] == 2 and mr["separated"] == 0.5
    assert mr["mask_iou"] == pytest.approx((1.0 + res_slice_iou(pred[2], gt[2])) / 2)
    assert "every region found separately" in markdown_table(res)
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["gt_regions"] for r in rows] == ["2", "1", "2"] and rows[2]["separated"] == "False"
    single = evaluate(tmp_path / "g.nii.gz", tmp_path / "g.nii.gz", min_region_area=1000)
    assert single["multi_region"]["slices"] == 0
    with pytest.raises(InputError, match="min_region_area"):
        evaluate(tmp_path / "p.nii.gz", tmp_path / "g.nii.gz", min_region_area=0)


def res_slice_iou(p, g):
    return (p & g).sum() / (p | g).sum()


def test_a_ground_truth_file_scores_the_one_case_infer_wrote_whatever_its_name(tmp_path):
    """`infer -i ircad01/ -o out` then `eval --pred out --gt ircad01/liver.nii.gz`: case ircad01 vs file liver."""
    gt = make_volume(shape=(6, 40, 40))
    write_nifti(gt.mask, gt.affine, tmp_path / "liver.nii.gz")
    write_nifti(gt.mask, gt.affine, tmp_path / "out" / "ircad01" / "mask.nii.gz")
    for pred, truth in ((tmp_path / "out", tmp_path / "liver.nii.gz"), (tmp_path / "liver.nii.gz", tmp_path / "out")):
        result = evaluate(pred, truth)
        assert len(result["cases"]) == 1 and result["cases"][0]["volume"]["dice"] == 1.0
    write_nifti(gt.mask, gt.affine, tmp_path / "out" / "ircad02" / "mask.nii.gz")  # two cases: which one? refused
    with pytest.raises(InputError):
        evaluate(tmp_path / "out", tmp_path / "liver.nii.gz")
