"""Batch augmentations on tensors (CPU or CUDA): flip, small rotation/scale, intensity jitter."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges; ``AugmentConfig(enabled=False)`` turns everything off.

    The left-right flip is off by default: every volume is reoriented to the
    radiological display (liver on the image left), and mirrored training slices
    teach the network to accept a liver on the right, i.e. to confuse it with the
    spleen. Turn it on (``flip_p``) for data whose orientation is unknown.
    """

    enabled: bool = True
    flip_p: float = 0.0          # left-right flip probability
    rotate_deg: float = 10.0     # uniform in [-rotate_deg, rotate_deg]
    scale: float = 0.1           # uniform in [1 - scale, 1 + scale]
    affine_p: float = 0.8
    brightness: float = 0.1      # additive, uniform in [-b, b]
    contrast: float = 0.15       # multiplicative around the mean, uniform in [1 - c, 1 + c]
    gamma: float = 0.2           # exponent uniform in [1 - g, 1 + g]
    intensity_p: float = 0.8

    def to_dict(self) -> dict:
        return asdict(self)


def augment_batch(
    x: torch.Tensor, y: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment images ``x`` (N, 1, H, W) in [0, 1] and masks ``y`` (N, 1, H, W) in {0, 1}.

    The same geometric transform is applied to image and mask (bilinear for the
    image, bilinear then threshold 0.5 for the mask); intensity changes touch
    the image only. Random numbers come from ``generator`` (reproducible runs).
    """
    if not cfg.enabled:
        return x, y
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) * (hi - lo) + lo

    flip = torch.rand(n, generator=generator) < cfg.flip_p
    use_affine = torch.rand(n, generator=generator) < cfg.affine_p
    angle = uniform(-cfg.rotate_deg, cfg.rotate_deg) * math.pi / 180.0
    scale = uniform(1.0 - cfg.scale, 1.0 + cfg.scale)
    angle = torch.where(use_affine, angle, torch.zeros_like(angle))
    scale = torch.where(use_affine, scale, torch.ones_like(scale))
    sx = torch.where(flip, -1.0, 1.0) / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin / scale
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos / scale
    theta = theta.to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).to(y.dtype)

    use_int = (torch.rand(n, generator=generator) < cfg.intensity_p).to(x.device)
    b = uniform(-cfg.brightness, cfg.brightness).to(x.device)
    c = uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast).to(x.device)
    g = uniform(1.0 - cfg.gamma, 1.0 + cfg.gamma).to(x.device)
    b = torch.where(use_int, b, torch.zeros_like(b)).view(n, 1, 1, 1)
    c = torch.where(use_int, c, torch.ones_like(c)).view(n, 1, 1, 1)
    g = torch.where(use_int, g, torch.ones_like(g)).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean + b).clamp(0.0, 1.0) ** g
    return x, y
