"""The torch engine on a CUDA GPU against the same engine on the CPU, for the three networks, in one run.

``python benchmarks/gpu_torch.py --out DIR [--trained CKPT] [--device cuda]``

For the U-Net, DnCNN-SR (scale 1) and Mask R-CNN R101-FPN at 512x512, with
seeded random weights, on preprocessed phantom slices:

* **engine** ms/slice: ``engine.infer`` on host arrays, as the runtime calls
  it (host-to-device copy, network, copy back), wall clock, median after
  warm-up, at batch 1 and 8;
* **device** ms/slice (GPU only): ``model.predict`` on a device tensor,
  timed with CUDA events on the stream (kernels and the launch gaps between
  them), so the share of copies and host work in the engine time shows;
* the largest difference between the GPU's and the CPU's output on the same
  batch (cuDNN convolutions run in TF32 by default on Ampere and later). The
  random-weight DnCNN-SR's residual tail starts at zero, so it returns its
  input exactly on both: its row checks nothing about TF32.

With ``--trained CKPT`` (a U-Net trained at 512x512), on held-out 512x512
phantoms: end-to-end per-stage time of the Segmenter on the GPU at batch 8
and 32, volume Dice of the GPU masks against the phantoms' truth, and the
verification gate of the GPU engine against the CPU reference, with TF32
convolutions on (torch's default) and off.

Random weights make Mask R-CNN keep few detections, so its mask-head time
here is a lower bound. Results are reported, not asserted; ``results.json``
and ``report.md`` go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from liverrt.artifacts.checkpoint import save_checkpoint
from liverrt.bench.engines import _slices
from liverrt.bench.timing import time_call
from liverrt.data.preprocess import PreprocessSpec
from liverrt.machine import machine_info
from liverrt.models import build
from liverrt.runtime import open_engine

SIZE = 512
MODELS = (  # name, builder, kwargs, main output
    ("U-Net", "unet_paper", {}, "prob"),
    ("DnCNN-SR (scale 1)", "dncnn_sr", {"scale": 1}, "restored"),
    ("Mask R-CNN R101-FPN", "maskrcnn_r101_fpn", {}, "prob"),
)


def device_ms(fn, *, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn`` on the current CUDA stream, timed with events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def time_models(work: Path, device: str, on_step) -> tuple[list[dict], list[dict]]:
    data = _slices(SIZE, 8)
    rows, agreement = [], []
    for label, name, kwargs, key in MODELS:
        torch.manual_seed(0)
        ckpt = save_checkpoint(work / f"{name}.pt", build(name, **kwargs).eval(), model_name=name,
                               spec=PreprocessSpec(size=SIZE))
        outputs = {}
        for dev in (device, "cpu"):
            on_gpu = dev != "cpu"
            batches = (1, 8) if on_gpu or name != "maskrcnn_r101_fpn" else (1,)
            with open_engine("torch", ckpt, device=dev) as eng:
                for bs in batches:
                    on_step(f"{label} {dev} batch {bs}")
                    x = np.ascontiguousarray(data[:bs])
                    reps = (20 if bs == 1 else 10) if on_gpu else 3
                    times = time_call(lambda x=x: eng.infer(x), warmup=3 if on_gpu else 1, repeats=reps)
                    med = statistics.median(times)
                    row = {"model": label, "device": dev, "batch": bs, "repeats": reps,
                           "engine_ms_per_slice": med * 1e3 / bs, "slices_per_s": bs / med}
                    if on_gpu:
                        model = eng._model
                        xt = torch.from_numpy(x).to(eng._device)
                        with torch.inference_mode():
                            row["device_ms_per_slice"] = device_ms(lambda m=model, t=xt: m.predict(t), warmup=3,
                                                                   repeats=reps) / bs
                    rows.append(row)
                cmp_batch = np.ascontiguousarray(data[: max(batches)])
                outputs[dev] = eng.infer(cmp_batch)[key]
        n = min(len(outputs[device]), len(outputs["cpu"]))
        diff = np.abs(outputs[device][:n] - outputs["cpu"][:n])
        agreement.append({"model": label, "output": key, "slices": n, "max_abs_diff": float(diff.max()),
                          "mean_abs_diff": float(diff.mean())})
    for r in rows:  # CPU / GPU speed ratio of the engine, same run
        if r["device"] != "cpu":
            cpu = next((c for c in rows if c["device"] == "cpu" and c["model"] == r["model"]
                        and c["batch"] == r["batch"]), None)
            r["cpu_over_gpu"] = cpu["engine_ms_per_slice"] / r["engine_ms_per_slice"] if cpu else None
    return rows, agreement


def trained_unet(ckpt: Path, device: str, on_step) -> dict:
    from liverrt import metrics
    from liverrt.data.phantom import PhantomConfig, synth_case
    from liverrt.export.gate import verify_artifact
    from liverrt.runtime.segmenter import Segmenter

    vols = [synth_case(5000 + k, PhantomConfig(size=SIZE, slices=48), case_id=f"heldout_{k}") for k in range(3)]
    n_slices = sum(v.shape[0] for v in vols)
    result: dict = {"volumes": [v.case_id for v in vols], "slices": n_slices, "segmenter": [], "dice": {}}
    with open_engine("torch", ckpt, device=device) as eng:
        for bs in (8, 32):
            on_step(f"trained U-Net: Segmenter batch {bs}")
            seg = Segmenter(eng, batch_size=bs)
            seg.segment(vols[0])  # warm-up
            stages: dict[str, float] = {}
            t0 = time.perf_counter()
            masks = [seg.segment(v) for v in vols]
            total = time.perf_counter() - t0
            for v, s in zip(vols, masks, strict=True):  # scored outside the timed loop
                for k, t in s.timings.items():
                    stages[k] = stages.get(k, 0.0) + t
                if bs == 8:
                    result["dice"][v.case_id] = metrics.dice(s.mask, v.mask)
            result["segmenter"].append({"batch": bs, "ms_per_slice": total * 1e3 / n_slices,
                                        **{f"{k}_ms_per_slice": t * 1e3 / n_slices for k, t in stages.items()}})
    result["gate"] = []
    for tf32 in (True, False):
        on_step(f"trained U-Net: gate of the {device} engine against the CPU, TF32 {'on' if tf32 else 'off'}")
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            rep = verify_artifact(ckpt, ckpt, vols, engine="torch", engine_options={"device": device})
        finally:
            torch.backends.cudnn.allow_tf32 = saved
        result["gate"].append({"tf32": tf32, "passed": rep.passed, "mean_delta_dice": rep.mean["delta_dice"],
                               "worst_delta_dice": rep.worst["delta_dice"],
                               "mean_delta_boundary_iou": rep.mean["delta_boundary_iou"]})
    return result


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"## torch engine: {res['device']} vs CPU", "",
             f"- machine: {m.get('gpu') or 'no GPU'}; {m['cpu']}, {m['cores']} cores (torch threads "
             f"{m['torch_threads']}); {m['date']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
             f"- 512x512 preprocessed phantom slices; seeded random weights; cuDNN TF32 "
             f"{'on' if res['tf32_default'] else 'off'} (torch default)", "",
             "| model | device | batch | engine ms/slice | slices/s | device ms/slice | CPU / GPU |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        dev_ms = f"{r['device_ms_per_slice']:.2f}" if "device_ms_per_slice" in r else ""
        ratio = f"{r['cpu_over_gpu']:.1f}x" if r.get("cpu_over_gpu") else ""
        lines.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['engine_ms_per_slice']:.2f} | "
                     f"{r['slices_per_s']:.1f} | {dev_ms} | {ratio} |")
    lines += ["", "| model | output | max abs diff GPU vs CPU | mean abs diff |", "|---|---|---:|---:|"]
    for a in res["agreement"]:
        lines.append(f"| {a['model']} | {a['output']} | {a['max_abs_diff']:.2e} | {a['mean_abs_diff']:.2e} |")
    t = res.get("trained")
    if t:
        lines += ["", f"### trained U-Net ({res['trained_checkpoint']}), {t['slices']} held-out 512x512 slices", "",
                  "| Segmenter batch | ms/slice end to end | preprocess | engine | postprocess |", "|---|---:|---:|---:|---:|"]
        for s in t["segmenter"]:
            lines.append(f"| {s['batch']} | {s['ms_per_slice']:.2f} | {s['preprocess_ms_per_slice']:.2f} | "
                         f"{s['engine_ms_per_slice']:.2f} | {s['postprocess_ms_per_slice']:.2f} |")
        lines += ["", "Volume Dice vs phantom truth: " + ", ".join(f"{k} {v:.4f}" for k, v in t["dice"].items()), "",
                  "| gate (GPU engine vs CPU reference) | mean ΔDice | worst ΔDice | mean ΔBoundary IoU | fp32 gate |",
                  "|---|---:|---:|---:|---|"]
        for g in t["gate"]:
            lines.append(f"| TF32 {'on' if g['tf32'] else 'off'} | {g['mean_delta_dice']:.2e} | "
                         f"{g['worst_delta_dice']:.2e} | {g['mean_delta_boundary_iou']:.2e} | "
                         f"{'passed' if g['passed'] else 'failed'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trained", type=Path, default=None, help="a U-Net checkpoint trained at 512x512")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    def step(s: str) -> None:
        print(f"[gpu_torch] {s}", flush=True)

    res = {"device": args.device, "tf32_default": torch.backends.cudnn.allow_tf32, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="liverrt-gpu-") as tmp:
        res["rows"], res["agreement"] = time_models(Path(tmp), args.device, step)
    if args.trained is not None:
        res["trained_checkpoint"] = args.trained.name
        res["trained"] = trained_unet(args.trained, args.device, step)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    report = markdown(res)
    (args.out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
