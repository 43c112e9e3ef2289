"""What ``liverrt bench`` times when told nothing (the bundled default model), what it says when it cannot gate
(random weights, no checkpoint, quick's int8 ranges), and what ``--quick`` leaves out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from liverrt.bench import QUICK_SKIPS, SECTIONS, engines, markdown_report, run_bench
from liverrt.bench.subject import RandomWeights, bundled_checkpoint, prepare_subject
from liverrt.cli import cli
from liverrt.cli.bench import bench
from liverrt.errors import InputError
from liverrt.models.bundled import DEFAULT, BundledModel, bundled_model

ROOT = Path(__file__).resolve().parents[2]
GATE_VERDICTS = ("passed", "failed")


def _gate_cells(report: str) -> list[str]:
    """The last cell of each row of the report's gate table."""
    rows = [line for line in report.splitlines() if line.startswith("| onnxruntime") and line.count("|") == 7]
    return [row.rstrip(" |").rsplit("|", 1)[1].strip() for row in rows]


def test_the_default_is_the_bundled_model_with_the_checkpoint_it_was_exported_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found beside src/, not only from the repository's root
    subject = prepare_subject(tmp_path)
    model = bundled_model()
    assert subject.name == DEFAULT and subject.onnx == model.path and not subject.random_weights
    assert subject.checkpoint == (ROOT / model.card["checkpoint"]).resolve() and subject.no_checkpoint is None
    assert "the bundled default model" in subject.origin and "sha256 matches" in subject.origin
    assert not list(tmp_path.iterdir())  # nothing exported: the bundled ONNX is timed as installed


def test_a_bundled_model_without_its_checkpoint_says_why(tmp_path, monkeypatch, tiny_checkpoint):
    card = bundled_model().card
    monkeypatch.setattr(BundledModel, "card", property(lambda self: {**card, "checkpoint": "models/absent.pt"}))
    path, why = bundled_checkpoint(bundled_model())
    assert path is None and "not in the installed package" in why
    subject = prepare_subject(tmp_path)
    assert subject.checkpoint is None and subject.no_checkpoint == why
    # a file where the card says, but not the one the ONNX records
    monkeypatch.setattr(BundledModel, "card", property(lambda self: {**card, "checkpoint": str(tiny_checkpoint)}))
    path, why = bundled_checkpoint(bundled_model())
    assert path is None and "sha256 differs" in why


def test_model_and_random_weights_together_are_refused_before_any_work(tmp_path, tiny_checkpoint):
    with pytest.raises(InputError, match="expected one of them"):
        run_bench(tmp_path, model=tiny_checkpoint, random_weights=RandomWeights())
    result = CliRunner().invoke(cli, ["bench", "--model", str(tiny_checkpoint), "--random-weights",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "expected"), [([], None), (["--random-weights"], "unet_paper"),
                                                (["--random-weights", "--only", "engines"], "unet_paper"),
                                                (["--random-weights", "dncnn_sr"], "dncnn_sr")])
def test_random_weights_option_takes_an_optional_network(args, expected):
    assert bench.make_context("bench", list(args)).params["random_weights"] == expected


@pytest.mark.slow
def test_random_weights_are_timed_and_never_gated(tmp_path):
    full = run_bench(tmp_path, quick=True, random_weights=RandomWeights("unet_paper", size=64), batch_sizes=(1, 2),
                     sections=("engines",))
    results = full["engines"]
    assert results["subject"]["random_weights"] and {r["engine"] for r in results["rows"]} == {"torch", "onnxruntime"}
    assert [g["verdict"] for g in results["gates"]] == ["not gated: random weights"] * 3
    assert all(g["passed"] is None for g in results["gates"])
    report = (tmp_path / "report.md").read_text()
    assert report == markdown_report(full)
    assert "Model timed: **unet_paper (1,940,817 parameters, seeded random weights)**" in report
    assert _gate_cells(report) == ["not gated: random weights"] * 3
    assert "failed" not in report and not set(_gate_cells(report)) & set(GATE_VERDICTS)
    assert sum(line.startswith("- not gated: random weights: ") for line in report.splitlines()) == 1


@pytest.mark.slow
def test_an_onnx_file_is_timed_without_torch_and_says_why(tmp_path, tiny_onnx):
    results = run_bench(tmp_path, quick=True, model=tiny_onnx, batch_sizes=(1,), sections=("engines",))["engines"]
    assert {r["engine"] for r in results["rows"]} == {"onnxruntime"}
    assert results["speedup_onnxruntime_over_torch"] == {} and results["int8"]["batch_1"]["vs_torch"] is None
    assert {g["verdict"] for g in results["gates"]} == {"not gated: no checkpoint"}
    assert [s["variant"] for s in results["skipped"]][0] == "torch fp32"
    report = (tmp_path / "report.md").read_text()
    assert "- skipped torch fp32: an ONNX file was given" in report
    assert "- not gated: no checkpoint: the gate compares each variant with the PyTorch checkpoint" in report


@pytest.mark.slow
def test_the_default_quick_bench_times_the_bundled_model_and_lists_what_it_skips(tmp_path):
    full = run_bench(tmp_path, quick=True, batch_sizes=(1,))
    assert full["sections"] == list(SECTIONS) and set(full) >= set(SECTIONS)
    assert full["quick_skips"] == [line for s in SECTIONS for line in QUICK_SKIPS[s]]
    results = full["engines"]
    assert results["model"] == DEFAULT and results["subject"]["checkpoint"]
    assert {(r["engine"], r["precision"]) for r in results["rows"]} == {
        ("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"), ("onnxruntime", "int8")}
    verdicts = {g["precision"]: g["verdict"] for g in results["gates"]}
    # fp16 is gated and reported whatever its verdict: the bundled liver-unet's fp16 misses the worst-slice
    # limit on one phantom liver tip (ΔDice 0.027 > 0.01), as the export of its checkpoint measures
    assert verdicts["fp32"] == "passed" and verdicts["int8"] == "not gated: quick int8 ranges"
    fp16 = next(g for g in results["gates"] if g["precision"] == "fp16")
    assert fp16["verdict"] in ("passed", "failed") and fp16["mean_delta_dice"] < 2e-3
    assert full["metrics"]["compile"].keys() == {"environment"}  # quick: no fresh-cache compile
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith(f"Model timed: **{DEFAULT}** (the bundled default model")
    assert all(f"- {line}" in report for line in full["quick_skips"])
    assert [h for h in report.splitlines() if h.startswith("## ")] == [
        "## U-Net engines", "## Metric kernels (Numba) vs naive SciPy references"]
    assert all("| fp16 |" in line for line in report.splitlines() if "failed" in line)  # nothing else failed


@pytest.mark.slow
def test_the_full_bench_adds_int8_by_qat_with_its_gate_and_ratios(tmp_path, tiny_checkpoint, monkeypatch):
    # the full run's QAT variant on the quick budget (the full run's repeats and int8 range search take minutes)
    monkeypatch.setattr(engines, "QUICK", replace(engines.QUICK, qat=True))
    full = run_bench(tmp_path, quick=True, model=tiny_checkpoint, batch_sizes=(1,), sections=("engines",))
    results = full["engines"]
    assert ("onnxruntime", "int8-qat") in {(r["engine"], r["precision"]) for r in results["rows"]}
    gate = next(g for g in results["gates"] if g["precision"] == "int8-qat")
    assert gate["verdict"] in GATE_VERDICTS and 0 <= gate["mean_delta_dice"] <= gate["worst_delta_dice"] <= 1
    assert set(results["int8"]) == {"batch_1", "int8-qat batch_1"}
    assert results["int8"]["int8-qat batch_1"]["vs_onnxruntime_fp32"] > 0
    report = (tmp_path / "report.md").read_text()
    assert "- int8-qat onnxruntime at batch 1: " in report and "- int8 onnxruntime at batch 1: " in report
    assert f"| onnxruntime | int8-qat | {gate['mean_delta_dice']:.2e} |" in report


def test_the_quick_bench_says_it_leaves_qat_out():
    assert not engines.QUICK.qat and engines.FULL.qat
    assert any("quantization-aware" in line for line in QUICK_SKIPS["engines"])
