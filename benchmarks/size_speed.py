"""CPU cost of the bundled U-Net's input size (issue 17, item 4): ms per slice at two sizes, one run.

    python benchmarks/size_speed.py CHECKPOINT [--sizes 256 512] [--threads 2] [--rounds 5]

The checkpoint's weights are exported at each size (the U-Net is fully convolutional; with a fixed
pixel size the field of view is kept, so 512 pixels are half as large). Sizes are timed in turns,
``--rounds`` times, with onnxruntime on the CPU at ``--threads`` threads:
* the network alone at batch 1 and 8 (ms per slice, median over the rounds), and
* ``Segmenter`` on the real ``ircad01`` volume (read excluded: preprocess, network, restore to
  512², threshold), ms per slice.
Ratios against the first size come from the same run. Quality at each size needs a model trained
at that size: score it with ``benchmarks/eval_real.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.bench.timing import time_call
from liverrt.data.io import read_nifti_volume
from liverrt.data.preprocess import PreprocessSpec, volume_input
from liverrt.export.onnx import export_onnx
from liverrt.machine import cpu_model
from liverrt.models import load_model
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def at_size(spec: PreprocessSpec, size: int) -> PreprocessSpec:
    """The same preprocessing at another input size: a fixed pixel size scales to keep the field of view."""
    if spec.pixel_mm is None:
        return spec.with_size(size)
    return replace(spec, size=size, pixel_mm=spec.pixel_mm * spec.size / size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    model, spec, ckpt = load_model(args.checkpoint)
    vol = read_nifti_volume(DATA / "ircad01" / "ct.nii.gz", case_id="ircad01")
    times: dict[int, dict[str, list[float]]] = {s: {"b1": [], "b8": [], "volume": []} for s in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        engines = {}
        for size in args.sizes:
            s_spec = at_size(spec, size)
            pt = save_checkpoint(Path(tmp) / f"u{size}.pt", model, model_name=ckpt["model_name"], spec=s_spec)
            onnx_path = Path(tmp) / f"u{size}.onnx"
            export_onnx(pt, onnx_path)
            engines[size] = open_engine("onnxruntime", onnx_path, threads=args.threads).activate()
        for _ in range(args.rounds):
            for size, eng in engines.items():
                x, _ = volume_input(vol, np.arange(40, 48), eng.info.spec)
                times[size]["b1"].append(min(time_call(lambda e=eng, b=x[:1]: e.infer(b), warmup=2, repeats=5)))
                times[size]["b8"].append(min(time_call(lambda e=eng, b=x: e.infer(b), warmup=1, repeats=3)) / 8)
                t0 = time.perf_counter()
                Segmenter(eng, batch_size=8).segment(vol)
                times[size]["volume"].append((time.perf_counter() - t0) / vol.shape[0])
        for eng in engines.values():
            eng.deactivate()
    base = args.sizes[0]
    rows = {s: {k: 1e3 * float(np.median(v)) for k, v in t.items()} for s, t in times.items()}
    print(f"{cpu_model()}, onnxruntime CPU, {args.threads} threads, {args.rounds} rounds, median ms per slice")
    print("| size | pixel mm | network b1 | network b8 | ircad01 whole (512², 129 slices) | ratio b1 / b8 / whole |")
    print("|---|---|---|---|---|---|")
    for s, r in rows.items():
        ratio = " / ".join(f"{r[k] / rows[base][k]:.2f}" for k in ("b1", "b8", "volume"))
        mm = at_size(spec, s).pixel_mm
        print(f"| {s} | {mm if mm else 'fit'} | {r['b1']:.1f} | {r['b8']:.1f} | {r['volume']:.1f} | {ratio} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
