"""Score a liver model on the real CT volumes in ../shared/data (the figures of issue 17's table).

    python benchmarks/eval_real.py runs/unet/best.pt [--cases ircad01 lits000] [--engine torch]
        [--keep-largest] [--fill-holes] [--smooth-z MM] [--threshold T] [--json out.json] [--overlays DIR]

Per volume: Dice, Mask IoU, RAVD, ASSD, HD95 (mm, from the NIfTI spacing), the study's Table-6
slice metrics (means over slices where prediction or truth has liver: Mask, Trimap and Boundary
IoU, F-measure, boundary F), predicted and true liver volume (mL), and how many liver-free slices
get liver (false-positive slices), with the time per slice of the whole segmentation (read excluded).
The volumes are the expert-masked real scans `ircad01` (3D-IRCADb, 1.6 mm) and `lits000` (LiTS,
5 mm); both are non-commercial data, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from liverrt.data.io import read_nifti_volume
from liverrt.metrics import MetricAccumulator
from liverrt.runtime import open_engine
from liverrt.runtime.segmenter import Segmenter
from liverrt.viz import overlay, pick_slices, save_png

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CASES = ("ircad01", "lits000")


def score(model: Path, cases=CASES, *, engine: str = "torch", keep_largest: bool = False, fill_holes: bool = False,
          smooth_z_mm: float = 0.0, threshold: float | None = None, data: Path = DATA, overlays: Path | None = None,
          batch_size: int = 8) -> dict:
    acc = MetricAccumulator()
    extra: dict[str, dict] = {}
    with open_engine(engine, model) as eng:
        segmenter = Segmenter(eng, batch_size=batch_size, keep_largest=keep_largest, fill_holes=fill_holes,
                              smooth_z_mm=smooth_z_mm, threshold=threshold)
        for cid in cases:
            vol = read_nifti_volume(data / cid / "ct.nii.gz", data / cid / "liver.nii.gz", case_id=cid)
            t0 = time.perf_counter()
            pred = segmenter.segment(vol).mask
            seconds = time.perf_counter() - t0
            acc.update(cid, pred, vol.mask, vol.spacing)
            free = ~vol.mask.any(axis=(1, 2))
            voxel_ml = float(np.prod(vol.spacing)) / 1000.0
            extra[cid] = {"liver_free_slices": int(free.sum()),
                          "fp_slices": int((pred.any(axis=(1, 2)) & free).sum()),
                          "pred_ml": float(pred.sum() * voxel_ml), "true_ml": float(vol.mask.sum() * voxel_ml),
                          "ms_per_slice": 1000.0 * seconds / vol.shape[0], "n_slices": vol.shape[0]}
            if overlays is not None:
                tiles = [overlay(np.clip((vol.image[k] + 150.0) / 400.0, 0, 1), pred[k], vol.mask[k])  # 50/400
                         for k in pick_slices(vol.mask | pred, 4)]
                save_png(np.concatenate(tiles, axis=1), overlays / f"{cid}.png")
    scores = acc.compute()
    for cid in cases:
        scores["cases"][cid].update(extra[cid])
    return {"model": str(model), "engine": engine, "keep_largest": keep_largest, "fill_holes": fill_holes,
            "smooth_z_mm": smooth_z_mm, "threshold": segmenter.threshold,
            "cases": scores["cases"], "mean": scores["mean"]["volume"]}


def markdown(result: dict) -> str:
    lines = ["| volume | Dice | Mask IoU | RAVD % | ASSD mm | HD95 mm | slice Mask IoU | Trimap IoU | Boundary IoU "
             "| F | boundary F | FP slices / liver-free | pred / true mL | ms/slice |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for cid, c in result["cases"].items():
        v, s = c["volume"], c["slices"]
        lines.append(f"| {cid} | {v['dice']:.4f} | {v['mask_iou']:.4f} | {v['ravd']:.1f} | {v['assd']:.2f} | "
                     f"{v['hd95']:.2f} | {s['mask_iou']:.4f} | {s['trimap_iou']:.4f} | {s['boundary_iou']:.4f} | "
                     f"{s['f_measure']:.4f} | {s['boundary_f']:.4f} | {c['fp_slices']} / {c['liver_free_slices']} | "
                     f"{c['pred_ml']:.0f} / {c['true_ml']:.0f} | {c['ms_per_slice']:.1f} |")
    m = result["mean"]
    lines.append(f"| **mean** | {m['dice']:.4f} | {m['mask_iou']:.4f} | {m['ravd']:.1f} | {m['assd']:.2f} | "
                 f"{m['hd95']:.2f} | | | | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--engine", default="torch")
    ap.add_argument("--keep-largest", action="store_true")
    ap.add_argument("--fill-holes", action="store_true")
    ap.add_argument("--smooth-z", type=float, default=0.0, metavar="MM",
                    help="Smooth the probabilities across slices (Gaussian sigma, mm) before the threshold.")
    ap.add_argument("--threshold", type=float, default=None, help="Probability threshold (default: the model's).")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--overlays", type=Path, default=None, help="Write <case>.png overlays (truth green, model red).")
    args = ap.parse_args(argv)
    result = score(args.model, args.cases, engine=args.engine, keep_largest=args.keep_largest,
                   fill_holes=args.fill_holes, smooth_z_mm=args.smooth_z, threshold=args.threshold, data=args.data,
                   overlays=args.overlays)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
