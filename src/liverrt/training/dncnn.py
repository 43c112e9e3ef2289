"""Training DnCNN-SR, the study's denoising / super-resolution preprocessing network.

Pairs are made on the fly from clean slices (no liver mask needed): every
batch draws fresh noise (see :mod:`liverrt.training.degrade`), which is the
augmentation that matters for a denoiser; no geometric augmentation is used.
HU volumes also pass their HU slices to the degradation, so the simulated
attenuation outside the display window is the real one.

Loss: ``MSE + ssim_weight * (1 - SSIM)``. Validation degrades the validation
slices once, with a fixed seed, and reports PSNR and SSIM against the clean
slice for the network (``val_psnr``, ``val_ssim``) and for its input
(``val_psnr_input``, ``val_ssim_input``; the bicubic upsampling of the input
for scale 2), and their difference ``val_psnr_gain``. ``best.pt`` is picked
by ``val_psnr``.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from liverrt.data.preprocess import PreprocessSpec, mask_to_input, placement, to_input
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.metrics import iou_from_counts, per_slice_counts
from liverrt.metrics.image import psnr, ssim
from liverrt.models import build
from liverrt.models.dncnn_sr import bicubic_upsample
from liverrt.training.degrade import DegradeConfig, degrade
from liverrt.training.loop import Task, TrainConfig
from liverrt.training.losses_image import dncnn_loss

log = logging.getLogger(__name__)

#: HU range kept on the network grid next to the windowed slice (int16 CT)
_HU_LO, _HU_HI = -1024.0, 3071.0


def clean_slices(volumes: list[Volume], spec: PreprocessSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Windowed slices (N, 1, S, S) in [0, 1] and, when every volume is in HU, the same slices in HU."""
    xs, hus = [], []
    wide = replace(spec, window_center=(_HU_LO + _HU_HI) / 2, window_width=_HU_HI - _HU_LO, quantize_8bit=False)
    all_hu = all(v.intensity == "hu" for v in volumes)
    for vol in volumes:
        x, _ = to_input(vol.image, vol.intensity, spec, vol.spacing)
        xs.append(torch.from_numpy(x))
        if all_hu:
            w, _ = to_input(vol.image, vol.intensity, wide, vol.spacing)
            hus.append(torch.from_numpy(w) * (_HU_HI - _HU_LO) + _HU_LO)
    if not xs:
        raise InputError("No cases to build DnCNN-SR training pairs from.")
    return torch.cat(xs), (torch.cat(hus) if all_hu else None)


def grid_pixel_mm(volumes: list[Volume], spec: PreprocessSpec) -> float:
    """Median in-plane pixel size in mm on the network grid (the path length unit of projection noise)."""
    sizes = []
    for v in volumes:
        p = placement(v.shape[1:], spec, v.spacing)
        dy, dx = float(v.spacing[1]), float(v.spacing[2])
        sizes.append(max(dy * v.shape[1] / p.scaled[0], dx * v.shape[2] / p.scaled[1]))
    if not sizes:
        raise InputError("No cases to measure the pixel size of.")
    return float(np.median(sizes))


class DnCNNTask(Task):
    name = "dncnn-sr"
    model_name = "dncnn_sr"
    monitor = "val_psnr"
    curve_metrics = ("val_psnr", "val_psnr_input")

    def __init__(self, train_vols: list[Volume], val_vols: list[Volume], spec: PreprocessSpec, split: dict,
                 config: TrainConfig, *, degrade_config: DegradeConfig | None = None, ssim_weight: float = 1.0,
                 val_seed: int = 12345) -> None:
        super().__init__(spec, split)
        self.config = config
        self.degrade_config = degrade_config or DegradeConfig(window_center=spec.window_center,
                                                              window_width=spec.window_width)
        d = self.degrade_config
        if (d.window_center, d.window_width) != (spec.window_center, spec.window_width):
            raise InputError(f"DegradeConfig window {d.window_center}/{d.window_width} differs from the "
                             f"PreprocessSpec window {spec.window_center}/{spec.window_width}; expected the same.")
        scale = int(config.model_options.get("scale", 1))
        if scale != d.scale:
            raise InputError(f"model scale {scale} but degradation scale {d.scale}; expected the same.")
        depth = int(config.model_options.get("depth", 2))
        if spec.size % (scale * 2**depth):
            raise InputError(f"DnCNN-SR scale {scale}, depth {depth} needs --size divisible by {scale * 2**depth}; "
                             f"got {spec.size}.")
        if ssim_weight < 0:
            raise InputError(f"ssim_weight: got {ssim_weight}, expected >= 0.")
        self.ssim_weight = ssim_weight
        self.x, self.hu = clean_slices(train_vols, spec)
        vx, vhu = clean_slices(val_vols, spec)
        gen = torch.Generator().manual_seed(val_seed)
        self.val_clean = vx
        self.val_input = torch.cat([degrade(vx[i:i + 16], d, gen, hu=None if vhu is None else vhu[i:i + 16])
                                    for i in range(0, len(vx), 16)])
        log.info("dncnn-sr: %d training slices, %d validation slices, %s noise", len(self.x), len(vx), d.noise)

    def build_model(self, config: TrainConfig) -> torch.nn.Module:
        return build(config.model, **config.model_options)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(self, index, generator, device, memory_format):
        clean = self.x[index].to(device, non_blocking=True)
        hu = None if self.hu is None else self.hu[index].to(device, non_blocking=True)
        # the noise is drawn on the device that computes it, seeded from the run's generator
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        noisy = degrade(clean, self.degrade_config, torch.Generator(device=device).manual_seed(seed), hu=hu)
        return (noisy.contiguous(memory_format=memory_format), clean)

    def loss(self, model, batch):
        noisy, clean = batch
        pred = model(noisy).float()
        total = dncnn_loss(pred, clean, ssim_weight=self.ssim_weight)
        return total, {}

    @torch.no_grad()
    def validate(self, model, device):
        model.eval()
        out_p, out_s, in_p, in_s = [], [], [], []
        for i in range(0, len(self.val_clean), 16):
            clean = self.val_clean[i:i + 16].to(device)
            noisy = self.val_input[i:i + 16].to(device)
            pred = model(noisy).float().clamp(0, 1)
            base = bicubic_upsample(noisy, self.degrade_config.scale).clamp(0, 1)
            out_p.append(psnr(pred, clean).cpu())
            out_s.append(ssim(pred, clean).cpu())
            in_p.append(psnr(base, clean).cpu())
            in_s.append(ssim(base, clean).cpu())
        p, s, ip, is_ = (_finite_mean(torch.cat(v)) for v in (out_p, out_s, in_p, in_s))
        return {"val_psnr": p, "val_ssim": s, "val_psnr_input": ip, "val_ssim_input": is_,
                "val_psnr_gain": p - ip}

    def describe(self) -> dict:
        return {"degrade": self.degrade_config.to_dict(), "ssim_weight": self.ssim_weight}


def _finite_mean(values: torch.Tensor) -> float:
    """Mean over images; identical images (PSNR inf) are capped at 100 dB so one blank slice cannot make it inf."""
    v = values.double().numpy()
    return float(np.mean(np.where(np.isfinite(v), v, 100.0)))


@torch.no_grad()
def denoise_effect(denoiser: torch.nn.Module, volumes: list[Volume], spec: PreprocessSpec, degrade_config: DegradeConfig,
                   *, segmenter: torch.nn.Module | None = None, seed: int = 0, batch_size: int = 8,
                   device: torch.device | str = "cpu", threshold: float = 0.5) -> list[dict]:
    """Held-out check of a trained denoiser, one row per volume.

    Each volume's slices (on ``spec``'s grid) are degraded with
    ``degrade_config`` (projection noise on the volume's own grid pixel size,
    seeded by ``seed``), then restored. Reports mean per-slice PSNR and SSIM
    against the clean slice for the degraded input (``input_*``; its bicubic
    upsampling for scale 2) and the network (``output_*``). With a
    ``segmenter`` (a segmentation model on the same grid, scale 1 only) and a
    liver mask, also the volume Mask IoU of its masks on clean, degraded and
    denoised slices.
    """
    device = torch.device(device)
    rows = []
    for k, vol in enumerate(volumes):
        cfg = replace(degrade_config, pixel_mm=grid_pixel_mm([vol], spec)) if degrade_config.noise == "projection" \
            else degrade_config
        clean, hu = clean_slices([vol], spec)
        gen = torch.Generator().manual_seed(seed * 100_003 + k)
        noisy = torch.cat([degrade(clean[i:i + batch_size], cfg, gen, hu=None if hu is None else hu[i:i + batch_size])
                           for i in range(0, len(clean), batch_size)])
        restored = torch.cat([denoiser(noisy[i:i + batch_size].to(device)).float().clamp(0, 1).cpu()
                              for i in range(0, len(noisy), batch_size)])
        base = bicubic_upsample(noisy, cfg.scale).clamp(0, 1)
        row = {"case_id": vol.case_id, "slices": len(clean), "pixel_mm": cfg.pixel_mm,
               "input_psnr": _finite_mean(psnr(base, clean)), "input_ssim": float(ssim(base, clean).mean()),
               "output_psnr": _finite_mean(psnr(restored, clean)), "output_ssim": float(ssim(restored, clean).mean())}
        row["psnr_gain"] = row["output_psnr"] - row["input_psnr"]
        if segmenter is not None and vol.mask is not None and cfg.scale == 1:
            _, place = to_input(vol.image[:1], vol.intensity, spec, vol.spacing)
            truth = mask_to_input(vol.mask, place)[:, 0] >= 0.5
            for name, x in (("clean", clean), ("noisy", noisy), ("denoised", restored)):
                prob = torch.cat([torch.sigmoid(segmenter(x[i:i + batch_size].to(device)).float()).cpu()
                                  for i in range(0, len(x), batch_size)])[:, 0].numpy()
                tp, fp, fn = per_slice_counts(prob >= threshold, truth).sum(axis=0)
                row[f"iou_{name}"] = iou_from_counts(int(tp), int(fp), int(fn))
        rows.append(row)
    return rows
