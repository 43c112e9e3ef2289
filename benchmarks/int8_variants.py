"""The INT8 U-Net graphs liverrt can write, timed against fp32 on onnxruntime CPU in one run.

``python benchmarks/int8_variants.py [--model CKPT] [--size 512] [--threads 2] [--repeats 12] [--runs 1] [--profile]``

Variants, all from the same fp32 export and the same phantom calibration
slices with one-pass ranges (``--calib-method percentile``; the range search
changes scales, not the graph, except for tensors it leaves float):

* ``int8 onnxruntime``: the default for ``--format onnx`` (Relu outputs in
  [0, max] with zero point -128, so onnxruntime fuses Conv + Relu);
* ``int8 tensorrt``: zero points 0 only (what TensorRT accepts), run here on
  onnxruntime to show the cost of the symmetric Relu outputs on a CPU;
* ``int8 onnxruntime, ConvTranspose``: the same with the up-convolutions left
  as ConvTranspose (before 2026-12-07), which onnxruntime runs in float;
* ``int8 untied``: without channel equalisation, scale ties and [0, max]
  ranges (separate symmetric scales on each Conv output and Relu output), as
  onnxruntime's quantize_static places them.

Batches alternate between variants so load on the machine hits all alike;
the report gives the median ms per slice at batch 1 and 8 and the ratio to
fp32, for each of ``--runs`` timing runs (the graphs are made once).
``--profile`` adds onnxruntime's per-operator time for each variant.
Random weights by default (timing does not depend on them).
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from liverrt.artifacts import artifact_info
from liverrt.bench.engines import _prepare_model, _slices
from liverrt.export import precision as prec
from liverrt.export.gate import default_volumes


def _untied(src: Path, out: Path, calib: np.ndarray) -> Path:
    """quantize_static's own graph: no equalisation, ties, unsigned ranges or fallback."""
    import onnx

    from liverrt.export import precision as p

    def plain(model: onnx.ModelProto) -> int:
        return 0

    saved = p.tie_scales, p.unsigned_relu_ranges, p.equalize
    p.tie_scales, p.unsigned_relu_ranges, p.equalize = plain, plain, lambda *a, **k: 0
    try:
        return p.to_int8(src, out, calib, method="percentile")
    finally:
        p.tie_scales, p.unsigned_relu_ranges, p.equalize = saved


def _convtranspose_kept(src: Path, out: Path, calib: np.ndarray) -> Path:
    """The onnxruntime target without :func:`~liverrt.export.precision.shuffle_upconvs`."""
    import dataclasses

    from liverrt.export import precision as p

    saved = p.INT8_TARGETS["onnxruntime"]
    p.INT8_TARGETS["onnxruntime"] = dataclasses.replace(saved, shuffled_upconvs=False)
    try:
        return p.to_int8(src, out, calib, method="percentile")
    finally:
        p.INT8_TARGETS["onnxruntime"] = saved


def _session(path: Path, threads: int, profile: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _op_times(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> dict[str, float]:
    for _ in range(runs):
        sess.run(None, {"image": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    total: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total[e["args"]["op_name"]] += e["dur"] / runs / 1000.0
    return dict(total.most_common(8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a U-Net checkpoint (default: random weights)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--runs", type=int, default=1, help="timing runs, each reported (the 60-ms target: 5)")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="liverrt-int8-") as tmp:
        work = Path(tmp)
        _, fp32 = _prepare_model(work, args.size, args.model)
        spec = artifact_info(fp32).spec
        calib = prec.calibration_slices(default_volumes(spec.size, cases=2, seed=2000), spec, n=16)
        paths = {
            "fp32": fp32,
            "int8 onnxruntime": prec.to_int8(fp32, work / "ort.onnx", calib, method="percentile"),
            "int8 onnxruntime, ConvTranspose": _convtranspose_kept(fp32, work / "convt.onnx", calib),
            "int8 tensorrt": prec.to_int8(fp32, work / "trt.onnx", calib, method="percentile", target="tensorrt"),
            "int8 untied": _untied(fp32, work / "untied.onnx", calib),
        }
        data = _slices(spec.size, 8)
        sessions = {k: _session(p, args.threads) for k, p in paths.items()}
        rows = []
        for run, bs in ((run, bs) for run in range(1, args.runs + 1) for bs in (1, 8)):
            x = np.ascontiguousarray(data[:bs])
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for s in sessions.values():  # warm-up
                s.run(None, {"image": x})
            for _ in range(args.repeats if bs == 1 else max(3, args.repeats // 3)):
                for k, s in sessions.items():
                    t0 = time.perf_counter()
                    s.run(None, {"image": x})
                    times[k].append((time.perf_counter() - t0) / bs * 1e3)
            base = statistics.median(times["fp32"])
            rows += [(run, k, bs, statistics.median(v), base / statistics.median(v)) for k, v in times.items()]
        print(f"U-Net {spec.size}², onnxruntime {ort.__version__} CPU, {args.threads} threads")
        print("| run | graph | batch | ms/slice (median) | speed vs fp32 |\n|---|---|---|---|---|")
        for run, k, bs, ms, ratio in rows:
            print(f"| {run} | {k} | {bs} | {ms:.1f} | {ratio:.2f}x |")
        if args.profile:
            x = np.ascontiguousarray(data[:1])
            for k, p in paths.items():
                ops = _op_times(_session(p, args.threads, str(work / k.replace(" ", "_"))), x, 4)
                print(f"\n{k}: " + ", ".join(f"{op} {ms:.1f} ms" for op, ms in ops.items()))


if __name__ == "__main__":
    main()
