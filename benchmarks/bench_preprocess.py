"""``to_input`` against the plain formula it replaced, timed in one run.

``python benchmarks/bench_preprocess.py [--size 512] [--repeats 15]``

The reference is the earlier implementation: one temporary array per step
(cast, subtract, divide, NaN handling, clip, optional 1/255 rounding), then
torch's placement into a zero-filled batch. ``to_input`` windows in place in
one float32 buffer and writes slices already on the network grid straight
into the batch. Calls alternate between the two so load on the machine hits
both alike; the report gives median ms per slice, the ratio, and whether the
outputs are bit-identical (they must be).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from liverrt.data.phantom import PhantomConfig, synth_case
from liverrt.data.preprocess import PreprocessSpec, _place, _resample, placement, to_input


def reference(slices: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    lo = spec.window_center - spec.window_width / 2.0
    x = (slices.astype(np.float32) - np.float32(lo)) / np.float32(spec.window_width)
    x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    if spec.quantize_8bit:
        x = np.round(x * 255.0) / 255.0
    p = placement(slices.shape[1:], spec)
    t = torch.from_numpy(np.ascontiguousarray(x.astype(np.float32, copy=False)))[:, None]
    return _place(_resample(t, p.scaled), p).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    vol = synth_case(1, PhantomConfig(size=args.size, slices=32))
    print(f"to_input vs the plain formula, {args.size}x{args.size} int16 HU slices, torch threads "
          f"{torch.get_num_threads()}, {args.repeats} alternating calls each\n")
    print("| quantize_8bit | batch | plain formula ms/slice | to_input ms/slice | ratio | bit-identical |")
    print("|---|---:|---:|---:|---:|---|")
    for quantize in (False, True):
        spec = PreprocessSpec(size=args.size, quantize_8bit=quantize)
        for batch in (8, 32):
            img = vol.image[:batch]
            same = np.array_equal(reference(img, spec), to_input(img, "hu", spec)[0])
            times: dict[str, list[float]] = {"ref": [], "new": []}
            for _ in range(args.repeats):
                for name, fn in (("ref", lambda i=img, s=spec: reference(i, s)),
                                 ("new", lambda i=img, s=spec: to_input(i, "hu", s))):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            ref, new = (statistics.median(times[k]) * 1e3 / batch for k in ("ref", "new"))
            print(f"| {quantize} | {batch} | {ref:.3f} | {new:.3f} | {ref / new:.1f}x | {same} |")


if __name__ == "__main__":
    main()
