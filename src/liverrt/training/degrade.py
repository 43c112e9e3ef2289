"""Degradations that turn clean CT slices into DnCNN-SR training pairs.

A pair is ``(degrade(clean01), clean01)``: the network sees the degraded
slice and learns to restore the clean one. Clean slices are network input,
``(N, 1, H, W)`` float in [0, 1] from the :class:`~liverrt.data.preprocess.PreprocessSpec`
HU window (default centre 50, width 400: 0 <-> -150 HU, 1 <-> 250 HU).

Noise models (``DegradeConfig.noise``):

* ``"projection"``: low-dose CT simulated where its noise arises. The slice
  in HU is turned into linear attenuation ``mu = MU_WATER_PER_MM * (1 + HU/1000)``
  (clipped at 0), forward projected (parallel beam, ``n_angles`` views over
  180 degrees, one detector bin per pixel, rays through the inscribed circle),
  the line integrals ``p`` (mu times ``pixel_mm``) give expected counts
  ``I0 * exp(-p)`` with ``I0 = photons`` per bin and view, counts are drawn
  from a Poisson law (zero counts floored at :data:`MIN_COUNTS`), and
  ``-log(counts / I0) - p`` is the noise on the line integrals. Its filtered
  back-projection (ramp, optionally Hann-windowed) is the image noise, which
  is added in HU. Reconstructing only the noise (FBP is linear) inserts the
  texture of low-dose CT without adding FBP's own blur or view aliasing to the
  clean anatomy. Noise variance goes roughly as ``1 / (photons * n_angles)``.
* ``"image"``: the fast alternative: Gaussian white noise blurred by a
  Gaussian of ``image_corr_sigma`` pixels, scaled to ``image_sigma`` HU.
* ``"none"``: no noise (only the scale-2 blur and downsampling, if any).

HU and the window: the window clips, so a clean slice in [0, 1] does not say
what lies outside [-150, 250] HU. :func:`degrade` therefore accepts the slice
in HU (``hu=``); without it the slice is mapped back by :func:`window_to_hu`,
with pixels at the bottom of the window taken as air (``air_hu``, -1000 HU:
most of them are air, some are fat below -150 HU) and pixels at the top kept
at the window's upper end (bone, whose attenuation and so the noise behind it
is then underestimated). The noisy HU slice is windowed again, so noise below
and above the window is clipped, as it would be on a windowed display.

Scale 2 (``DegradeConfig.scale``): noise first, then a Gaussian blur of
``blur_sigma`` high-resolution pixels and a 2x2 average (a low-resolution
reconstruction of the same low-dose data smooths its noise too), so the pair
is ``(N, 1, H/2, W/2)`` degraded vs ``(N, 1, H, W)`` clean.

Projection noise needs the whole slice (a crop's attenuation is not the
patient's): degrade full slices, then crop. Random draws use the passed
``torch.Generator`` (on the tensors' device); ``None`` uses the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F

from liverrt.errors import InputError
from liverrt.models.dncnn_sr import bicubic_upsample

#: Linear attenuation of water in 1/mm, at an effective energy of about 70 keV
#: (0.192 /cm; 0.0193 /mm at 70 keV in the NIST XCOM tables).
MU_WATER_PER_MM = 0.0192
#: Zero counts are floored at this many photons before the log.
MIN_COUNTS = 1.0
#: Elements per grid_sample call in the projector (memory bound, ~64 MiB float32).
_CHUNK_ELEMENTS = 2**24

NoiseModel = Literal["projection", "image", "none"]
FbpFilter = Literal["ramp", "hann"]
NOISE_MODELS = ("projection", "image", "none")
FBP_FILTERS = ("ramp", "hann")


@dataclass(frozen=True)
class DegradeConfig:
    """How clean slices are degraded (see the module docstring).

    Attributes:
        noise: ``projection`` | ``image`` | ``none``.
        photons: projection noise: incident photons ``I0`` per detector bin
            and view (``inf``: no noise). Lower is noisier.
        n_angles: projection noise: views over 180 degrees.
        pixel_mm: projection noise: pixel size of the slice grid in mm (sets
            the path lengths; use the spacing after preprocessing).
        fbp_filter: projection noise: ``ramp`` (Ram-Lak) or ``hann`` (smoother).
        image_sigma: image noise: standard deviation in HU.
        image_corr_sigma: image noise: Gaussian correlation length in pixels (0: white).
        scale: 1 (denoise) or 2 (denoise + 2x super-resolution).
        blur_sigma: scale 2: Gaussian blur in high-resolution pixels before 2x2 averaging.
        window_center, window_width: the HU window of the clean slices.
        air_hu: HU assumed for pixels at the bottom of the window when no HU slice is given.
    """

    noise: NoiseModel = "projection"
    photons: float = 1e5
    n_angles: int = 360
    pixel_mm: float = 0.8
    fbp_filter: FbpFilter = "hann"
    image_sigma: float = 30.0
    image_corr_sigma: float = 1.0
    scale: int = 1
    blur_sigma: float = 1.0
    window_center: float = 50.0
    window_width: float = 400.0
    air_hu: float = -1000.0

    def __post_init__(self) -> None:
        if self.noise not in NOISE_MODELS:
            raise InputError(f"DegradeConfig.noise: got {self.noise!r}, expected one of {NOISE_MODELS}.")
        if self.fbp_filter not in FBP_FILTERS:
            raise InputError(f"DegradeConfig.fbp_filter: got {self.fbp_filter!r}, expected one of {FBP_FILTERS}.")
        if self.scale not in (1, 2):
            raise InputError(f"DegradeConfig.scale: got {self.scale}, expected 1 or 2.")
        checks = {
            "photons": self.photons > 0,
            "n_angles": self.n_angles >= 2,
            "pixel_mm": self.pixel_mm > 0,
            "image_sigma": self.image_sigma >= 0,
            "image_corr_sigma": self.image_corr_sigma >= 0,
            "blur_sigma": self.blur_sigma >= 0,
            "window_width": self.window_width > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"DegradeConfig.{name}: got {getattr(self, name)}, expected a positive value.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DegradeConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"DegradeConfig: unknown fields {sorted(unknown)}; expected a subset of {sorted(known)}.")
        return cls(**data)


# ----------------------------------------------------------------------------- HU <-> window <-> mu


def window_to_hu(x01: torch.Tensor, *, center: float = 50.0, width: float = 400.0,
                 below_hu: float | None = None) -> torch.Tensor:
    """Windowed [0, 1] values back to HU (``center - width/2 + x * width``).

    Clipped values cannot be recovered: pixels ``<= 0`` become ``below_hu``
    when given (e.g. -1000 for air), else the window's lower end; pixels
    ``>= 1`` stay at its upper end.
    """
    hu = (center - width / 2.0) + x01 * width
    if below_hu is not None:
        hu = torch.where(x01 <= 0, torch.full_like(hu, below_hu), hu)
    return hu


def hu_to_window(hu: torch.Tensor, *, center: float = 50.0, width: float = 400.0) -> torch.Tensor:
    """HU to [0, 1] with the window ``[center - width/2, center + width/2]`` (clipped)."""
    return ((hu - (center - width / 2.0)) / width).clamp(0.0, 1.0)


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """HU to linear attenuation in 1/mm (``mu_water * (1 + HU/1000)``, at least 0)."""
    return (mu_water * (1.0 + hu / 1000.0)).clamp_min(0.0)


# ----------------------------------------------------------------------------- parallel-beam projector


def projection_angles(n_angles: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """``n_angles`` view angles in radians, evenly spaced over [0, pi)."""
    return torch.arange(n_angles, device=device, dtype=torch.float64).mul(math.pi / n_angles).to(dtype)


def _centred(n: int, device, dtype) -> torch.Tensor:
    return torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2.0


def _check_square(image: torch.Tensor, name: str) -> int:
    if image.ndim != 4 or image.shape[1] != 1 or image.shape[2] != image.shape[3]:
        raise InputError(f"{name}: got shape {tuple(image.shape)}, expected square slices (N, 1, n, n).")
    if not image.is_floating_point():
        raise InputError(f"{name}: got {image.dtype}, expected a floating-point tensor.")
    return int(image.shape[-1])


def radon(image: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Parallel-beam forward projection of square slices, by rotation and summation.

    Args:
        image: ``(N, 1, n, n)`` float (any device); pixel ``(i, j)`` sits at
            ``x = j - (n-1)/2``, ``y = i - (n-1)/2`` (pixel units, rows down).
        angles: ``(A,)`` view angles in radians.

    Returns:
        ``(N, A, n)`` line integrals in pixel units: ``p[a, k]`` sums bilinear
        samples one pixel apart along the ray ``x cos(a) + y sin(a) = k - (n-1)/2``,
        ``n`` samples through the inscribed circle (so an object must lie inside it).
    """
    n = _check_square(image, "radon")
    batch, dev, dt = image.shape[0], image.device, image.dtype
    angles = angles.to(device=dev, dtype=dt)
    t = _centred(n, dev, dt)[None, None, :]  # detector position
    s = _centred(n, dev, dt)[None, :, None]  # position along the ray
    src = image.reshape(1, batch, n, n)  # slices as channels: one grid serves the whole batch
    chunk = max(1, _CHUNK_ELEMENTS // (max(batch, 2) * n * n))
    out = []
    for a0 in range(0, len(angles), chunk):
        th = angles[a0 : a0 + chunk]
        cos, sin = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
        x = t * cos - s * sin
        y = t * sin + s * cos
        grid = torch.stack((x * (2.0 / n), y * (2.0 / n)), dim=-1).reshape(1, -1, n, 2)
        samples = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(samples.reshape(batch, len(th), n, n).sum(dim=2))
    return torch.cat(out, dim=1)


def _fbp_filter(n_det: int, n_angles: int, kind: str, device, dtype) -> tuple[torch.Tensor, int]:
    """rfft-domain filter for projections zero-padded to ``size`` (returned), including FBP's pi / A factor."""
    size = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
    # Ram-Lak kernel sampled in space (Kak & Slaney eq. 61): no DC offset, unlike a sampled |f|
    k = torch.arange(size, dtype=torch.float64)
    k = torch.minimum(k, size - k)
    h = torch.where(k % 2 == 1, -1.0 / (math.pi * k.clamp_min(1)) ** 2, torch.zeros_like(k))
    h[0] = 0.25
    filt = 2.0 * torch.fft.rfft(h).real
    if kind == "hann":
        f = torch.fft.rfftfreq(size, dtype=torch.float64)  # cycles per bin, 0 .. 0.5
        filt = filt * torch.cos(math.pi * f) ** 2
    return (filt * (math.pi / (2.0 * n_angles))).to(device=device, dtype=dtype), size


def filter_projections(sinogram: torch.Tensor, *, kind: FbpFilter = "ramp") -> torch.Tensor:
    """Ramp-filter ``(N, A, T)`` projections along the detector (zero-padded FFT), times pi / A.

    The scaling makes :func:`backproject` of the result a reconstruction (see :func:`fbp`).
    """
    n_det, n_angles = sinogram.shape[-1], sinogram.shape[-2]
    filt, size = _fbp_filter(n_det, n_angles, kind, sinogram.device, sinogram.dtype)
    spec = torch.fft.rfft(sinogram, n=size, dim=-1) * filt
    return torch.fft.irfft(spec, n=size, dim=-1)[..., :n_det]


def backproject(projections: torch.Tensor, angles: torch.Tensor, size: int) -> torch.Tensor:
    """Back-projection of ``(N, A, T)`` onto ``(N, 1, size, size)``: ``sum_a q_a(x cos(a) + y sin(a))``.

    Linear interpolation between detector bins, on the pixel grid of :func:`radon`.
    """
    batch, n_angles, n_det = projections.shape
    dev, dt = projections.device, projections.dtype
    angles = angles.to(device=dev, dtype=dt)
    x = _centred(size, dev, dt)[None, None, :]
    y = _centred(size, dev, dt)[None, :, None]
    src = projections.reshape(1, batch, n_angles, n_det)
    chunk = max(1, _CHUNK_ELEMENTS // (max(batch, 2) * size * size))
    acc = projections.new_zeros(batch, size * size)
    for a0 in range(0, n_angles, chunk):
        idx = torch.arange(a0, min(a0 + chunk, n_angles), device=dev)
        th = angles[idx]
        t = x * torch.cos(th)[:, None, None] + y * torch.sin(th)[:, None, None]  # (a, size, size)
        u = (2.0 * (t + (n_det - 1) / 2.0) + 1.0) / n_det - 1.0  # column k = t + (T-1)/2
        v = ((2.0 * idx.to(dt) + 1.0) / n_angles - 1.0)[:, None, None].expand_as(u)
        grid = torch.stack((u, v), dim=-1).reshape(1, len(idx), size * size, 2)
        samples = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        acc += samples.reshape(batch, len(idx), size * size).sum(dim=1)
    return acc.reshape(batch, 1, size, size)


def fbp(sinogram: torch.Tensor, angles: torch.Tensor, size: int, *, kind: FbpFilter = "ramp") -> torch.Tensor:
    """Filtered back-projection: ``(N, A, T)`` line integrals in pixel units -> ``(N, 1, size, size)``.

    ``fbp(radon(x), angles, n)`` approximates ``x`` inside the inscribed circle.
    """
    if sinogram.ndim != 3 or sinogram.shape[1] != len(angles):
        raise InputError(f"fbp: got sinogram {tuple(sinogram.shape)}, expected (N, {len(angles)}, T).")
    return backproject(filter_projections(sinogram, kind=kind), angles, size)


# ----------------------------------------------------------------------------- noise


def projection_noise_hu(hu: torch.Tensor, config: DegradeConfig,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Low-dose noise ``(N, 1, n, n)`` in HU for square HU slices (see the module docstring)."""
    n = _check_square(hu, "projection noise")
    if math.isinf(config.photons):
        return torch.zeros_like(hu)
    angles = projection_angles(config.n_angles, device=hu.device, dtype=hu.dtype)
    line = radon(hu_to_mu(hu), angles) * config.pixel_mm  # dimensionless line integrals
    expected = config.photons * torch.exp(-line)
    counts = torch.poisson(expected, generator=generator).clamp_min(MIN_COUNTS)
    noise_line = torch.log(config.photons / counts) - line
    noise_mu = fbp(noise_line, angles, n, kind=config.fbp_filter) / config.pixel_mm  # 1/mm
    return noise_mu * (1000.0 / MU_WATER_PER_MM)


def gaussian_kernel1d(sigma: float, *, truncate: float = 4.0, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 1D Gaussian taps, radius ``int(truncate * sigma + 0.5)`` (scipy's rule)."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def _separable(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Valid separable convolution of ``(N, 1, H, W)`` with 1D taps ``k``."""
    x = F.conv2d(x, k.reshape(1, 1, -1, 1))
    return F.conv2d(x, k.reshape(1, 1, 1, -1))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(N, 1, H, W)`` with reflected borders (identity for ``sigma == 0``)."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, device=x.device, dtype=x.dtype)
    r = (len(k) - 1) // 2
    return _separable(F.pad(x, (r, r, r, r), mode="reflect"), k)


def image_noise_hu(shape: tuple[int, ...], config: DegradeConfig, generator: torch.Generator | None = None, *,
                   device=None, dtype=torch.float32) -> torch.Tensor:
    """Correlated Gaussian noise of ``shape`` ``(N, 1, H, W)``: std ``image_sigma`` HU, correlation ``image_corr_sigma`` px."""
    n, c, h, w = shape
    if config.image_corr_sigma <= 0:
        return config.image_sigma * torch.randn(shape, generator=generator, device=device, dtype=dtype)
    k = gaussian_kernel1d(config.image_corr_sigma, device=device, dtype=dtype)
    r = (len(k) - 1) // 2
    white = torch.randn((n * c, 1, h + 2 * r, w + 2 * r), generator=generator, device=device, dtype=dtype)
    gain = (k * k).sum()  # std of white noise after the separable blur
    return (_separable(white, k) * (config.image_sigma / gain)).reshape(shape)


def downsample2(x: torch.Tensor, blur_sigma: float) -> torch.Tensor:
    """Gaussian blur (``blur_sigma`` px) then 2x2 averaging: ``(N, 1, H, W)`` -> ``(N, 1, H/2, W/2)``."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise InputError(f"downsample2: got {tuple(x.shape)}, expected even H and W.")
    return F.avg_pool2d(gaussian_blur(x, blur_sigma), 2)


# ----------------------------------------------------------------------------- pairs


def degrade(clean01: torch.Tensor, config: DegradeConfig, generator: torch.Generator | None = None, *,
            hu: torch.Tensor | None = None) -> torch.Tensor:
    """The degraded input for a clean slice batch.

    Args:
        clean01: ``(N, 1, H, W)`` float in [0, 1] (the window of ``config``);
            ``H == W`` for projection noise, even for ``scale == 2``.
        config: the degradation.
        generator: source of every random draw (same device as ``clean01``).
        hu: optional ``(N, 1, H, W)`` HU slices that ``clean01`` was windowed
            from; gives the true attenuation outside the window.

    Returns:
        ``(N, 1, H, W)`` (scale 1) or ``(N, 1, H/2, W/2)`` (scale 2), same dtype, in [0, 1].
    """
    if clean01.ndim != 4 or clean01.shape[1] != 1 or not clean01.is_floating_point():
        raise InputError(f"degrade: got {tuple(clean01.shape)} {clean01.dtype}, expected (N, 1, H, W) float in [0, 1].")
    if hu is not None and hu.shape != clean01.shape:
        raise InputError(f"degrade: hu has shape {tuple(hu.shape)}, expected {tuple(clean01.shape)} like clean01.")
    if generator is not None and generator.device.type != clean01.device.type:
        raise InputError(f"degrade: generator is on {generator.device}, expected the slices' device "
                         f"({clean01.device}); use torch.Generator(device=...).")
    window = {"center": config.window_center, "width": config.window_width}
    noisy = clean01
    if config.noise != "none":
        base = hu.to(clean01.dtype) if hu is not None else window_to_hu(clean01, **window, below_hu=config.air_hu)
        if config.noise == "projection":
            noise = projection_noise_hu(base, config, generator)
        else:
            noise = image_noise_hu(tuple(clean01.shape), config, generator, device=clean01.device, dtype=clean01.dtype)
        noisy = hu_to_window(base + noise, **window)
    if config.scale == 2:
        noisy = downsample2(noisy, config.blur_sigma)
    return noisy


__all__ = [
    "MIN_COUNTS",
    "MU_WATER_PER_MM",
    "DegradeConfig",
    "backproject",
    "bicubic_upsample",
    "degrade",
    "downsample2",
    "fbp",
    "filter_projections",
    "gaussian_blur",
    "gaussian_kernel1d",
    "hu_to_mu",
    "hu_to_window",
    "image_noise_hu",
    "projection_angles",
    "projection_noise_hu",
    "radon",
    "window_to_hu",
]
