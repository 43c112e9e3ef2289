"""DnCNN-SR on held-out cases: PSNR/SSIM gain and its effect on segmentation IoU.

``python benchmarks/denoise_effect.py --dncnn DN.pt --data CASES [--data MORE] [--unet UNET.pt] [--out DIR]``

Every case is degraded with the degradation stored in the DnCNN-SR
checkpoint (``--photons`` overrides the dose), restored by the network, and
compared with the clean slice; with ``--unet`` (same PreprocessSpec grid) the
U-Net segments the clean, degraded and restored slices and the volume Mask
IoU of each is reported. Writes ``denoise_effect.json``, ``.md`` and a PNG of
one slice per case (clean | degraded | restored).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from liverrt.data.sources import load_cases
from liverrt.models import load_model
from liverrt.training.degrade import DegradeConfig
from liverrt.training.dncnn import clean_slices, denoise_effect, grid_pixel_mm


def _table(rows: list[dict]) -> str:
    seg = any("iou_noisy" in r for r in rows)
    head = "| case | slices | grid mm | PSNR input | PSNR DnCNN-SR | gain dB | SSIM input | SSIM DnCNN-SR |"
    head += " IoU clean | IoU degraded | IoU restored |" if seg else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['case_id']} | {r['slices']} | {r['pixel_mm']:.2f} | {r['input_psnr']:.2f} | "
                f"{r['output_psnr']:.2f} | {r['psnr_gain']:+.2f} | {r['input_ssim']:.4f} | {r['output_ssim']:.4f} |")
        if seg:
            line += (f" {r.get('iou_clean', float('nan')):.4f} | {r.get('iou_noisy', float('nan')):.4f} | "
                     f"{r.get('iou_denoised', float('nan')):.4f} |")
        lines.append(line)
    return "\n".join(lines)


def _figure(model, volumes, spec, cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liverrt.training.degrade import degrade

    fig, axes = plt.subplots(len(volumes), 3, figsize=(9, 3 * len(volumes)), dpi=100, squeeze=False)
    for row, vol in zip(axes, volumes, strict=True):
        clean, hu = clean_slices([vol], spec)
        k = int(np.argmax(clean.flatten(1).std(1)))  # the slice with the most structure
        c = replace(cfg, pixel_mm=grid_pixel_mm([vol], spec)) if cfg.noise == "projection" else cfg
        noisy = degrade(clean[k:k + 1], c, torch.Generator().manual_seed(0), hu=None if hu is None else hu[k:k + 1])
        with torch.no_grad():
            out = model(noisy).clamp(0, 1)
        for ax, img, title in zip(row, (clean, noisy, out), ("clean", "degraded", "DnCNN-SR"), strict=True):
            ax.imshow(img[0 if img is not clean else k, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{vol.case_id}: {title}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dncnn", type=Path, required=True)
    ap.add_argument("--data", type=Path, action="append", required=True, help="held-out cases (repeatable)")
    ap.add_argument("--unet", type=Path, help="a U-Net checkpoint on the same grid, for the IoU comparison")
    ap.add_argument("--photons", type=float, help="override the checkpoint's dose")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("denoise_effect"))
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    model, spec, ckpt = load_model(args.dncnn, expect_kind="dncnn_sr")
    cfg = DegradeConfig.from_dict(ckpt["train_config"]["degrade"])
    if args.photons:
        cfg = replace(cfg, photons=args.photons)
    unet = None
    if args.unet:
        unet, uspec, _ = load_model(args.unet, expect_kind="unet")
        if (uspec.size, uspec.window_center, uspec.window_width) != (spec.size, spec.window_center, spec.window_width):
            raise SystemExit(f"--unet grid {uspec} differs from the DnCNN-SR grid {spec}")
    volumes = []
    for src in args.data:
        volumes += load_cases(src).volumes
    rows = denoise_effect(model, volumes, spec, cfg, segmenter=unet, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"dncnn": str(args.dncnn), "unet": str(args.unet) if args.unet else None, "degrade": cfg.to_dict(),
              "spec": spec.to_dict(), "cases": rows}
    (args.out / "denoise_effect.json").write_text(json.dumps(report, indent=2))
    md = (f"DnCNN-SR {args.dncnn} on {spec.size}² grid, noise {cfg.noise} "
          f"({cfg.photons:.3g} photons, {cfg.n_angles} views)\n\n" + _table(rows))
    (args.out / "denoise_effect.md").write_text(md + "\n")
    _figure(model, volumes, spec, cfg, args.out / "denoise_effect.png")
    print(md)


if __name__ == "__main__":
    main()
