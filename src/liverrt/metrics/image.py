"""Image-restoration metrics: PSNR and SSIM, per image, differentiable.

Both take float tensors ``(N, C, H, W)`` (``C == 1`` for CT slices) of equal
shape and return one value per image, ``(N,)``, in the input's dtype (float64
input gives float64 results). They are plain torch code, so ``1 - ssim`` and
``-psnr`` can be losses and run on any device; :func:`psnr_numpy` and
:func:`ssim_numpy` wrap them for reports.

* ``psnr = 10 log10(data_range**2 / MSE)`` with the MSE over ``C, H, W``. Two
  identical images have MSE 0 and PSNR ``inf`` (its gradient is then NaN: do
  not train on PSNR at a perfect fit).
* ``ssim`` follows Wang et al. (2004) and scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)``: local means, variances and
  covariance under an 11-tap Gaussian window (sigma 1.5, normalised), constants
  ``C1 = (0.01 L)**2`` and ``C2 = (0.03 L)**2``, and the mean of the SSIM map
  over the positions where the whole window fits (a 5-pixel border is left
  out, as skimage crops it). Multi-channel input averages over channels.
  Images smaller than the window raise :class:`InputError`. Two constant
  images of the same value score 1.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from liverrt.errors import InputError

SSIM_WIN_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _check(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise InputError(f"{name}: pred {tuple(pred.shape)} vs target {tuple(target.shape)}; expected equal shapes.")
    if pred.ndim != 4:
        raise InputError(f"{name}: got {pred.ndim} dimensions {tuple(pred.shape)}, expected (N, C, H, W).")
    if not (pred.is_floating_point() and target.is_floating_point()):
        raise InputError(f"{name}: got {pred.dtype} and {target.dtype}, expected floating-point tensors.")


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, ``(N,)``; ``inf`` where ``pred == target``."""
    _check(pred, target, "psnr")
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_taps(win_size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2.0
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image, ``(N,)`` in [-1, 1] (1 for identical images)."""
    _check(pred, target, "ssim")
    n, c, h, w = pred.shape
    if h < SSIM_WIN_SIZE or w < SSIM_WIN_SIZE:
        raise InputError(f"ssim: got images {h}x{w}, expected at least {SSIM_WIN_SIZE}x{SSIM_WIN_SIZE} (the window).")
    dtype = torch.promote_types(pred.dtype, target.dtype)
    x = pred.to(dtype).reshape(n * c, 1, h, w)
    y = target.to(dtype).reshape(n * c, 1, h, w)
    # (co)variances do not change with a shift; centring each image first keeps
    # E[x^2] - E[x]^2 from cancelling in float32 on flat regions
    ox = x.mean(dim=(2, 3), keepdim=True).detach()
    oy = y.mean(dim=(2, 3), keepdim=True).detach()
    x, y = x - ox, y - oy
    k = _gaussian_taps(SSIM_WIN_SIZE, SSIM_SIGMA, x.device, dtype)
    stats = torch.cat((x, y, x * x, y * y, x * y), dim=1)  # filter all five maps in one grouped conv
    stats = F.conv2d(stats, k.reshape(1, 1, -1, 1).expand(5, 1, -1, 1), groups=5)
    stats = F.conv2d(stats, k.reshape(1, 1, 1, -1).expand(5, 1, 1, -1), groups=5)
    mx, my, mxx, myy, mxy = stats.unbind(dim=1)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    mx, my = mx + ox[:, 0], my + oy[:, 0]
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2)).reshape(n, c).mean(dim=1)


def _as_nchw(a: np.ndarray, name: str) -> torch.Tensor:
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise InputError(f"{name}: got shape {a.shape}, expected (H, W), (N, H, W) or (N, C, H, W).")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def psnr_numpy(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """:func:`psnr` on arrays ``(H, W)``, ``(N, H, W)`` or ``(N, C, H, W)``; float64 ``(N,)``."""
    return psnr(_as_nchw(pred, "pred"), _as_nchw(target, "target"), data_range).numpy()


def ssim_numpy(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """:func:`ssim` on arrays ``(H, W)``, ``(N, H, W)`` or ``(N, C, H, W)``; float64 ``(N,)``."""
    return ssim(_as_nchw(pred, "pred"), _as_nchw(target, "target"), data_range).numpy()


__all__ = ["SSIM_K1", "SSIM_K2", "SSIM_SIGMA", "SSIM_WIN_SIZE", "psnr", "psnr_numpy", "ssim", "ssim_numpy"]
