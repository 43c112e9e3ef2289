"""Training-pair degradations: projector geometry, FBP accuracy, dose-dependent noise, reproducibility."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from liverrt.errors import InputError
from liverrt.metrics.image import psnr
from liverrt.training.degrade import (
    DegradeConfig,
    bicubic_upsample,
    degrade,
    downsample2,
    fbp,
    hu_to_window,
    image_noise_hu,
    projection_angles,
    projection_noise_hu,
    radon,
    window_to_hu,
)


def _grid(n: int):
    return np.mgrid[0:n, 0:n] - (n - 1) / 2.0  # (y, x) in pixels from the centre


def disc(n: int, radius: float, value: float = 1.0, background: float = 0.0) -> torch.Tensor:
    yy, xx = _grid(n)
    return torch.from_numpy(np.where(xx**2 + yy**2 <= radius**2, value, background))[None, None].float()


def body_slices(n: int = 48, batch: int = 2) -> torch.Tensor:
    """Windowed [0, 1] slices: air around a soft-tissue ellipse with a brighter 'liver'."""
    yy, xx = _grid(n)
    body = (xx / (0.42 * n)) ** 2 + (yy / (0.34 * n)) ** 2 <= 1
    liver = ((xx + 0.12 * n) / (0.16 * n)) ** 2 + (yy / (0.12 * n)) ** 2 <= 1
    hu = np.where(body, 40.0, -1000.0) + np.where(liver, 60.0, 0.0)
    x = hu_to_window(torch.from_numpy(hu).float())
    return x.expand(batch, 1, n, n).clone()


def test_radon_matches_scipy_rotate_and_sum():
    n = 33
    yy, xx = _grid(n)
    img = ((xx - 4) ** 2 / 60 + (yy + 3) ** 2 / 30 <= 1) * 1.0 + ((xx + 5) ** 2 + (yy - 5) ** 2 <= 9) * 0.5
    angles = projection_angles(12, dtype=torch.float64)
    got = radon(torch.from_numpy(img)[None, None], angles)[0].numpy()
    # the same bilinear samples: rotate by +angle about the centre, sum down the columns
    want = np.stack([ndi.rotate(img, math.degrees(a), reshape=False, order=1).sum(axis=0) for a in angles.numpy()])
    assert got.shape == (12, n)
    np.testing.assert_allclose(got, want, atol=1e-9)
    # a centred disc projects to the chord length 2 sqrt(r^2 - t^2) at every angle
    n, r = 65, 20.0
    sino = radon(disc(n, r).double(), projection_angles(8, dtype=torch.float64))[0].numpy()
    t = np.arange(n) - (n - 1) / 2
    chord = 2 * np.sqrt(np.clip(r**2 - t**2, 0, None))
    inner = np.abs(t) < r - 2  # the digital disc's rim is ragged
    assert np.abs(sino - chord)[:, inner].max() < 1.5
    np.testing.assert_allclose(sino.sum(1), disc(n, r).sum().item(), rtol=5e-3)  # mass kept at every angle


@pytest.mark.parametrize("kind, tol", [("ramp", 0.03), ("hann", 0.01)])
def test_fbp_of_radon_reconstructs_a_disc_inside_the_field_of_view(kind, tol):
    n, r = 96, 30.0
    x = disc(n, r)
    angles = projection_angles(180)
    rec = fbp(radon(x, angles), angles, n, kind=kind)[0, 0].numpy()
    yy, xx = _grid(n)
    rad = np.hypot(xx, yy)
    inside, outside = rad < r - 3, (rad > r + 3) & (rad < n / 2 - 1)
    assert np.abs(rec[inside] - 1).max() < tol  # within 3 % (ramp) / 1 % (Hann) away from the edge
    assert np.abs(rec[outside]).max() < tol
    assert rec[rad < n / 2 - 1].sum() == pytest.approx(x.sum().item(), rel=0.01)  # no DC offset


def _noise_std(photons: float, seed: int = 0) -> float:
    hu = disc(64, 26, value=0.0, background=-1000.0)  # a water cylinder in air
    cfg = DegradeConfig(photons=photons, n_angles=90, pixel_mm=2.0)
    noise = projection_noise_hu(hu, cfg, torch.Generator().manual_seed(seed))[0, 0]
    yy, xx = _grid(64)
    return float(noise.numpy()[np.hypot(xx, yy) < 20].std())


def test_projection_noise_std_scales_as_one_over_sqrt_photons():
    stds = [_noise_std(p) for p in (1e4, 1e5, 1e6)]
    assert stds[0] > stds[1] > stds[2] > 0
    for hi, lo in zip(stds, stds[1:], strict=False):
        assert hi / lo == pytest.approx(math.sqrt(10), rel=0.15)
    assert _noise_std(math.inf) == 0.0


def test_no_noise_leaves_the_slice_unchanged():
    x = body_slices()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(degrade(x, DegradeConfig(photons=math.inf), g), x)
    assert torch.equal(degrade(x, DegradeConfig(noise="none"), g), x)


@pytest.mark.parametrize("noise", ["projection", "image"])
def test_degradation_is_reproducible_with_a_seeded_generator(noise):
    x = body_slices()
    cfg = DegradeConfig(noise=noise, n_angles=60)
    a = degrade(x, cfg, torch.Generator().manual_seed(7))
    b = degrade(x, cfg, torch.Generator().manual_seed(7))
    c = degrade(x, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a[0], a[1])  # each slice of a batch gets its own noise


def test_lower_dose_and_more_image_noise_give_lower_psnr():
    x = body_slices()
    g = torch.Generator().manual_seed(0)
    proj = [psnr(degrade(x, DegradeConfig(photons=p, n_angles=60), g), x).mean() for p in (3e4, 3e5, 3e6)]
    img = [psnr(degrade(x, DegradeConfig(noise="image", image_sigma=s), g), x).mean() for s in (60, 20, 5)]
    assert proj[0] < proj[1] < proj[2] and img[0] < img[1] < img[2]


def test_noise_is_hidden_in_air_and_the_hu_slice_can_be_given():
    x = body_slices(batch=1)
    cfg = DegradeConfig(n_angles=60, photons=1e4)
    y = degrade(x, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(y[x == 0], x[x == 0])  # air at -1000 HU stays below the window
    hu = window_to_hu(x, below_hu=-1000.0)
    torch.testing.assert_close(degrade(x, cfg, torch.Generator().manual_seed(0), hu=hu), y)
    with pytest.raises(InputError, match="like clean01"):
        degrade(x, cfg, hu=hu[..., :-1])


def test_image_noise_has_the_requested_std():
    for corr in (0.0, 1.0, 2.0):
        cfg = DegradeConfig(noise="image", image_sigma=30.0, image_corr_sigma=corr)
        noise = image_noise_hu((2, 1, 128, 128), cfg, torch.Generator().manual_seed(0))
        assert noise.std().item() == pytest.approx(30.0, rel=0.05)
        assert abs(noise.mean().item()) < 2.0


def test_scale_two_blurs_and_halves_after_the_noise():
    x = body_slices(48)
    clean_lr = degrade(x, DegradeConfig(noise="none", scale=2))
    assert clean_lr.shape == (2, 1, 24, 24)
    torch.testing.assert_close(clean_lr, downsample2(x, 1.0))
    flat = torch.full((1, 1, 16, 16), 0.4)
    torch.testing.assert_close(downsample2(flat, 1.5), torch.full((1, 1, 8, 8), 0.4))
    noisy_lr = degrade(x, DegradeConfig(noise="image", scale=2), torch.Generator().manual_seed(0))
    noisy_hr = degrade(x, DegradeConfig(noise="image"), torch.Generator().manual_seed(0))
    torch.testing.assert_close(noisy_lr, downsample2(noisy_hr, 1.0))  # noise first, then blur + downsample
    assert bicubic_upsample(noisy_lr).shape == x.shape
    with pytest.raises(InputError, match="even"):
        degrade(x[..., :47, :47], DegradeConfig(noise="none", scale=2))


def test_window_hu_round_trip():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert window_to_hu(x).tolist() == [-150.0, -50.0, 50.0, 250.0]
    assert window_to_hu(x, below_hu=-1000.0)[0] == -1000.0
    torch.testing.assert_close(hu_to_window(window_to_hu(x, below_hu=-1000.0)), x)
    assert hu_to_window(torch.tensor([-1000.0, 3000.0])).tolist() == [0.0, 1.0]


def test_config_round_trip_and_validation():
    cfg = DegradeConfig(noise="image", scale=2, photons=5e4)
    assert DegradeConfig.from_dict(cfg.to_dict()) == cfg
    assert replace(cfg, scale=1).scale == 1
    with pytest.raises(InputError, match="unknown fields"):
        DegradeConfig.from_dict({"nosie": "image"})
    for bad in ({"noise": "speckle"}, {"scale": 3}, {"photons": 0}, {"fbp_filter": "shepp"}, {"n_angles": 1}):
        with pytest.raises(InputError):
            DegradeConfig(**bad)


def test_bad_shapes_raise_input_error():
    with pytest.raises(InputError, match="square"):
        degrade(torch.zeros(1, 1, 32, 40), DegradeConfig())
    with pytest.raises(InputError, match=r"\(N, 1, H, W\)"):
        degrade(torch.zeros(32, 32), DegradeConfig(noise="image"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projection_noise_on_cuda_matches_cpu_statistics():
    hu = disc(128, 50, value=0.0, background=-1000.0)
    cfg = DegradeConfig(photons=1e5, n_angles=180)
    cpu = projection_noise_hu(hu, cfg, torch.Generator().manual_seed(0))
    gpu = projection_noise_hu(hu.cuda(), cfg, torch.Generator(device="cuda").manual_seed(0)).cpu()
    assert gpu.std().item() == pytest.approx(cpu.std().item(), rel=0.1)
    angles = projection_angles(180)
    torch.testing.assert_close(radon(hu.cuda(), angles.cuda()).cpu(), radon(hu, angles), atol=1e-2, rtol=1e-4)
