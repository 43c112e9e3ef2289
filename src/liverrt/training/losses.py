"""Losses on logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample (sums over C, H, W), averaged over the batch.

    ``eps`` smooths empty slices: an empty prediction on an empty target costs ~0.
    """
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, *, bce_weight: float = 1.0) -> torch.Tensor:
    """Soft Dice loss + ``bce_weight`` x binary cross-entropy (the walking skeleton's U-Net loss)."""
    return soft_dice_loss(logits, target) + bce_weight * F.binary_cross_entropy_with_logits(logits, target)
