"""Helpers shared by the tests: small HU volumes and a tiny U-Net (imported, not fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from liverrt.data.volume import Volume, default_affine
from liverrt.models.unet import UNet

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_volume(shape=(6, 48, 40), *, seed: int = 0, case_id: str = "vol", spacing=(2.5, 0.8, 0.8)) -> Volume:
    """A HU volume: air, a soft-tissue body and a brighter ellipse 'liver' on the image left."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    image = np.full(shape, -1000, np.int16)
    mask = np.zeros(shape, bool)
    for k in range(d):
        r = 0.18 + 0.06 * np.sin(k / max(d - 1, 1) * np.pi)
        liver = ((yy - 0.45 * h) / (r * h)) ** 2 + ((xx - 0.35 * w) / (r * w * 1.2)) ** 2 <= 1
        sl = np.where(body, 30, -1000) + np.where(liver, 80, 0) + rng.normal(0, 5, (h, w))
        image[k] = np.clip(np.round(sl), -1024, 3071).astype(np.int16)
        mask[k] = liver & body
    return Volume(image=image, spacing=spacing, affine=default_affine(spacing), intensity="hu", mask=mask,
                  case_id=case_id, source="")


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(widths=(4, 8, 16), dropout=(0.0,) * 5).eval()
