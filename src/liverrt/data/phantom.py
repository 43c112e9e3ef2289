"""Deterministic synthetic abdominal CT phantom, for tests and demos only.

The phantom is a stand-in for exercising the pipeline (readers, training loops,
exports, metrics) without patient data. It is NOT a substitute for real CT
data: its anatomy is a handful of analytic shapes, its intensities and noise
are only CT-like, and a model trained or evaluated on it says nothing about
real scans.

Each case is built slice by slice in physical millimetres, so the anatomy keeps
its size whatever ``size``/``fov_mm`` are. Axes follow liverrt's convention
(see :mod:`liverrt.data.volume`): the liver (patient's right) is on the image
left, anterior at the top, slices run inferior to superior. The slice stack
always spans the same stretch of anatomy, from below the liver tip to the
liver dome; ``slice_thickness_mm`` only sets the recorded spacing.

What a case holds: air, a patient table, body wall (fat, muscle), spine and
ribs, lung bases, kidneys, spleen, stomach (with an air-fluid level), pancreas,
aorta, IVC, bowel, gallbladder and the liver with brighter vessels, texture and
optional hypodense lesions (inside the liver mask, like LiTS ``label > 0``).
In a fraction of the liver slices the liver is two separate regions (the right
lobe and segments III/IV, split by a fissure holding the gallbladder).

Every random draw comes from generators seeded by the case seed (never the
global RNG); the same seed gives the same case on any machine with the same
numpy and scipy.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from liverrt.atomic import atomic_dir, check_outputs, write_text_atomic, writes_outputs
from liverrt.data.io import write_nifti, write_png_slices
from liverrt.data.volume import Volume, default_affine
from liverrt.metrics import label_by_area

log = logging.getLogger(__name__)

GENERATOR = "liverrt phantom"
VERSION = 1
NOTE = "synthetic phantom, not a substitute for real CT"

Z_SPAN_MM = 160.0  # anatomy spanned by the slice stack, whatever its spacing
MIN_REGION_MM2 = 40.0  # liver pieces smaller than this are dropped from the mask
PSF_SIGMA_PX = 0.7  # blur of the ideal image (scanner point-spread function)
NOISE_SIGMA_PX = 0.9  # correlation length of the noise
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class PhantomConfig:
    """Size and content of the synthetic cases.

    Attributes:
        size: in-plane pixels, ``H == W``.
        slices: number of axial slices ``D``.
        fov_mm: in-plane field of view; pixel spacing is ``fov_mm / size``.
        slice_thickness_mm: slice spacing written to the volume.
        lesions: add 1-4 hypodense liver lesions per case (inside the mask).
        noise_hu: standard deviation of the correlated noise (jittered per case).
        two_region_fraction: about this fraction of the liver-bearing slices show
            the liver as two separate regions (at least one when > 0 and ``slices >= 8``).
    """

    size: int = 256
    slices: int = 32
    fov_mm: float = 380.0
    slice_thickness_mm: float = 5.0
    lesions: bool = True
    noise_hu: float = 12.0
    two_region_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"PhantomConfig.size: got {self.size}, expected at least 32 pixels")
        if self.slices < 1:
            raise ValueError(f"PhantomConfig.slices: got {self.slices}, expected at least 1")
        if not self.fov_mm > 0 or not self.slice_thickness_mm > 0:
            raise ValueError(
                f"PhantomConfig: got fov_mm={self.fov_mm}, slice_thickness_mm="
                f"{self.slice_thickness_mm}, expected positive millimetres"
            )
        if not self.noise_hu >= 0:
            raise ValueError(f"PhantomConfig.noise_hu: got {self.noise_hu}, expected >= 0")
        if not 0.0 <= self.two_region_fraction <= 1.0:
            raise ValueError(
                f"PhantomConfig.two_region_fraction: got {self.two_region_fraction}, expected 0..1"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        px = self.fov_mm / self.size
        return (float(self.slice_thickness_mm), px, px)


# ----------------------------------------------------------------------------- public API


def case_seed(seed: int, k: int) -> int:
    """The seed of case ``k`` of a dataset generated with ``seed`` (independent of the case count)."""
    _check_seed(seed)
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, dtype=np.uint32)[0])


def synth_case(
    seed: int, config: PhantomConfig = PhantomConfig(), *, case_id: str = "phantom_000"
) -> Volume:
    """One synthetic abdominal CT case.

    Returns:
        A :class:`Volume` with ``image`` int16 HU ``(D, H, W)`` in [-1024, 3071],
        ``mask`` bool liver (lesions included), ``instances`` uint8 ``(D, H, W)``
        numbering the separate 8-connected liver regions of each slice (1 is the
        largest, 0 background), ``spacing`` ``(thickness, px, px)`` and
        ``default_affine(spacing)``.
    """
    _check_seed(seed)
    case = _Case(seed, config)
    image = np.empty(case.shape, dtype=np.int16)
    mask = np.zeros(case.shape, dtype=bool)
    for d in range(config.slices):
        image[d], mask[d] = case.slice(d)
    spacing = config.spacing
    return Volume(
        image=image,
        spacing=spacing,
        affine=default_affine(spacing),
        intensity="hu",
        mask=mask,
        instances=label_by_area(mask),
        slice_names=tuple(f"slice_{i:03d}" for i in range(config.slices)),
        case_id=case_id,
        source="phantom",
    )


def _check_seed(seed: int) -> None:
    if int(seed) < 0:
        raise ValueError(f"phantom seed: got {seed}, expected a non-negative integer")


def window_to_uint8(hu: np.ndarray, center: float = 50.0, width: float = 400.0) -> np.ndarray:
    """Map HU to 0..255 with a display window (default: abdomen, centre 50 width 400)."""
    if not width > 0:
        raise ValueError(f"window_to_uint8: got width {width}, expected > 0")
    lo = center - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


@writes_outputs("liverrt data synth")
def synth_dataset(
    out_dir: Path,
    cases: int,
    *,
    seed: int = 0,
    config: PhantomConfig = PhantomConfig(),
    on_case: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``cases`` phantom cases under ``out_dir`` and a ``phantom.json`` manifest.

    Case ``k`` is ``synth_case(case_seed(seed, k), config)``, so it is the same
    whatever ``cases`` is. Each case folder ``phantom_NNN/`` holds
    ``image.nii.gz`` (int16 HU), ``mask.nii.gz`` (uint8 0/1), ``images/`` (8-bit
    PNG, window 50/400) and ``masks/`` (PNG 0/255). All files are written
    atomically (temporary file, then rename); ``phantom.json`` is written last.

    Args:
        on_case: called as ``on_case(k, cases)`` after case ``k`` (0-based) is
            written, e.g. ``lambda k, n: bar.update(k + 1, n)``.
        overwrite: replace case folders liverrt did not write (see :mod:`liverrt.atomic`).

    Returns:
        The case folders, in order.
    """
    if cases < 0:
        raise ValueError(f"synth_dataset: got cases={cases}, expected >= 0")
    out_dir = Path(out_dir)
    check_outputs([*(out_dir / f"phantom_{k:03d}" for k in range(cases)), out_dir / "phantom.json"])
    out_dir.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    entries: list[dict[str, object]] = []
    for k in range(cases):
        case_id = f"phantom_{k:03d}"
        cseed = case_seed(seed, k)
        vol = synth_case(cseed, config, case_id=case_id)
        folder = out_dir / case_id
        with atomic_dir(folder) as tmp:  # a case folder appears whole or not at all
            write_nifti(vol.image, vol.affine, tmp / "image.nii.gz")
            write_nifti(vol.mask.astype(np.uint8), vol.affine, tmp / "mask.nii.gz")
            write_png_slices(window_to_uint8(vol.image), tmp / "images", vol.names)
            write_png_slices(vol.mask, tmp / "masks", vol.names)
        regions = vol.instances.reshape(vol.shape[0], -1).max(axis=1)
        entries.append(
            {
                "id": case_id,
                "seed": cseed,
                "shape": list(vol.shape),
                "spacing": list(vol.spacing),
                "liver_slices": int((regions > 0).sum()),
                "two_region_slices": [int(i) for i in np.flatnonzero(regions >= 2)],
                "lesions": _Case(cseed, config).lesions_in(vol.mask),
            }
        )
        folders.append(folder)
        log.debug("phantom case %s written to %s", case_id, folder)
        if on_case is not None:
            on_case(k, cases)
    manifest = {
        "generator": GENERATOR,
        "version": VERSION,
        "seed": int(seed),
        "config": asdict(config),
        "cases": entries,
        "note": NOTE,
    }
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", out_dir / "phantom.json")
    return folders


# ----------------------------------------------------------------------------- shapes

Region = tuple[tuple[slice, slice], np.ndarray]  # (rows, cols) window and a bool mask inside it


class _Grid:
    """Pixel-centre coordinates in mm (x toward patient left, y toward posterior, 0 at the centre)."""

    def __init__(self, size: int, px: float) -> None:
        self.size = size
        self.px = px
        self.coord = ((np.arange(size) - (size - 1) / 2.0) * px).astype(np.float32)

    def span(self, centre: float, radius: float) -> slice:
        half = (self.size - 1) / 2.0
        lo = math.floor((centre - radius) / self.px + half)
        hi = math.ceil((centre + radius) / self.px + half) + 1
        return slice(min(max(lo, 0), self.size), min(max(hi, 0), self.size))

    def ellipse(
        self,
        cx: float,
        cy: float,
        a: float,
        b: float,
        angle: float = 0.0,
        lobes: tuple[tuple[int, float, float], ...] = (),
        power: float = 2.0,
    ) -> Region:
        """A (rotated, super-, lobulated) ellipse: semi-axes ``a`` along ``angle``, ``b`` across.

        ``angle`` turns the ``a`` axis from +x toward +y (radians). ``lobes`` are
        ``(k, amplitude, phase)`` harmonics of the boundary radius.
        """
        reach = max(a, b) * (1.0 + sum(abs(amp) for _, amp, _ in lobes))
        rows, cols = self.span(cy, reach), self.span(cx, reach)
        dx = self.coord[cols][None, :] - np.float32(cx)
        dy = self.coord[rows][:, None] - np.float32(cy)
        if angle:
            c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
            u, v = (c * dx + s * dy) / np.float32(a), (c * dy - s * dx) / np.float32(b)
        else:
            u, v = dx / np.float32(a), dy / np.float32(b)
        if power == 2.0:
            rho = u * u + v * v
        else:
            rho = (np.abs(u) ** power + np.abs(v) ** power) ** (2.0 / power)
        if lobes:
            u, v = np.broadcast_arrays(u, v)
            phi = np.arctan2(v, u)
            bound = np.ones_like(phi)
            for k, amp, phase in lobes:
                bound += np.float32(amp) * np.cos(k * phi + np.float32(phase))
            inside = rho <= bound * bound
        else:
            inside = rho <= 1.0
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        return (rows, cols), np.broadcast_to(inside, shape)

    def full(self, region: Region) -> np.ndarray:
        out = np.zeros((self.size, self.size), dtype=bool)
        out[region[0]] = region[1]
        return out


class _Canvas:
    """One slice being painted: an HU image and what the liver must stay clear of."""

    def __init__(self, grid: _Grid, img: np.ndarray | None = None) -> None:
        n = grid.size
        self.grid = grid
        self.img = np.full((n, n), -1000.0, dtype=np.float32) if img is None else img
        self.organs = np.zeros((n, n), dtype=bool)  # the liver keeps a fat plane from these
        self.abutting = np.zeros((n, n), dtype=bool)  # the liver may touch these (IVC, gallbladder)

    def paint(
        self, region: Region, value: float, *, organ: bool = False, abut: bool = False
    ) -> None:
        window, inside = region
        self.img[window][inside] = value
        if organ:
            self.organs[window] |= inside
        if abut:
            self.abutting[window] |= inside

    def put(
        self,
        value: float,
        cx: float,
        cy: float,
        a: float,
        b: float,
        angle: float = 0.0,
        *,
        lobes: tuple[tuple[int, float, float], ...] = (),
        organ: bool = False,
        abut: bool = False,
    ) -> Region:
        """Paint an ellipse (see :meth:`_Grid.ellipse`) with ``value``; returns its region."""
        region = self.grid.ellipse(cx, cy, a, b, angle, lobes=lobes)
        self.paint(region, value, organ=organ, abut=abut)
        return region


def _bump(h: float, centre: float, half: float) -> float:
    """1 at ``centre``, falling like an ellipsoid's cross-section to 0 at ``centre +- half``."""
    t = (h - centre) / half
    return math.sqrt(1.0 - t * t) if abs(t) < 1.0 else 0.0


def _lobes(
    rng: np.random.Generator, ks: tuple[int, ...], amp: float
) -> list[tuple[int, float, float, float]]:
    """Random boundary harmonics ``(k, amplitude, phase, phase drift per unit h)``."""
    return [
        (k, amp * rng.uniform(0.4, 1.0), rng.uniform(0, 2 * math.pi), rng.uniform(-2, 2))
        for k in ks
    ]


def _lobes_at(
    lobes: list[tuple[int, float, float, float]], h: float
) -> tuple[tuple[int, float, float], ...]:
    return tuple((k, a, p + drift * h) for k, a, p, drift in lobes)


def _disk(radius_px: int) -> np.ndarray:
    r = np.arange(-radius_px, radius_px + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius_px * radius_px + 0.5


# ----------------------------------------------------------------------------- one case


class _Case:
    """The random anatomy of one case and its slice-by-slice renderer.

    Heights ``h`` are fractions of ``Z_SPAN_MM`` (0 inferior, 1 superior);
    in-plane lengths are millimetres from the image centre. Anatomy, lesions and
    noise each draw from their own child generator, so turning lesions off
    leaves the anatomy and the noise unchanged.
    """

    def __init__(self, seed: int, config: PhantomConfig) -> None:
        self.config = config
        D = config.slices
        self.shape = (D, config.size, config.size)
        self.grid = _Grid(config.size, config.fov_mm / config.size)
        anatomy_ss, lesion_ss, noise_ss = np.random.SeedSequence(int(seed)).spawn(3)
        rng = np.random.default_rng(anatomy_ss)
        self.noise_rng = np.random.default_rng(noise_ss)
        # the draws below come in a fixed order: reordering them would change every case of a seed
        self.h = (np.arange(D) + 0.5) / D + rng.uniform(-0.02, 0.02)
        self._draw_contrast(rng)
        self._draw_body(rng)
        self._draw_organs(rng)
        self._draw_liver(rng)
        self._plan_two_region(rng)
        self.texture = self._texture_waves(rng)
        self._draw_liver_vessels(rng)

        lesion_rng = np.random.default_rng(lesion_ss)
        self.lesions = self._draw_lesions(lesion_rng) if config.lesions else []

    # ------------------------------------------------------------------ drawing the anatomy

    def _draw_contrast(self, rng: np.random.Generator) -> None:
        """Tissue values in HU for one contrast phase ``p``: 0 late arterial .. 1 portal venous; the noise level."""
        u = rng.uniform
        self.liver_hu = u(60.0, 120.0)
        p = (self.liver_hu - 60.0) / 60.0
        self.aorta_hu = 250.0 - 95.0 * p + u(-10, 10)
        self.portal_hu = self.liver_hu + 12.0 + 30.0 * p + u(-4, 4)
        self.ivc_hu = 95.0 + 55.0 * p + u(-5, 5)
        self.spleen_hu = min(max(self.liver_hu + u(0, 15), 95.0), 135.0)
        self.cortex_hu = 150.0 + 45.0 * (1 - p) + u(-5, 5)
        self.medulla_hu = self.cortex_hu - 45.0 * (1 - p) - u(5, 15)
        self.pancreas_hu = 85.0 + 20.0 * p + u(-5, 5)
        self.muscle_hu = u(42, 58)
        self.fat_hu = u(-110, -90)
        self.visceral_fat_hu = self.fat_hu + u(0, 15)
        self.noise_std = self.config.noise_hu * u(0.85, 1.15)

    def _draw_body(self, rng: np.random.Generator) -> None:
        """Body outline, fat and muscle wall; spine, ribs and lung bases; aorta and IVC."""
        u = rng.uniform
        # body: outline, fat (anterior, lateral, posterior), muscle wall
        self.cx, self.cy = u(-5, 5), u(-12, -4)
        self.body_a, self.body_b, self.body_power = u(148, 168), u(100, 120), u(2.2, 2.6)
        self.body_lobes = _lobes(rng, (3, 4), 0.015)
        self.f_ant, self.f_lat, self.f_post = u(12, 30), u(10, 24), u(8, 16)
        self.wall = u(8, 13)
        # spine, ribs, lungs
        self.vb_a, self.vb_b, self.x_v = u(18, 22), u(15, 18), self.cx + u(-2, 2)
        self.vert_phase = u(0, 37)
        self.rib_step, self.rib_phase, self.rib_twist = math.radians(u(24, 30)), u(0, 7), u(1.5, 3)
        self.h_lung = u(0.8, 0.88)
        # great vessels
        self.aorta_dx, self.aorta_r = u(9, 15), u(10, 12.5)
        self.ivc_dx, self.ivc_dy, self.ivc_a, self.ivc_b = u(24, 30), u(5, 11), u(11, 14), u(8, 11)

    def _draw_organs(self, rng: np.random.Generator) -> None:
        """Kidneys, spleen, stomach, pancreas, colon and small-bowel loops.

        Each organ is ``(centre height, half height, ...)`` in ``h``, sizes in mm.
        """
        u = rng.uniform
        self.kidneys = []
        c = u(0.17, 0.25)
        for side, dc in ((-1, 0.0), (1, u(0.04, 0.09))):  # the left kidney sits higher
            self.kidneys.append(
                (side, c + dc, u(0.17, 0.21), u(62, 74), u(12, 24), u(21, 26), u(28, 34))
            )
        self.spleen = (u(0.62, 0.72), u(0.22, 0.28), u(17, 24), u(36, 48), u(0.6, 0.85))
        self.spleen_lobes = _lobes(rng, (2, 3), 0.08)
        self.stomach = (
            u(0.72, 0.8),
            u(0.26, 0.32),
            u(0.25, 0.38),
            u(0.05, 0.25),
            u(34, 46),
            u(28, 38),
        )
        self.stomach_ang, self.stomach_level = u(-0.5, 0.2), u(-0.1, 0.45)
        self.stomach_lobes = _lobes(rng, (2, 3), 0.06)
        self.pancreas = (u(0.5, 0.56), u(0.08, 0.12), u(38, 48), u(8, 11), u(0.3, 0.5))
        self.colon_r = u(15, 21)
        # small-bowel loops: (x, y as cavity fractions, radius, drift x, drift y, top height)
        self.bowel = [
            (u(-0.5, 0.65), u(-0.75, 0.1), u(11, 17), u(-50, 50), u(-50, 50), u(0.25, 0.55))
            for _ in range(12)
        ]

    def _draw_liver(self, rng: np.random.Generator) -> None:
        """The liver's right lobe (RL) and left lobe with segments III/IV (LL); the heart and gallbladder beside it."""
        u = rng.uniform
        self.h_tip, self.h_max, self.h_top = u(0.2, 0.3), u(0.6, 0.72), u(0.98, 1.06)
        self.rl_a, self.rl_b = u(0.5, 0.58), u(0.8, 0.92)  # fractions of the cavity semi-axes
        self.rl_y, self.rl_ang = u(-0.05, 0.1), u(-0.2, 0.15)
        self.rl_lobes = _lobes(rng, (2, 3, 4), 0.06)
        self.ll_a, self.ll_b = u(0.3, 0.38), u(0.25, 0.32)
        self.ll_x0, self.ll_x1, self.ll_ang = u(-0.2, -0.1), u(0.05, 0.2), u(0.1, 0.35)
        self.ll_lobes = _lobes(rng, (2, 3), 0.05)
        self.h_top_l = self.h_top - u(0.02, 0.06)
        self.heart = (self.h_top_l - u(0.0, 0.04), u(0.1, 0.25), u(50, 62), u(40, 50))
        self.gallbladder = (u(11, 16), u(18, 26), u(0, 20))

    def _draw_liver_vessels(self, rng: np.random.Generator) -> None:
        """Liver vessels ``(direction, mm per unit h, h span, radius)``.

        Hepatic veins run down from the IVC near the dome, portal branches up from the hilum.
        """
        u = rng.uniform
        self.h_hv, self.h_pv = self.h_top - u(0.04, 0.08), u(0.5, 0.6)
        self.veins = [
            (math.radians(ang + u(-10, 10)), u(250, 380), u(0.3, 0.45), u(4.5, 6.5))
            for ang in (200.0, 240.0, 290.0)
        ]
        self.portal = [
            (math.radians(u(110, 270)), u(150, 320), u(0.15, 0.35), u(3.5, 5.5)) for _ in range(6)
        ]

    # ------------------------------------------------------------------ planning

    def _plan_two_region(self, rng: np.random.Generator) -> None:
        """Choose the split slices: the lowest slices of the left lobe, above the right-lobe tip."""
        cfg = self.config
        liver = [d for d in range(cfg.slices) if self.h_tip < self.h[d] < self.h_top - 0.02]
        n = len(liver)
        n2 = int(round(cfg.two_region_fraction * n))
        if cfg.two_region_fraction > 0 and cfg.slices >= 8:
            n2 = max(n2, 1)
        n2 = max(0, min(n2, n - 2))
        tip_only = max(0, min(int(round(rng.uniform(0.05, 0.15) * n)), n - n2 - 2))
        self.split = set(liver[tip_only : tip_only + n2])
        first = liver[tip_only] if tip_only < n else cfg.slices - 1
        self.h_lb = self.h[first] - 0.5 / cfg.slices if liver else 2.0  # left lobe's lowest h

    def _texture_waves(self, rng: np.random.Generator) -> np.ndarray:
        """Random plane waves ``(kx, ky, kz, phase, amplitude)`` for a smooth liver texture."""
        n = 10
        wavelength = rng.uniform(8.0, 30.0, n)
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        k = direction * (2 * math.pi / wavelength)[:, None]
        amp = np.full(n, rng.uniform(3.0, 6.0) * math.sqrt(2.0 / n))
        return np.column_stack([k, rng.uniform(0, 2 * math.pi, n), amp]).astype(np.float32)

    def _draw_lesions(self, rng: np.random.Generator) -> list[tuple[float, ...]]:
        """1-4 hypodense ellipsoids ``(x, y, z, rx, ry, rz, hu)`` centred well inside a lobe."""
        out = []
        for _ in range(int(rng.integers(1, 5))):
            right = rng.uniform() < 0.75 or self.h_lb > self.h_top_l
            lo, hi = (self.h_tip, self.h_top) if right else (self.h_lb, self.h_top_l)
            h = rng.uniform(lo + 0.3 * (hi - lo), hi - 0.25 * (hi - lo))
            cx, cy, a, b, ang = self._right_lobe(h) if right else self._left_lobe(h)
            rho, phi = 0.55 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
            du, dv = rho * a * math.cos(phi), rho * b * math.sin(phi)
            x = cx + math.cos(ang) * du - math.sin(ang) * dv
            y = cy + math.sin(ang) * du + math.cos(ang) * dv
            radii = rng.uniform(3.0, 15.0) * rng.uniform(0.8, 1.2, 3)
            out.append((x, y, h * Z_SPAN_MM, *radii, rng.uniform(10.0, 40.0)))
        return out

    def lesions_in(self, mask: np.ndarray) -> int:
        """How many of this case's lesions reach into the ``(D, H, W)`` liver mask."""
        count = 0
        for lesion in self.lesions:
            for d in range(self.shape[0]):
                region = self._lesion_section(lesion, d)
                if region is not None and mask[d][region[0]][region[1]].any():
                    count += 1
                    break
        return count

    # ------------------------------------------------------------------ geometry at height h

    def _body(self, h: float) -> tuple[float, float]:
        return self.body_a * (1 + 0.03 * (h - 0.5)), self.body_b * (1 - 0.04 * (h - 0.5))

    def _cavity(self, h: float) -> tuple[float, float, float, float, float]:
        """``(cy, a_m, b_m, a_c, b_c)``: centre row and semi-axes of the muscle wall and the cavity."""
        a, b = self._body(h)
        a_m, b_m = a - self.f_lat, b - (self.f_ant + self.f_post) / 2
        cy = self.cy + (self.f_ant - self.f_post) / 2
        return cy, a_m, b_m, a_m - self.wall, b_m - self.wall

    def _spine_y(self, h: float) -> float:
        cy, _, b_m, _, _ = self._cavity(h)
        return cy + b_m - self.vb_b - 53.0

    def _ivc(self, h: float) -> tuple[float, float]:
        """IVC centre; it moves forward into the liver near the dome."""
        y = self._spine_y(h) - self.vb_b - self.ivc_dy - max(0.0, h - 0.72) * 60.0
        return self.x_v - self.ivc_dx, y

    def _right_lobe(self, h: float) -> tuple[float, float, float, float, float]:
        """``(cx, cy, a, b, angle)`` of the right lobe; ``a == 0`` outside its heights."""
        if h <= self.h_tip or h >= self.h_top:
            s = 0.0
        elif h < self.h_max:
            s = 0.3 + 0.7 * ((h - self.h_tip) / (self.h_max - self.h_tip)) ** 0.7
        else:
            s = max(0.0, 1.0 - ((h - self.h_max) / (self.h_top - self.h_max)) ** 2) ** 0.4
        cy, _, _, a_c, b_c = self._cavity(h)
        a, b = self.rl_a * a_c * s, self.rl_b * b_c * s
        # against the right wall; the tip lies forward, clear of the right kidney
        return self.cx - a_c + 0.9 * a, cy + (self.rl_y - (1 - s) * 0.3) * b_c, a, b, self.rl_ang

    def _left_lobe(self, h: float) -> tuple[float, float, float, float, float]:
        """``(cx, cy, a, b, angle)`` of the left lobe, along the anterior wall."""
        if h < self.h_lb or h >= self.h_top_l:
            s, t = 0.0, 0.0
        else:
            t = (h - self.h_lb) / (self.h_top_l - self.h_lb)
            if t < 0.45:
                s = 0.6 + 0.4 * math.sin(0.5 * math.pi * t / 0.45)
            else:
                s = math.sqrt(max(0.0, 1.0 - ((t - 0.45) / 0.55) ** 2))
        cy, _, _, a_c, b_c = self._cavity(h)
        a, b = self.ll_a * a_c * s, self.ll_b * b_c * max(s, 0.6)
        fx = self.ll_x0 + (self.ll_x1 - self.ll_x0) * min(t / 0.6, 1.0) - 0.5 * max(0.0, t - 0.6)
        return self.cx + a_c * fx, cy - b_c + b + 4.0, a, b, self.ll_ang

    def _fissure(self, h: float) -> tuple[float, float, float, float]:
        """Line between the lobes: a point ``(x, y)`` and the unit normal toward the left lobe."""
        rx, ry, ra, rb, _ = self._right_lobe(h)
        lx, ly, la, lb, _ = self._left_lobe(h)
        dist = math.hypot(lx - rx, ly - ry) or 1.0
        nx, ny = (lx - rx) / dist, (ly - ry) / dist
        # each lobe's reach along that direction (rotation ignored: only roughly midway is needed)
        reach_r = 1.0 / math.hypot(nx / ra, ny / rb) if ra > 0 else 0.0
        reach_l = 1.0 / math.hypot(nx / la, ny / lb) if la > 0 else 0.0
        t = (reach_r + dist - reach_l) / 2.0
        return rx + nx * t, ry + ny * t, nx, ny

    def _lesion_section(self, lesion: tuple[float, ...], d: int) -> Region | None:
        x, y, z, rx, ry, rz, _ = lesion
        dz = (self.h[d] * Z_SPAN_MM - z) / rz
        if abs(dz) >= 1.0:
            return None
        f = math.sqrt(1.0 - dz * dz)
        return self.grid.ellipse(x, y, rx * f, ry * f)

    # ------------------------------------------------------------------ rendering

    def slice(self, d: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``d``: ``(int16 HU image, bool liver mask)``."""
        g, h = self.grid, float(self.h[d])
        canvas = _Canvas(g)
        cavity = self._render_body(canvas, h)
        self._render_spine(canvas, h)
        self._render_ribs(canvas, h)
        self._render_bowel(canvas, h)
        self._render_organs(canvas, h)
        split = d in self.split
        liver, sides = self._liver_shape(h, split)
        if split:
            x, y, nx, ny = self._fissure(h)
            a, b, hu = self.gallbladder
            canvas.put(hu, x, y, a, b, math.atan2(ny, nx), abut=True)
        fat_plane = ndimage.binary_dilation(
            canvas.organs, structure=_disk(max(1, round(2.5 / g.px)))
        )
        liver &= cavity & ~canvas.abutting & ~fat_plane
        liver = self._keep_main_regions(liver, sides)
        canvas.img[liver] = self._liver_values(liver, h, d)[liver]
        return self._acquire(canvas.img), liver

    def _render_body(self, canvas: _Canvas, h: float) -> np.ndarray:
        """Table, body wall, cavity fat, lung bases and heart; returns the cavity mask."""
        g, img = canvas.grid, canvas.img
        a, b = self._body(h)
        cy, a_m, b_m, a_c, b_c = self._cavity(h)
        cx = self.cx
        y_back = self.cy + 0.93 * b  # the back lies flat on the table
        # table: a curved carbon-fibre shell with foam inside
        ty = g.coord[:, None] - (y_back + 4.0 - 0.0007 * g.coord[None, :] ** 2)
        table = (np.abs(g.coord[None, :]) < 175.0) & (ty >= 0) & (ty < 18.0)
        img[table] = -180.0
        skin = max(2.0, 1.5 * g.px)
        img[table & ((ty < skin) | (ty >= 18.0 - skin))] = 120.0
        # subcutaneous fat, muscle wall (with the recti in front), intra-abdominal fat
        lobes = _lobes_at(self.body_lobes, h)
        body = g.full(g.ellipse(cx, self.cy, a, b, lobes=lobes, power=self.body_power))
        body[g.coord > y_back] = False
        img[body] = self.fat_hu
        canvas.paint(g.ellipse(cx, cy, a_m, b_m, power=self.body_power), self.muscle_hu)
        cavity_power = (self.body_power + 2) / 2
        cavity = g.full(g.ellipse(cx, cy, a_c, b_c, power=cavity_power))
        img[cavity] = self.visceral_fat_hu
        for side in (-1, 1):
            canvas.put(self.muscle_hu, cx + side * 38, cy - b_m + 7, 32, 7, side * 0.12)
        if (
            h > self.h_lung
        ):  # lung bases in the posterior and lateral recesses, behind the diaphragm
            q = min(1.0, (h - self.h_lung) / (1.0 - self.h_lung))
            t_post, t_lat = 50.0 * q, 22.0 * q
            ic, ia, ib = cy - t_post / 2, a_c - t_lat, b_c - t_post / 2
            diaphragm = cavity & ~g.full(g.ellipse(cx, ic, ia, ib, power=cavity_power))
            lung = cavity & ~g.full(g.ellipse(cx, ic, ia + 4, ib + 4, power=cavity_power))
            lung[:, g.span(self.x_v, 30.0)] = False
            lung[g.coord < cy - 0.2 * b_c] = False
            img[diaphragm] = self.muscle_hu - 5
            img[lung] = -860.0
            canvas.organs |= diaphragm
        h0, fx, ha, hb = self.heart
        if h > h0:  # the inferior heart, in front of the stomach
            q = min(1.0, 0.4 + (h - h0) / 0.08)
            x, y = cx + fx * a_c, cy - b_c + hb * q + 6
            canvas.put(self.muscle_hu - 5, x, y, ha * q, hb * q, -0.3, organ=True)
            canvas.put(
                (self.aorta_hu + self.ivc_hu) / 2, x + 4, y + 3, ha * q - 12, hb * q - 11, -0.3
            )
        return cavity

    def _render_spine(self, canvas: _Canvas, h: float) -> None:
        """Vertebra (or disc), posterior arch, canal, paraspinal muscles and psoas."""
        x, y = self.x_v, self._spine_y(h)
        y_can = y + self.vb_b + 9.0
        muscle = self.muscle_hu
        if h < 0.6:
            r = 6.0 + 16.0 * (0.6 - h) / 0.6
            for side in (-1, 1):
                canvas.put(muscle, x + side * (self.vb_a + 0.8 * r), y + 4, r, 1.1 * r, organ=True)
        for side in (-1, 1):
            canvas.put(muscle, x + side * 32, y_can + 18, 25, 24, side * 0.3, organ=True)
        phase = (h * Z_SPAN_MM + self.vert_phase) % 37.0  # ~37 mm per vertebra and disc
        if phase < 8.0:
            canvas.put(85.0, x, y, self.vb_a, self.vb_b, organ=True)
        else:
            canvas.put(720.0, x, y, self.vb_a, self.vb_b, organ=True)
            canvas.put(240.0, x, y, self.vb_a - 2.2, self.vb_b - 2.2)
        bone = 520.0
        for side in (-1, 1):
            canvas.put(bone, x + side * 10, y + self.vb_b + 4, 4.5, 7.0, organ=True)  # pedicles
            if 12.0 < phase < 26.0:  # transverse processes
                canvas.put(bone, x + side * 26, y_can - 1, 15, 4.5, side * 0.25, organ=True)
        canvas.put(bone, x, y_can + 3, 14, 12, organ=True)  # lamina
        canvas.put(bone, x, y_can + 22, 4.0, 15.0, organ=True)  # spinous process
        canvas.put(25.0, x, y_can, 9.0, 7.5)  # canal
        canvas.put(38.0, x, y_can, 5.0, 4.0)  # cord

    def _render_ribs(self, canvas: _Canvas, h: float) -> None:
        """Oblique rib sections in the wall, reaching further forward in higher slices."""
        if h < 0.3:
            return
        cy, a_m, b_m, _, _ = self._cavity(h)
        ra, rb = a_m - 5.5, b_m - 5.5
        reach = math.radians(90 + 125 * (h - 0.3) / 0.7)  # angle from the posterior midline
        first = math.radians(32) + (self.rib_phase + self.rib_twist * h) % self.rib_step
        for side in (-1, 1):
            w = first
            while w < reach:
                phi = math.pi / 2 - side * w
                x, y = self.cx + ra * math.cos(phi), cy + rb * math.sin(phi)
                tilt = math.atan2(rb * math.cos(phi), -ra * math.sin(phi)) + side * 0.35
                canvas.put(650.0, x, y, 10.0, 4.0, tilt)
                canvas.put(250.0, x, y, 7.5, 2.0, tilt)
                w += self.rib_step

    def _render_bowel(self, canvas: _Canvas, h: float) -> None:
        """Colon in the flanks and small-bowel loops, below the liver and beside it on the left."""
        cy, _, _, a_c, b_c = self._cavity(h)
        r = self.colon_r
        colon = []
        if h < self.h_tip:
            colon.append((self.cx - a_c + r + 6, cy + 0.1 * b_c))
        if h < 0.6:
            colon.append((self.cx + a_c - r - 6, cy + 0.15 * b_c))
        for x, y in colon:
            canvas.put(30.0, x, y, r, r, organ=True)
            canvas.put(-20.0, x, y, r - 2.5, r - 2.5)
            canvas.put(-1000.0, x, y - 0.6 * r, 0.5 * r, 0.25 * r)
        for fx, fy, rb, drift_x, drift_y, top in self.bowel:
            if h > top or (fx < 0 and h > self.h_tip):  # the right side belongs to the liver
                continue
            x = self.cx + fx * a_c + drift_x * (h - 0.1)
            y = cy + fy * b_c + drift_y * (h - 0.1)
            canvas.put(42.0, x, y, rb, 0.85 * rb, organ=True)
            canvas.put(18.0, x, y, rb - 2.5, 0.85 * rb - 2.5)
            if (fx * 7.0) % 1.0 > 0.6:  # some loops hold a gas bubble
                canvas.put(-1000.0, x, y - 0.45 * rb, 0.45 * rb, 0.25 * rb)

    def _render_organs(self, canvas: _Canvas, h: float) -> None:
        """Kidneys, spleen, pancreas, stomach, aorta, IVC and mesenteric vessels."""
        g = canvas.grid
        cy, _, _, a_c, b_c = self._cavity(h)
        x_v, y_v = self.x_v, self._spine_y(h)
        for side, hc, half, dx, dy, ka, kb in self.kidneys:  # cortex, medulla, sinus fat
            s = _bump(h, hc, half) ** 0.7
            if s < 0.3:
                continue
            x, y, ang = x_v + side * dx, y_v + dy, -side * 0.55
            canvas.put(self.cortex_hu, x, y, ka * s, kb * s, ang, organ=True)
            canvas.put(self.medulla_hu, x, y, 0.62 * ka * s, 0.7 * kb * s, ang)
            if s > 0.8:
                canvas.put(self.visceral_fat_hu, x - side * 0.7 * ka, y - 4, 0.45 * ka, 0.3 * kb)
        hc, half, t, length, psi = self.spleen  # a crescent along the left posterolateral wall
        s = _bump(h, hc, half) ** 0.6
        if s > 0.25:
            t, length = t * s, length * s
            x = self.cx + (a_c - t - 3) * math.cos(psi)
            y = cy + (b_c - t - 3) * math.sin(psi)
            window, spleen = g.ellipse(x, y, t, length, psi, lobes=_lobes_at(self.spleen_lobes, h))
            hx, hy = x - 1.1 * t * math.cos(psi), y - 1.1 * t * math.sin(psi)
            hilum = g.full(g.ellipse(hx, hy, 0.7 * t, 0.55 * length, psi))
            canvas.paint((window, spleen & ~hilum[window]), self.spleen_hu, organ=True)
        y_ao = y_v - self.vb_b - self.aorta_r - 1.5
        hc, half, pa, pb, ang = self.pancreas  # in front of the aorta, tail toward the spleen
        s = _bump(h, hc, half)
        if s > 0.3:
            pa *= s**0.5
            x = x_v + 5 + 0.6 * pa * math.cos(ang)
            y = y_ao - self.aorta_r - pb - 3 + 0.6 * pa * math.sin(ang)
            canvas.put(self.pancreas_hu, x, y, pa, pb, ang, organ=True)
        hc, half, fx, fy, sa, sb = self.stomach  # wall, fluid, and air in front (patient supine)
        s = _bump(h, hc, half) ** 0.5
        if s > 0.3:
            x, y, sa, sb = self.cx + fx * a_c, cy - fy * b_c, sa * s, sb * s
            lobes = _lobes_at(self.stomach_lobes, h)
            canvas.put(45.0, x, y, sa, sb, self.stomach_ang, organ=True, lobes=lobes)
            window, lumen = canvas.put(12.0, x, y, sa - 4, sb - 4, self.stomach_ang, lobes=lobes)
            level = y - (self.stomach_level - 0.3 * (h - hc)) * (sb - 4)
            canvas.paint((window, lumen & (g.coord[window[0]][:, None] < level)), -1000.0)
        x_ao = x_v + self.aorta_dx
        canvas.put(self.aorta_hu, x_ao, y_ao, self.aorta_r, self.aorta_r, organ=True)
        canvas.put(self.ivc_hu, *self._ivc(h), self.ivc_a, self.ivc_b, abut=True)
        if h < 0.48:  # superior mesenteric artery and vein
            canvas.put(self.aorta_hu, x_ao, y_ao - self.aorta_r - 12, 4, 4, organ=True)
            canvas.put(self.portal_hu, x_ao - 14, y_ao - self.aorta_r - 14, 6, 6, organ=True)

    # ------------------------------------------------------------------ liver

    def _liver_shape(self, h: float, split: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """The liver before organs are cut out, and on split slices each pixel's side of the fissure."""
        g = self.grid
        liver = np.zeros((g.size, g.size), dtype=bool)
        rx, ry, ra, rb, rang = self._right_lobe(h)
        if ra > 0:
            liver |= g.full(g.ellipse(rx, ry, ra, rb, rang, lobes=_lobes_at(self.rl_lobes, h)))
        lx, ly, la, lb, lang = self._left_lobe(h)
        if la <= 0:
            return liver, None
        liver |= g.full(g.ellipse(lx, ly, la, lb, lang, lobes=_lobes_at(self.ll_lobes, h)))
        if not split:
            if ra > 0:  # segment IV bridges the lobes
                half = math.hypot(lx - rx, ly - ry) / 2
                width = 0.75 * max(min(lb, rb), 0.4 * rb)
                ang = math.atan2(ly - ry, lx - rx)
                liver |= g.full(g.ellipse((rx + lx) / 2, (ry + ly) / 2, half + width, width, ang))
            return liver, None
        # a fat-filled fissure wide enough for >= 2 background pixels at any size
        x, y, nx, ny = self._fissure(h)
        side = (g.coord[None, :] - x) * nx + (g.coord[:, None] - y) * ny
        liver &= np.abs(side) >= max(10.0, 3.2 * g.px) / 2
        return liver, side > 0

    def _keep_main_regions(self, liver: np.ndarray, sides: np.ndarray | None) -> np.ndarray:
        """Keep the largest region (on split slices, the largest on each side); drop crumbs."""
        lab, n = ndimage.label(liver, structure=EIGHT_CONNECTED)
        if n == 0:
            return liver
        areas = np.bincount(lab.ravel())
        areas[0] = 0
        if sides is None:
            keep = [int(np.argmax(areas))]
        else:
            on_left = np.zeros(n + 1, dtype=bool)
            on_left[lab[sides & liver]] = True
            keep = [int(np.argmax(np.where(on_left == flag, areas, 0))) for flag in (False, True)]
        min_px = MIN_REGION_MM2 / (self.grid.px * self.grid.px)
        return np.isin(lab, [k for k in keep if k > 0 and areas[k] >= min_px])

    def _liver_values(self, liver: np.ndarray, h: float, d: int) -> np.ndarray:
        """Liver HU (valid on ``liver``): parenchyma with texture, brighter vessels, lesions."""
        g = self.grid
        vals = np.full((g.size, g.size), self.liver_hu, dtype=np.float32)
        rows, cols = np.nonzero(liver)
        if rows.size:
            x, y, z = g.coord[cols], g.coord[rows], np.float32(h * Z_SPAN_MM)
            tex = np.zeros(rows.size, dtype=np.float32)
            for kx, ky, kz, phase, amp in self.texture:
                tex += amp * np.sin(kx * x + ky * y + (kz * z + phase))
            vals[rows, cols] += tex
        canvas = _Canvas(g, vals)
        ivc = self._ivc(self.h_hv)
        hilum = (ivc[0] - 20.0, ivc[1] - 30.0)
        for vessels, origin, dh in (
            (self.veins, ivc, self.h_hv - h),
            (self.portal, hilum, h - self.h_pv),
        ):
            for ang, length, span, r0 in vessels:
                if 0.0 <= dh <= span:
                    # an oblique vessel's section: stretched by its in-plane travel over one slice
                    r = max(1.5, r0 * (1.0 - 0.6 * dh / span))
                    x = origin[0] + length * dh * math.cos(ang)
                    y = origin[1] + length * dh * math.sin(ang)
                    stretch = min(0.5 * length / self.config.slices, 12.0)
                    canvas.put(self.portal_hu, x, y, r + stretch, r, ang)
        for lesion in self.lesions:
            region = self._lesion_section(lesion, d)
            if region is not None:
                canvas.paint(region, lesion[6])
        return vals

    def _acquire(self, ideal: np.ndarray) -> np.ndarray:
        """Scanner blur, correlated noise, rounding to int16 and clipping to [-1024, 3071]."""
        img = ndimage.gaussian_filter(ideal, PSF_SIGMA_PX)
        if self.noise_std > 0:
            white = self.noise_rng.standard_normal(ideal.shape, dtype=np.float32)
            gain = np.float32(self.noise_std / _NOISE_GAIN)
            img += ndimage.gaussian_filter(white, NOISE_SIGMA_PX) * gain
        return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def _gaussian_gain(sigma: float, truncate: float = 4.0) -> float:
    """Std of unit white noise after scipy's 2D Gaussian filter (away from the borders)."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    return float((k * k).sum())  # separable: the variance is (sum k^2)^2


_NOISE_GAIN = _gaussian_gain(NOISE_SIGMA_PX)
