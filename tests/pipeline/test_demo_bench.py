"""The demo and the bench, on a miniature budget: every promised file is written."""

import json

import pytest

from liverrt.bench import markdown_report, run_bench
from liverrt.demo import DemoConfig, run_demo
from liverrt.errors import InputError


@pytest.mark.slow
def test_demo_writes_report_metrics_model_checkpoint_and_overlays(tmp_path):
    cfg = DemoConfig(cases=4, test_cases=1, val_cases=1, phantom_size=64, phantom_slices=8, train_size=32,
                     epochs=1, min_iou=0.0)
    result = run_demo(tmp_path, cfg)
    for name in ("report.md", "metrics.json", "model.onnx", "train/best.pt", "train/curves.png",
                 "train/train_log.csv"):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "overlays").glob("*.png"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["held_out_cases"] == ["phantom_003"]
    assert [c["id"] for c in metrics["evaluation"]["cases"]] == ["phantom_003"]
    assert metrics["export"]["parity"]["passed"]
    assert not set(metrics["training"]["split"]["train"]) & {"phantom_002", "phantom_003"}
    report = (tmp_path / "report.md").read_text()
    assert "not a substitute for real CT" in report and "reduced input size of 32x32" in report
    assert result.passed


def test_demo_refuses_too_few_cases(tmp_path):
    with pytest.raises(InputError, match="cannot hold"):
        run_demo(tmp_path, DemoConfig(cases=3, test_cases=2, val_cases=1))


@pytest.mark.slow
def test_bench_reports_both_engines_and_ratios(tmp_path, tiny_checkpoint):
    full = run_bench(tmp_path, quick=True, model=tiny_checkpoint, batch_sizes=(1, 2), sections=("engines",))
    results = full["engines"]
    engines = {(r["engine"], r["precision"], r["batch"]) for r in results["rows"]}
    assert engines == {(e, p, b) for e, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                                              ("onnxruntime", "int8")) for b in (1, 2)}
    assert all(r["slice_ms_median"] > 0 and r["slices_per_s"] > 0 and r["e2e_slice_ms_median"] > 0
               for r in results["rows"])
    assert {(g["engine"], g["precision"]) for g in results["gates"]} == {("onnxruntime", p) for p in
                                                                        ("fp32", "fp16", "int8")}
    verdicts = {g["precision"]: g["verdict"] for g in results["gates"]}  # quick: int8 with percentile ranges
    assert verdicts["fp32"] in ("passed", "failed") and verdicts["int8"] == "not gated: quick int8 ranges"
    assert results["subject"]["checkpoint"] == str(tiny_checkpoint) and not results["subject"]["random_weights"]
    assert set(results["int8"]) == {"batch_1", "batch_2"}
    assert any(s["variant"] == "tensorrt" for s in results["skipped"])  # no TensorRT here, and it says why
    assert set(results["speedup_onnxruntime_over_torch"]) == {"batch_1", "batch_2"}
    assert results["machine"]["cores"] >= 1 and results["machine"]["versions"]["torch"]
    assert (tmp_path / "report.md").read_text() == markdown_report(full)
    assert "## U-Net engines" in markdown_report(full)
    assert "Model timed: **tiny.pt** (checkpoint" in markdown_report(full)
    assert json.loads((tmp_path / "results.json").read_text())["engines"]["rows"] == results["rows"]


@pytest.mark.slow
def test_bench_times_a_mask_rcnn_and_says_why_it_has_no_plan(tmp_path, maskrcnn_ckpt):
    results = run_bench(tmp_path, quick=True, model=maskrcnn_ckpt, batch_sizes=(1, 2), sections=("engines",))["engines"]
    assert results["kind"] == "maskrcnn" and results["benchmark"] == "maskrcnn_engines"
    assert {(r["engine"], r["precision"]) for r in results["rows"]} == {
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")}
    assert all(r["e2e_slice_ms_median"] > 0 for r in results["rows"])
    assert results["int8_calibration"]["method"] == "minmax"  # Mask R-CNN's default, not the U-Net's search
    assert {g["precision"] for g in results["gates"]} == {"fp32", "fp16", "int8"}
    assert all("mean_delta_dice" in g for g in results["gates"])
    assert [s["reason"] for s in results["skipped"] if s["variant"] == "tensorrt"][0].startswith(
        "the split Mask R-CNN has no TensorRT plan")
    report = (tmp_path / "report.md").read_text()
    assert "## Mask R-CNN engines" in report and "U-Net" not in report and "int8 all three graphs" in report


@pytest.mark.slow
def test_bench_times_dncnn_sr_and_gates_it_by_psnr(tmp_path):
    import torch

    from liverrt.artifacts.checkpoint import save_checkpoint
    from liverrt.data.preprocess import PreprocessSpec
    from liverrt.models.dncnn_sr import DnCNNSR

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "dn.pt", DnCNNSR(channels=8).eval(), model_name="dncnn_sr",
                           spec=PreprocessSpec(size=64))
    results = run_bench(tmp_path / "out", quick=True, model=ckpt, batch_sizes=(1, 2), sections=("engines",))["engines"]
    assert results["kind"] == "dncnn_sr"
    assert {(r["engine"], r["precision"]) for r in results["rows"]} == {
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")}
    assert all(r["e2e_slice_ms_median"] > 0 for r in results["rows"])
    assert len(results["gates"]) == 3
    gated = [g for g in results["gates"] if g["precision"] != "int8"]  # quick: int8 timed, not gated
    assert all(set(g) >= {"mean_psnr_db", "worst_psnr_db"} for g in gated)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## DnCNN-SR engines" in report and "mean PSNR vs PyTorch" in report
