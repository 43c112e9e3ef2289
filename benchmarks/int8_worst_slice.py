"""Why an INT8 U-Net fails the gate's worst-slice limit: where its error comes from, measured.

``python benchmarks/int8_worst_slice.py FP32.onnx INT8.onnx CASES [--greedy 4]``

FP32.onnx / INT8.onnx: an int8 export and the fp32 graph it was made from
(``liverrt export --precision int8`` keeps both); CASES: held-out cases in any
layout liverrt reads. Networks only (no restore to the source grid), so the
per-slice ΔDice is the int8 graph's against the fp32 graph's on the network's
input grid. Prints:

1. the worst slices, with how many of the fp32 mask's pixels the fp32 network
   itself is unsure of (probability within 0.2 of the threshold) and how far
   from the threshold the flipped pixels were;
2. weights alone in int8 (every activation Q/DQ pair removed): the weights'
   share of the error;
3. each activation scale left float on its own: what one more float scale can do;
4. with ``--greedy K``: the K scales that, left float one after another, most
   lower the worst slice. This is chosen on the held-out slices themselves, an
   oracle: a bound on what the calibration-driven fallback could reach, not a
   method.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from liverrt.artifacts import artifact_info
from liverrt.data.preprocess import to_input
from liverrt.data.sources import load_cases
from liverrt.export import calibrate


def _runner(x: np.ndarray, threads: int):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads

    def run(model: Path | onnx.ModelProto) -> np.ndarray:
        src = str(model) if isinstance(model, Path) else model.SerializeToString()
        sess = ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        return np.concatenate([sess.run(["prob"], {"image": x[i:i + 8]})[0] for i in range(0, len(x), 8)])[:, 0]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("cases", type=Path)
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    info = artifact_info(args.int8)
    volumes = load_cases(args.cases).volumes
    x = np.concatenate([to_input(v.image, v.intensity, info.spec)[0] for v in volumes]).astype(np.float32)
    names = [f"{v.case_id}:{i}" for v in volumes for i in range(v.shape[0])]
    run = _runner(x, args.threads)
    t = info.threshold
    ref = run(args.fp32)
    a = ref >= t

    def delta(prob: np.ndarray) -> np.ndarray:
        return calibrate._delta_dice(a[:, None], (prob >= t)[:, None])

    model = onnx.load(str(args.int8))
    out = run(args.int8)
    base = delta(out)
    print(f"int8 against fp32 on {len(names)} slices: mean ΔDice {base.mean():.2e}, worst {base.max():.3e}")
    print("\n| slice | ΔDice | fp32 mask px | fp32 px with |p - t| < 0.2 | flipped px | flipped |p - t| median / max |")
    print("|---|---|---|---|---|---|")
    for i in np.argsort(base)[::-1][:5]:
        flip = a[i] != (out[i] >= t)
        dist = np.abs(ref[i][flip] - t)
        print(f"| {names[i]} | {base[i]:.4f} | {int(a[i].sum())} | {int((np.abs(ref[i] - t) < 0.2).sum())} | "
              f"{int(flip.sum())} | {np.median(dist) if dist.size else 0:.3f} / {dist.max() if dist.size else 0:.3f} |")

    qs = calibrate._activation_qs(gs.import_onnx(model))
    scales = list(dict.fromkeys(q.inputs[1].name for q in qs))
    tensor = {q.inputs[1].name: q.inputs[0].name for q in reversed(qs)}

    def with_float(floats: set[str]) -> np.ndarray:
        m = copy.deepcopy(model)
        calibrate._bypass(m, floats)
        return delta(run(m))

    d = with_float(set(scales))
    print(f"\nweights alone in int8 (all {len(scales)} activation scales float): mean {d.mean():.2e}, "
          f"worst {d.max():.3e}")
    print("\n| activation scale left float (its first tensor) | mean ΔDice | worst slice |\n|---|---|---|")
    for s in scales:
        d = with_float({s})
        print(f"| {tensor[s]} | {d.mean():.2e} | {d.max():.3e} |")
    floats: set[str] = set()
    for step in range(args.greedy):
        best = min(((with_float(floats | {s}), s) for s in scales if s not in floats), key=lambda r: r[0].max())
        floats.add(best[1])
        print(f"greedy (oracle) step {step + 1}: + {tensor[best[1]]}: mean {best[0].mean():.2e}, "
              f"worst {best[0].max():.3e}")


if __name__ == "__main__":
    main()
