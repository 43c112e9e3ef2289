"""Engine latency per slice for every engine and precision available here, measured in one run.

The network is the study's U-Net with seeded random weights, or any liverrt
checkpoint (U-Net, Mask R-CNN, DnCNN-SR). Variants: torch eager (fp32),
onnxruntime fp32, fp16 and int8 (Q/DQ from phantom calibration slices), and
TensorRT when it is installed with a GPU (otherwise listed as skipped, with
the reason; the split Mask R-CNN has no plan). For each: network only
(``engine.infer``; for Mask R-CNN the three graphs and the NumPy/Numba steps
between them) and end to end at batch 1 and 8, and the verification gate of
each variant against torch (ΔDice; for DnCNN-SR the PSNR of its output
against PyTorch's). End to end is the Segmenter (preprocess, network,
restore to the source grid, threshold) for the segmentation networks, and
preprocess + network for DnCNN-SR, whose output is an image.

Every number is measured here, on the same preprocessed phantom slices (not
random tensors), after warm-up: median and p95 over repeats, per batch and
per slice, slices/s, and the onnxruntime/torch speed ratio, plus the machine
and library versions. The results are not assertions; they are reported.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from liverrt.artifacts import ArtifactInfo, artifact_info, onnx_metadata
from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.artifacts.metadata import PRECISIONS
from liverrt.bench.timing import time_call
from liverrt.data.phantom import PhantomConfig, synth_case
from liverrt.data.preprocess import PreprocessSpec, to_input
from liverrt.data.volume import Volume
from liverrt.export import precision as prec
from liverrt.export.gate import default_volumes, verify_artifact
from liverrt.export.onnx import export_onnx
from liverrt.export.pipeline import default_calib_method
from liverrt.machine import machine_info
from liverrt.models import build, model_class
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter
from liverrt.runtime.tensorrt_loader import current_machine

log = logging.getLogger(__name__)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _prepare_model(work: Path, size: int, model: Path | None) -> tuple[Path, Path]:
    """A checkpoint (given, or the paper U-Net with seeded random weights) and its verified ONNX export."""


    if model is None:
        torch.manual_seed(0)
        model = save_checkpoint(work / "unet_random.pt", build("unet_paper").eval(), model_name="unet_paper",
                                spec=PreprocessSpec(size=size))
    onnx_path = work / f"{artifact_info(model).kind}.onnx"
    export_onnx(model, onnx_path)
    return model, onnx_path


def _slices(size: int, n: int) -> np.ndarray:
    vol = synth_case(0, PhantomConfig(size=size, slices=max(n, 8)))
    idx = np.linspace(0, vol.shape[0] - 1, n).round().astype(int)
    x, _ = to_input(vol.image[idx], vol.intensity, PreprocessSpec(size=size))
    return x


def _variants(work: Path, ckpt: Path, onnx_path: Path, info, on_step,
              int8_method: str) -> tuple[list[tuple[str, str, Path]], list[dict]]:
    """(engine, precision, artifact) triples that can run here, and the ones skipped with their reason.

    ``info``: the checkpoint's :class:`liverrt.artifacts.ArtifactInfo` (kind, PreprocessSpec).
    """

    variants = [("torch", "fp32", ckpt), ("onnxruntime", "fp32", onnx_path)]
    skipped = []
    stem = onnx_path.stem
    if on_step:
        on_step("fp16 and int8 graphs")
    try:  # a split Mask R-CNN converts its rpn graph; the box/mask graphs beside it stay fp32
        prec.to_fp16(onnx_path, work / f"{stem}.fp16.onnx")
        variants.append(("onnxruntime", "fp16", work / f"{stem}.fp16.onnx"))
    except Exception as exc:  # reported, not fatal: the other variants still run
        skipped.append({"variant": "onnxruntime fp16", "reason": str(exc)[:200]})
    try:
        calib = prec.calibration_slices(default_volumes(info.spec.size, cases=2, seed=2000), info.spec, n=32)
        prec.to_int8(onnx_path, work / f"{stem}.int8.onnx", calib, calibration_source="phantoms (bench)",
                     method=int8_method)
        variants.append(("onnxruntime", "int8", work / f"{stem}.int8.onnx"))
    except Exception as exc:
        skipped.append({"variant": "onnxruntime int8", "reason": str(exc)[:200]})
    no_plan = model_class(info.kind).unsupported_formats.get("tensorrt")
    if no_plan:
        skipped.append({"variant": "tensorrt", "reason": no_plan})
        return variants, skipped
    try:
        current_machine()
        for precision in PRECISIONS:
            path = onnx_path if precision == "fp32" else work / f"{stem}.{precision}.onnx"
            if precision == "int8" and path.exists():  # the onnxruntime graph's zero points -128: TensorRT refuses
                path = prec.to_int8(onnx_path, work / f"{stem}.int8.tensorrt.onnx", calib,
                                    calibration_source="phantoms (bench)", method=int8_method, target="tensorrt")
            if path.exists():
                variants.append(("tensorrt", precision, path))
    except Exception as exc:
        skipped.append({"variant": "tensorrt", "reason": str(exc).split(";")[0][:200]})
    return variants, skipped


def run_engines(*, quick: bool = True, model: Path | None = None, batch_sizes: tuple[int, ...] = (1, 8),
                on_step: Callable[[str], None] | None = None) -> dict:
    """Measure the engines of ``model`` (default: the random-weight U-Net); returns the results dict
    (see :func:`markdown_report`)."""
    step = on_step or (lambda _: None)
    repeats = {1: 10, 8: 3} if quick else {1: 30, 8: 10}
    with tempfile.TemporaryDirectory(prefix="liverrt-bench-") as tmp:
        work = Path(tmp)
        step(f"exporting {'the U-Net' if model is None else model} to ONNX")
        t0 = time.perf_counter()
        ckpt, onnx_path = _prepare_model(work, 512, model)
        export_s = time.perf_counter() - t0
        info = artifact_info(ckpt)
        # the output-aware range search takes many minutes at 512² on two cores; the quick bench of the
        # random-weight model (whose gate says little anyway) times the same graph with one-pass ranges
        int8_method = "percentile" if quick and model is None else default_calib_method(info.kind)
        variants, skipped = _variants(work, ckpt, onnx_path, info, on_step, int8_method)
        int8_calibration = _calibration_meta(work / f"{onnx_path.stem}.int8.onnx")
        inputs = _BenchInputs.make(info, batch_sizes)
        rows, gates = [], []
        for engine_name, precision, path in variants:
            with open_engine(engine_name, path) as engine:
                for bs in batch_sizes:
                    step(f"{engine_name} {precision} batch {bs}")
                    rows.append(_time_engine(engine, precision, bs, inputs, repeats.get(bs, max(3, 24 // bs))))
            if engine_name != "torch":
                step(f"verification gate {engine_name} {precision}")
                gates.append(_gate_row(ckpt, path, engine_name, precision, info))
    speedups, int8 = _ratios(rows, batch_sizes)
    return {
        "benchmark": f"{info.kind}_engines",
        "kind": info.kind,
        "model": "unet_paper (1,940,817 parameters, seeded random weights)" if model is None else str(model),
        "input": "(N, {}, {}, {}) float32, preprocessed phantom slices".format(*info.spec.input_shape(1)[1:]),
        "quick": quick,
        "export_seconds": export_s,
        "rows": rows,
        "gates": gates,
        "skipped": skipped,
        "speedup_onnxruntime_over_torch": speedups,
        "int8": int8,
        "int8_calibration": int8_calibration,
        "machine": machine_info(),
    }


@dataclass(frozen=True)
class _BenchInputs:
    """What every engine is timed on: preprocessed slices (network only) and a phantom volume (end to end)."""

    info: ArtifactInfo
    slices: np.ndarray
    volume: Volume

    @classmethod
    def make(cls, info: ArtifactInfo, batch_sizes: tuple[int, ...]) -> _BenchInputs:
        size = info.spec.size
        volume = synth_case(1, PhantomConfig(size=max(64, min(size, 512)), slices=max(batch_sizes)))
        return cls(info, _slices(size, max(batch_sizes)), volume)


def _time_engine(engine, precision: str, bs: int, inputs: _BenchInputs, n_rep: int) -> dict:
    """One row: the network alone on a batch of ``bs`` slices, and the whole pipeline on a volume."""
    batch = np.ascontiguousarray(inputs.slices[:bs])
    times = time_call(lambda b=batch: engine.infer(b), warmup=2, repeats=n_rep)
    vol = inputs.volume if bs > 1 else _first_slices(inputs.volume, 1)
    if model_class(inputs.info.kind).task == "denoising":  # an image out: preprocess + network
        def whole(v=vol, e=engine, b=bs):
            x, _ = to_input(v.image, v.intensity, inputs.info.spec, v.spacing)
            for i in range(0, x.shape[0], b):
                e.infer(x[i:i + b])
    else:
        whole = partial(Segmenter(engine, batch_size=bs).segment, vol)
    e2e = time_call(whole, warmup=1, repeats=max(2, n_rep // 2))
    med, p95 = statistics.median(times), _percentile(times, 95)
    return {"engine": engine.name, "precision": precision, "batch": bs, "repeats": len(times),
            "batch_ms_median": med * 1e3, "batch_ms_p95": p95 * 1e3,
            "slice_ms_median": med * 1e3 / bs, "slice_ms_p95": p95 * 1e3 / bs, "slices_per_s": bs / med,
            "e2e_slice_ms_median": statistics.median(e2e) * 1e3 / vol.shape[0]}


def _gate_row(ckpt: Path, path: Path, engine_name: str, precision: str, info: ArtifactInfo) -> dict:
    """The verification gate of one variant on phantoms, as the report shows it."""
    rep = verify_artifact(ckpt, path, default_volumes(info.spec.size, cases=2), engine=engine_name)
    gate = {"engine": engine_name, "precision": precision, "passed": rep.passed}
    if model_class(info.kind).gate == "psnr":
        gate.update(mean_psnr_db=rep.mean["psnr_db"], worst_psnr_db=rep.worst["psnr_db"])
    else:
        gate.update(mean_delta_dice=rep.mean["delta_dice"], worst_delta_dice=rep.worst["delta_dice"],
                    mean_delta_boundary_iou=rep.mean["delta_boundary_iou"])
    return gate


def _ratios(rows: list[dict], batch_sizes: tuple[int, ...]) -> tuple[dict, dict]:
    """Per batch size: onnxruntime fp32 over torch, and int8 over both (ratios of one run's medians)."""
    by = {(r["engine"], r["precision"], r["batch"]): r["slice_ms_median"] for r in rows}
    speedups = {f"batch_{bs}": by[("torch", "fp32", bs)] / by[("onnxruntime", "fp32", bs)] for bs in batch_sizes}
    int8 = {}
    for bs in batch_sizes:
        if ("onnxruntime", "int8", bs) in by:
            q = by[("onnxruntime", "int8", bs)]
            int8[f"batch_{bs}"] = {"int8_ms_per_slice": q, "vs_onnxruntime_fp32": by[("onnxruntime", "fp32", bs)] / q,
                                   "vs_torch": by[("torch", "fp32", bs)] / q}
    return speedups, int8


def _calibration_meta(path: Path) -> dict | None:


    if not path.exists():
        return None
    meta = onnx_metadata(path)
    return json.loads(meta["liverrt.calibration"]) if "liverrt.calibration" in meta else None


def _first_slices(volume, n: int):
    return replace(volume, image=volume.image[:n], mask=None if volume.mask is None else volume.mask[:n],
                   instances=None, slice_names=volume.slice_names[:n] if volume.slice_names else volume.slice_names)


def markdown_report(results: dict) -> str:
    m = results["machine"]
    described = model_class(results.get("kind", "unet"))
    title = described.title
    lines = [
        f"## {title} engines",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']})"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"),
        f"- date: {m['date']}; python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- model: {results['model']}; input {results['input']}",
        f"- mode: {'quick' if results['quick'] else 'full'}; warm-up 2 calls, then median/p95 over the repeats",
        "",
        "| engine | precision | batch | repeats | ms/batch (median) | ms/batch (p95) | ms/slice network | "
        "slices/s | ms/slice end to end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['engine']} | {r.get('precision', 'fp32')} | {r['batch']} | {r['repeats']} | "
            f"{r['batch_ms_median']:.1f} | {r['batch_ms_p95']:.1f} | {r['slice_ms_median']:.1f} | "
            f"{r['slices_per_s']:.2f} | {r.get('e2e_slice_ms_median', float('nan')):.1f} |"
        )
    lines.append("")
    for k, v in results["speedup_onnxruntime_over_torch"].items():
        lines.append(f"- onnxruntime / torch speed ratio at {k.replace('_', ' ')}: **{v:.2f}x** "
                     f"(torch ms/slice ÷ onnxruntime ms/slice, same run)")
    for k, v in results.get("int8", {}).items():
        lines.append(f"- int8 onnxruntime at {k.replace('_', ' ')}: {v['int8_ms_per_slice']:.1f} ms/slice, "
                     f"**{v['vs_onnxruntime_fp32']:.2f}x** onnxruntime fp32, **{v['vs_torch']:.2f}x** torch eager")
    cal = results.get("int8_calibration")
    if cal:
        lines.append(f"- int8 activation ranges: {cal['method']}"
                     + (f", {len(cal['float_tensors'])} tensors left float" if cal.get("float_tensors") else "")
                     + (f" (calibration ΔDice {cal['calib_delta_dice']:.2e})"
                        if cal.get("calib_delta_dice") is not None else ""))
    if described.task == "denoising":
        lines.append(f"- end to end for {title}: preprocess + network (its output is an image)")
    if described.split_export:
        lines.append(f"- {title}: 'network' is the three graphs plus the NumPy/Numba steps between them (proposals, "
                     "NMS, mask pasting); fp16/int8 convert the backbone + FPN + RPN graph, the RoI heads stay fp32")
    if results.get("gates"):
        random = "random weights" in results["model"]
        lines += ["", "Verification gate against torch (2 phantom cases" + ("; on a random-weight model its numbers "
                  "say little about a trained one" if random else "") + "):", ""]
        if described.gate == "psnr":
            lines += ["| engine | precision | mean PSNR vs PyTorch (dB) | worst slice (dB) | gate |",
                      "|---|---|---|---|---|"]
            lines += [f"| {g['engine']} | {g['precision']} | {g['mean_psnr_db']:.1f} | {g['worst_psnr_db']:.1f} | "
                      f"{'passed' if g['passed'] else 'failed'} |" for g in results["gates"]]
        else:
            lines += ["| engine | precision | mean ΔDice | worst ΔDice | mean ΔBoundary IoU | gate |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {g['engine']} | {g['precision']} | {g['mean_delta_dice']:.2e} | {g['worst_delta_dice']:.2e}"
                      f" | {g['mean_delta_boundary_iou']:.2e} | {'passed' if g['passed'] else 'failed'} |"
                      for g in results["gates"]]
    for sk in results.get("skipped", []):
        lines.append(f"- skipped {sk['variant']}: {sk['reason']}")
    return "\n".join(lines) + "\n"
