"""U-Net engine latency per slice, torch eager vs onnxruntime, measured in one run.

Every number is measured here, on the same preprocessed phantom slices (not
random tensors), after warm-up: median and p95 over repeats, per batch and
per slice, slices/s, and the onnxruntime/torch speed ratio, plus the machine
and library versions. The results are not assertions; they are reported.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from liverrt.bench.timing import time_call
from liverrt.machine import machine_info

log = logging.getLogger(__name__)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _prepare_model(work: Path, size: int, model: Path | None) -> tuple[Path, Path]:
    """A checkpoint (given, or the paper U-Net with seeded random weights) and its verified ONNX export."""
    import torch

    from liverrt.data.preprocess import PreprocessSpec
    from liverrt.export.onnx import export_onnx
    from liverrt.models import build
    from liverrt.training.checkpoint import save_checkpoint

    if model is None:
        torch.manual_seed(0)
        model = save_checkpoint(work / "unet_random.pt", build("unet_paper").eval(), model_name="unet_paper",
                                spec=PreprocessSpec(size=size))
    onnx_path = work / "unet.onnx"
    export_onnx(model, onnx_path)
    return model, onnx_path


def _slices(size: int, n: int) -> np.ndarray:
    from liverrt.data.phantom import PhantomConfig, synth_case
    from liverrt.data.preprocess import PreprocessSpec, to_input

    vol = synth_case(0, PhantomConfig(size=size, slices=max(n, 8)))
    idx = np.linspace(0, vol.shape[0] - 1, n).round().astype(int)
    x, _ = to_input(vol.image[idx], vol.intensity, PreprocessSpec(size=size))
    return x


def run_engines(*, quick: bool = True, model: Path | None = None, batch_sizes: tuple[int, ...] = (1, 8),
                on_step: Callable[[str], None] | None = None) -> dict:
    """Measure the U-Net engines; returns the results dict (see :func:`markdown_report`)."""
    from liverrt.artifact import artifact_info
    from liverrt.runtime import open_engine

    repeats = {1: 10, 8: 3} if quick else {1: 30, 8: 10}
    with tempfile.TemporaryDirectory(prefix="liverrt-bench-") as tmp:
        work = Path(tmp)
        if on_step:
            on_step("exporting the U-Net to ONNX")
        t0 = time.perf_counter()
        ckpt, onnx_path = _prepare_model(work, 512, model)
        export_s = time.perf_counter() - t0
        size = artifact_info(ckpt).spec.size
        data = _slices(size, max(batch_sizes))
        rows = []
        for engine_name, path in (("torch", ckpt), ("onnxruntime", onnx_path)):
            with open_engine(engine_name, path) as engine:
                for bs in batch_sizes:
                    if on_step:
                        on_step(f"{engine_name} batch {bs}")
                    batch = np.ascontiguousarray(data[:bs])
                    times = time_call(lambda b=batch: engine.infer(b), warmup=2,
                                      repeats=repeats.get(bs, max(3, 24 // bs)))
                    med = statistics.median(times)
                    rows.append({
                        "engine": engine_name, "batch": bs, "repeats": len(times),
                        "batch_ms_median": med * 1e3, "batch_ms_p95": _percentile(times, 95) * 1e3,
                        "slice_ms_median": med * 1e3 / bs, "slice_ms_p95": _percentile(times, 95) * 1e3 / bs,
                        "slices_per_s": bs / med,
                    })
    by = {(r["engine"], r["batch"]): r for r in rows}
    ratios = {
        f"batch_{bs}": by[("torch", bs)]["slice_ms_median"] / by[("onnxruntime", bs)]["slice_ms_median"]
        for bs in batch_sizes
    }
    return {
        "benchmark": "unet_engines",
        "model": "unet_paper (1,940,817 parameters)" if model is None else str(model),
        "input": f"(N, 1, {size}, {size}) float32, preprocessed phantom slices",
        "quick": quick,
        "export_seconds": export_s,
        "rows": rows,
        "speedup_onnxruntime_over_torch": ratios,
        "machine": machine_info(),
    }


def markdown_report(results: dict) -> str:
    m = results["machine"]
    lines = [
        "## U-Net engines",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']})"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"),
        f"- date: {m['date']}; python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- model: {results['model']}; input {results['input']}",
        f"- mode: {'quick' if results['quick'] else 'full'}; warm-up 2 calls, then median/p95 over the repeats",
        "",
        "| engine | batch | repeats | ms/batch (median) | ms/batch (p95) | ms/slice (median) | slices/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['engine']} | {r['batch']} | {r['repeats']} | {r['batch_ms_median']:.1f} | {r['batch_ms_p95']:.1f} "
            f"| {r['slice_ms_median']:.1f} | {r['slices_per_s']:.2f} |"
        )
    lines.append("")
    for k, v in results["speedup_onnxruntime_over_torch"].items():
        lines.append(f"- onnxruntime / torch speed ratio at {k.replace('_', ' ')}: **{v:.2f}x** "
                     f"(torch ms/slice ÷ onnxruntime ms/slice, same run)")
    return "\n".join(lines) + "\n"
