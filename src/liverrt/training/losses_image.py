"""Losses for image restoration (DnCNN-SR): MSE + SSIM, on images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from liverrt.metrics.image import ssim


def dncnn_loss(pred: torch.Tensor, target: torch.Tensor, *, ssim_weight: float = 1.0,
               data_range: float = 1.0) -> torch.Tensor:
    """``MSE + ssim_weight * (1 - SSIM)``, both averaged over the batch; a scalar.

    ``pred`` and ``target`` are ``(N, 1, H, W)`` float (``H, W >= 11`` for
    SSIM's window); ``pred`` is the unclamped network output. The study names
    the loss "MSE + SSIM" without a weight; 1 is that plain sum. On [0, 1]
    images the SSIM term is the larger one (MSE ~1e-3 against 1 - SSIM ~0.1
    for CT noise), so it drives structure and MSE anchors intensities.
    """
    mse = F.mse_loss(pred, target)
    if ssim_weight == 0:
        return mse
    return mse + ssim_weight * (1.0 - ssim(pred, target, data_range).mean())
