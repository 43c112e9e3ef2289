"""PSNR and SSIM against straightforward NumPy/SciPy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from liverrt.errors import InputError
from liverrt.metrics.image import psnr, psnr_numpy, ssim, ssim_numpy
from liverrt.training.losses_image import dncnn_loss


def ssim_ref(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. (2004) as skimage computes it (gaussian_weights=True, population covariance).

    truncate=3.5 makes scipy's Gaussian 11 taps (radius int(3.5 * 1.5 + 0.5) = 5);
    the 5-pixel border where the window does not fit is left out of the mean.
    """
    x, y = x.astype(np.float64), y.astype(np.float64)

    def blur(a):
        return ndi.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def psnr_ref(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _pairs():
    rng = np.random.default_rng(0)
    smooth = ndi.gaussian_filter(rng.random((40, 37)), 3)
    yield "random", rng.random((24, 30)), rng.random((24, 30))
    yield "noisy copy", smooth, np.clip(smooth + rng.normal(0, 0.05, smooth.shape), 0, 1)
    yield "window-sized", rng.random((11, 11)), rng.random((11, 11))
    yield "constant equal", np.full((16, 16), 0.3), np.full((16, 16), 0.3)
    yield "constant different", np.full((16, 16), 0.3), np.full((16, 16), 0.7)
    yield "constant vs random", np.zeros((16, 20)), rng.random((16, 20))
    yield "identical", smooth, smooth.copy()
    yield "inverted", smooth, 1 - smooth
    yield "edge", np.tile((np.arange(32) >= 16).astype(float), (32, 1)), np.tile((np.arange(32) >= 17).astype(float), (32, 1))


@pytest.mark.parametrize("name, x, y", list(_pairs()), ids=[p[0] for p in _pairs()])
def test_ssim_and_psnr_match_the_references(name, x, y):
    tx, ty = torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]
    assert ssim(tx, ty).item() == pytest.approx(ssim_ref(x, y), abs=1e-10)
    assert psnr(tx, ty).item() == pytest.approx(psnr_ref(x, y), abs=1e-10)
    # float32 (the training dtype) stays close to the float64 reference
    assert ssim(tx.float(), ty.float()).item() == pytest.approx(ssim_ref(x, y), abs=1e-4)


def test_known_values_identical_constant_and_range():
    x = torch.rand(3, 1, 20, 20, dtype=torch.float64)
    assert torch.equal(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert torch.isinf(psnr(x, x)).all()  # documented: identical images have infinite PSNR
    c = torch.full((1, 1, 16, 16), 0.5)
    assert ssim(c, c).item() == pytest.approx(1.0)
    # data_range: the same images in 0..255 score the same
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(ssim(255 * x, 255 * y, data_range=255.0), ssim(x, y))
    torch.testing.assert_close(psnr(255 * x, 255 * y, data_range=255.0), psnr(x, y))
    assert (ssim(y, x) < 1).all() and torch.allclose(ssim(x, y), ssim(y, x))  # symmetric


def test_per_image_values_and_channel_mean():
    rng = np.random.default_rng(1)
    x, y = rng.random((3, 2, 16, 18)), rng.random((3, 2, 16, 18))
    got = ssim(torch.from_numpy(x), torch.from_numpy(y))
    want = [np.mean([ssim_ref(x[i, c], y[i, c]) for c in range(2)]) for i in range(3)]
    assert got.shape == (3,)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    np.testing.assert_allclose(ssim_numpy(x, y), want, atol=1e-10)
    assert ssim_numpy(x[0, 0], y[0, 0]).shape == (1,)  # (H, W)
    assert psnr_numpy(x[:, 0], y[:, 0]).shape == (3,)  # (N, H, W)


@pytest.fixture
def one_thread():
    """gradcheck runs hundreds of tiny forwards: one intra-op thread is faster and does not stall
    when another process holds a core (the 2-thread pool did: 1 s -> 29 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ssim_is_differentiable_and_a_usable_loss(one_thread):
    torch.manual_seed(0)
    target = torch.rand(1, 1, 13, 13, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: ssim(p, target), (pred,))
    p = pred.detach().clone().requires_grad_()
    opt = torch.optim.SGD([p], lr=0.5)
    start = ssim(p, target).item()
    for _ in range(20):
        opt.zero_grad()
        (1 - ssim(p, target)).sum().backward()
        opt.step()
    assert ssim(p, target).item() > start + 0.05


def test_dncnn_loss_is_mse_plus_weighted_ssim():
    torch.manual_seed(0)
    target = torch.rand(2, 1, 16, 16)
    pred = target + 0.05 * torch.randn_like(target)
    mse = torch.mean((pred - target) ** 2)
    assert dncnn_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dncnn_loss(pred, target, ssim_weight=0).item() == pytest.approx(mse.item())
    want = mse + 0.5 * (1 - ssim(pred, target).mean())
    assert dncnn_loss(pred, target, ssim_weight=0.5).item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("a, b, match", [
    ((1, 1, 16, 16), (1, 1, 16, 17), "equal shapes"),
    ((16, 16), (16, 16), r"expected \(N, C, H, W\)"),
    ((1, 1, 10, 40), (1, 1, 10, 40), "at least 11x11"),
])
def test_bad_input_raises_input_error(a, b, match):
    with pytest.raises(InputError, match=match):
        ssim(torch.zeros(a), torch.zeros(b))
    if "11x11" not in match:
        with pytest.raises(InputError, match=match):
            psnr(torch.zeros(a), torch.zeros(b))


def test_integer_tensors_are_refused():
    with pytest.raises(InputError, match="floating-point"):
        psnr(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), torch.zeros(1, 1, 16, 16, dtype=torch.uint8))
