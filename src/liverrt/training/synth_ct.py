"""Training CT synthesised from real label maps (SynthSeg, Billot et al., Medical Image Analysis 2023, for CT).

A label map of a real patient (``labels.nii.gz``: 1 body, 2 bone, 3 lung, 4 kidney, 5 spleen,
6 stomach, 7 pancreas, 8 gallbladder, 9 adrenal, 10 biliary, 11 liver, 12 portal vein, 13 venous
system, 14 artery, 15 liver lesion, 16 other; ``liver.nii.gz``: the expert liver mask) becomes a
CT volume whose liver mask is the expert's own. Every sample draws anew:

* **a contrast phase** (native, arterial, portal-venous) and, per tissue, a mean HU from that phase's
  range (:data:`PHASES`); with probability ``hard_p`` the liver is put within a few HU of a
  neighbour (spleen, muscle, kidney, stomach wall, bowel) and the hepatic vessels close to the
  liver: the cases a network must not solve by intensity alone;
* **what the map only calls "body"**: subcutaneous fat under the skin, a muscle layer under it,
  paraspinal and psoas muscle beside the spine, visceral fat, bowel wall and contents with gas
  pockets filling the rest; the marrow and canal inside the bone ring;
* **organs the map lacks** (kidneys, spleen, stomach): ellipsoids placed where they lie, relative
  to the spine, the body outline and the liver's extent (liver on the image left, anterior at the
  top: liverrt's axes), only over voxels the map calls "body", so the expert's labels are kept;
* **the pancreas and the duodenum** (with probability ``hilum_p``): the soft tissue below the liver's
  hilum, which only one map labels, around the extrahepatic portal veins every map has;
* **the thorax above the diaphragm** (with probability ``thorax_p``): most maps label no lung, so
  the cavity above the liver dome would otherwise be filled with abdominal fat and bowel. The
  diaphragm follows the liver's upper surface (lower on the patient's left, reaching further down
  behind, into the posterior recesses); above it lie the lung bases (where the map has no lung)
  and the heart, an ellipsoid resting on the diaphragm in front, left of the midline;
* **texture** (correlated noise per tissue), a smooth bias field, lesions (the map's own, and with
  ``lesion_p`` extra hypo- or hyperdense spheres inside the liver), **partial-volume blur** in the
  plane, **slice thickness** (a box average over ``thickness`` mm along z) and **in-plane
  resolution** (an extra blur), drawn at random;
* **CT noise** from the low-dose projection model of :mod:`liverrt.training.degrade` (Poisson
  counts on a parallel-beam sinogram, filtered back-projection), at a dose drawn at random.

The volume is synthesised on the map's grid, then averaged down to ``size`` pixels in-plane
(the partial volume of a coarser scanner grid) before the noise is added at that grid. The
images are CT-like, not CT: :func:`write_sheet` puts samples beside real slices for a person to
judge. All random draws come from one ``numpy.random.Generator`` per sample (seeded).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from liverrt.atomic import atomic_dir, atomic_path, check_outputs, write_text_atomic, writes_outputs
from liverrt.data.io import read_nifti, write_nifti
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.training.degrade import DegradeConfig, projection_noise_hu
from liverrt.viz import overlay, save_png

log = logging.getLogger(__name__)

GENERATOR = "liverrt synth-ct"
VERSION = 3  # 2: the thorax (SynthConfig.thorax_p); 3: the pancreas and duodenum (SynthConfig.hilum_p)
LABEL_FILE, LIVER_FILE = "labels.nii.gz", "liver.nii.gz"

#: the label values of a map (``../shared/data/ircad_labels`` convention)
LABELS = {1: "body", 2: "bone", 3: "lung", 4: "kidney", 5: "spleen", 6: "stomach", 7: "pancreas",
          8: "gallbladder", 9: "adrenal", 10: "biliary", 11: "liver", 12: "portal_vein", 13: "venous",
          14: "artery", 15: "lesion", 16: "other"}
#: tissues the synthesis adds where the map says only "body" (or nothing)
EXTRA = {0: "air", 17: "subcutaneous_fat", 18: "visceral_fat", 19: "muscle", 20: "bowel", 21: "bowel_gas",
         22: "marrow", 23: "stomach_gas", 24: "heart"}
TISSUES = {**EXTRA, **{k: v for k, v in LABELS.items() if k != 1}}
_ID = {name: k for k, name in TISSUES.items()}

#: mean HU (low, high) per tissue and phase; a sample draws each mean uniformly in its range.
#: Literature values for adult abdominal CT (e.g. Kalra et al.; Bae, Radiology 2010), widened.
_COMMON = {"air": (-1010, -980), "subcutaneous_fat": (-125, -85), "visceral_fat": (-120, -80),
           "bowel_gas": (-1000, -850), "stomach_gas": (-1000, -900), "lung": (-900, -780),
           "bone": (350, 1100), "marrow": (60, 280), "gallbladder": (-5, 25), "biliary": (0, 35),
           "other": (250, 1800)}
PHASES: dict[str, dict[str, tuple[float, float]]] = {
    "native": {**_COMMON, "liver": (45, 70), "spleen": (38, 55), "kidney": (25, 42), "stomach": (15, 45),
               "pancreas": (30, 50), "adrenal": (20, 40), "muscle": (38, 60), "bowel": (15, 45),
               "portal_vein": (30, 50), "venous": (30, 50), "artery": (35, 55), "lesion": (5, 40),
               "heart": (35, 55)},
    "arterial": {**_COMMON, "liver": (55, 85), "spleen": (80, 140), "kidney": (120, 220), "stomach": (40, 90),
                 "pancreas": (90, 130), "adrenal": (50, 90), "muscle": (45, 65), "bowel": (40, 90),
                 "portal_vein": (90, 170), "venous": (60, 140), "artery": (220, 380), "lesion": (20, 140),
                 "heart": (180, 350)},
    "portal": {**_COMMON, "liver": (90, 135), "spleen": (100, 135), "kidney": (130, 210), "stomach": (60, 110),
               "pancreas": (80, 115), "adrenal": (60, 100), "muscle": (50, 70), "bowel": (60, 110),
               "portal_vein": (140, 210), "venous": (120, 190), "artery": (140, 220), "lesion": (30, 95),
               "heart": (110, 190)},
}
#: texture: standard deviation (HU) of each tissue's own correlated variation
TEXTURE = {"liver": (4, 12), "spleen": (4, 14), "kidney": (8, 25), "muscle": (5, 12), "bowel": (8, 25),
           "stomach": (6, 18), "bone": (60, 200), "marrow": (20, 60), "lesion": (5, 15),
           "visceral_fat": (8, 20), "subcutaneous_fat": (6, 14), "pancreas": (6, 15), "heart": (5, 15)}
#: tissues drawn only in samples that have them (``thorax_p``), so that samples without draw as before
THORAX = ("heart",)
#: neighbours the liver may be made to look like (the hard case)
HARD_NEIGHBOURS = ("spleen", "muscle", "kidney", "stomach", "bowel")


@dataclass(frozen=True)
class SynthConfig:
    """What a sample may draw. Ranges are (low, high), drawn uniformly unless said otherwise."""

    size: int = 256  # output in-plane pixels (the map's field of view, averaged down)
    phase_p: tuple[float, float, float] = (0.15, 0.25, 0.60)  # native, arterial, portal
    hard_p: float = 0.3  # liver within ``hard_delta_hu`` of a neighbour, vessels close to the liver
    hard_delta_hu: tuple[float, float] = (-12.0, 12.0)
    missing_organ_p: float = 0.85  # per missing organ (kidneys, spleen, stomach): placed in the body
    thorax_p: float = 0.0  # lung bases (where the map has none) and the heart above the diaphragm
    hilum_p: float = 0.0  # the pancreas (where the map has none) and the duodenum below the liver's hilum
    lesion_p: float = 0.35  # extra synthetic lesions inside the liver
    thickness_mm: tuple[float, float] = (1.0, 5.0)  # effective slice thickness (at least the map's spacing)
    psf_px: tuple[float, float] = (0.4, 1.2)  # in-plane blur on the map's grid (pixels)
    # incident photons per bin and view, drawn log-uniformly: liver noise about 40 to 6 HU at 1.4 mm pixels
    # (measured on a 36 cm water disc), clinical doses and low-dose ones
    photons: tuple[float, float] = (1e5, 5e6)
    n_angles: int = 180
    bias_hu: tuple[float, float] = (0.0, 15.0)  # amplitude of a smooth additive bias field

    def __post_init__(self) -> None:
        checks = {"size": 32 <= self.size <= 1024, "phase_p": len(self.phase_p) == 3 and min(self.phase_p) >= 0
                  and sum(self.phase_p) > 0, "hard_p": 0 <= self.hard_p <= 1,
                  "missing_organ_p": 0 <= self.missing_organ_p <= 1,
                  "thorax_p": 0 <= self.thorax_p <= 1, "hilum_p": 0 <= self.hilum_p <= 1,
                  "lesion_p": 0 <= self.lesion_p <= 1,
                  "thickness_mm": 0 < self.thickness_mm[0] <= self.thickness_mm[1],
                  "psf_px": 0 <= self.psf_px[0] <= self.psf_px[1],
                  "photons": 0 < self.photons[0] <= self.photons[1], "n_angles": self.n_angles >= 2}
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"SynthConfig.{name}: got {getattr(self, name)!r}; see the field's comment for "
                                 "the expected range.")


@dataclass(frozen=True)
class LabelMap:
    """One patient's label map on its grid (liverrt axes: ``(D, H, W)``, LPS, spacing ``(dz, dy, dx)`` mm)."""

    case_id: str
    labels: np.ndarray  # uint8
    liver: np.ndarray  # bool, the expert liver mask
    affine: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def read(cls, folder: Path) -> LabelMap:
        folder = Path(folder)
        for name in (LABEL_FILE, LIVER_FILE):
            if not (folder / name).is_file():
                raise InputError(f"{folder}: no {name}; expected a label-map folder with {LABEL_FILE} and "
                                 f"{LIVER_FILE} (like ../shared/data/ircad_labels/ircadNN).")
        labels, affine, spacing = read_nifti(folder / LABEL_FILE, labels=True)
        liver, _, liver_spacing = read_nifti(folder / LIVER_FILE, labels=True)
        if labels.shape != liver.shape or not np.allclose(spacing, liver_spacing, rtol=1e-4):
            raise InputError(f"{folder}: {LABEL_FILE} {labels.shape} and {LIVER_FILE} {liver.shape} are not on one "
                             "grid; expected the same shape and spacing.")
        if labels.ndim != 3 or min(labels.shape) < 1:
            raise InputError(f"{folder / LABEL_FILE}: shape {labels.shape}; expected a 3-D label map.")
        bad = sorted(set(np.unique(labels).tolist()) - {0, *LABELS})
        if bad:
            raise InputError(f"{folder / LABEL_FILE}: label values {bad[:8]}; expected 0..16 "
                             f"({', '.join(f'{k} {v}' for k, v in LABELS.items())}).")
        if not (liver > 0).any():
            raise InputError(f"{folder / LIVER_FILE}: no liver voxel; expected the expert liver mask.")
        return cls(folder.name, labels.astype(np.uint8), liver > 0, affine, tuple(float(s) for s in spacing))


def find_label_maps(root: Path) -> list[Path]:
    """Label-map folders under ``root`` (``root`` itself if it is one), in name order."""
    root = Path(root)
    if (root / LABEL_FILE).is_file():
        return [root]
    folders = sorted(p.parent for p in root.glob(f"*/{LABEL_FILE}"))
    if not folders:
        raise InputError(f"{root}: no label maps; expected folders holding {LABEL_FILE} and {LIVER_FILE}.")
    return folders


# ----------------------------------------------------------------------------- one sample


@dataclass
class _Draw:
    """What one sample drew (recorded in the dataset manifest)."""

    phase: str
    means: dict[str, float]
    hard: str | None
    thickness_mm: float
    psf_px: float
    photons: float
    placed: list[str] = field(default_factory=list)
    lesions: int = 0


def synth_sample(label_map: LabelMap, seed: int, config: SynthConfig = SynthConfig()) -> tuple[Volume, dict]:
    """One synthetic CT of ``label_map``: a :class:`Volume` (int16 HU, the expert liver mask, ``size``²
    in-plane over the map's field of view) and what was drawn."""
    rng = np.random.default_rng(seed)
    draw = _draw(rng, config, label_map.spacing[0])
    tissue = _tissues(label_map, rng, config, draw)
    hu = _intensities(tissue, label_map.spacing, rng, draw)
    hu = _blur_and_thicken(hu, label_map.spacing, draw)
    image, mask, spacing = _to_grid(hu, label_map.liver, label_map.spacing, config.size)
    image = _add_noise(image, spacing, draw, config, seed)
    fh, fw = label_map.labels.shape[1] / config.size, label_map.labels.shape[2] / config.size
    affine = label_map.affine.astype(float).copy()  # voxel (w, h, d) -> mm: w and h get coarser
    affine[:3, 3] += affine[:3, 0] * (fw - 1) / 2 + affine[:3, 1] * (fh - 1) / 2  # the centre of the first voxel
    affine[:3, 0] *= fw
    affine[:3, 1] *= fh
    volume = Volume(image=np.clip(np.rint(image), -1024, 3071).astype(np.int16), spacing=spacing, affine=affine,
                    intensity="hu", mask=mask, case_id=f"{label_map.case_id}_s{seed % 10000:04d}")
    return volume, asdict(draw)


def _draw(rng: np.random.Generator, config: SynthConfig, dz: float) -> _Draw:
    p = np.asarray(config.phase_p, float)
    phase = str(rng.choice(list(PHASES), p=p / p.sum()))
    means = {name: float(rng.uniform(*rng_range)) for name, rng_range in PHASES[phase].items() if name not in THORAX}
    hard = None
    if rng.random() < config.hard_p:
        hard = str(rng.choice(HARD_NEIGHBOURS))
        means["liver"] = means[hard] + float(rng.uniform(*config.hard_delta_hu))
        for vessel in ("portal_vein", "venous"):  # vessels near the liver's own HU
            means[vessel] = means["liver"] + float(rng.uniform(-15, 25))
    thickness = float(rng.uniform(max(dz, config.thickness_mm[0]), max(dz, config.thickness_mm[1])))
    photons = float(math.exp(rng.uniform(math.log(config.photons[0]), math.log(config.photons[1]))))
    return _Draw(phase, means, hard, thickness, float(rng.uniform(*config.psf_px)), photons)


def _tissues(label_map: LabelMap, rng: np.random.Generator, config: SynthConfig, draw: _Draw) -> np.ndarray:
    """The tissue of every voxel (:data:`TISSUES` ids): the map's labels, "body" split into tissues,
    missing organs placed, extra lesions drawn."""
    labels = label_map.labels
    tissue = labels.astype(np.uint8).copy()
    body_only = labels == 1
    dz, dy, dx = label_map.spacing
    inside = labels > 0
    depth = np.stack([ndimage.distance_transform_edt(s, sampling=(dy, dx)) for s in inside])  # mm under the skin
    fat_mm, muscle_mm = rng.uniform(6, 35), rng.uniform(6, 18)
    tissue[body_only] = _ID["visceral_fat"]
    deep = body_only & (depth > fat_mm + muscle_mm)  # the abdominal cavity, inside the wall
    _visceral(tissue, deep, rng, (dy, dx))
    tissue[body_only & (depth <= fat_mm + muscle_mm)] = _ID["muscle"]
    tissue[body_only & (depth <= fat_mm)] = _ID["subcutaneous_fat"]
    bone = labels == 2
    marrow = np.stack([ndimage.binary_fill_holes(s) for s in bone]) & body_only
    tissue[marrow] = _ID["marrow"]
    _paraspinal(tissue, bone, body_only & ~marrow, (dy, dx), rng)
    present = set(np.unique(labels).tolist())
    frame = _frame(label_map)
    allowed = body_only & ~marrow
    if config.thorax_p > 0 and rng.random() < config.thorax_p:
        cavity = deep & np.isin(tissue, _CAVITY_FILL)
        thorax = _thorax(tissue, label_map, frame, cavity, rng, lungs=_ID["lung"] not in present)
        if thorax is not None:
            draw.placed += [name for name in ("lung", "heart") if (tissue[thorax] == _ID[name]).any()]
            draw.means.update({name: float(rng.uniform(*PHASES[draw.phase][name])) for name in THORAX})
            allowed &= ~thorax
    for organ in ("kidney", "spleen", "stomach"):
        if _ID[organ] not in present and rng.random() < config.missing_organ_p:
            if _place_organ(tissue, organ, label_map, frame, allowed, rng):
                draw.placed.append(organ)
    if config.hilum_p > 0 and rng.random() < config.hilum_p:
        placed = _hilum(tissue, label_map, deep & allowed & np.isin(tissue, _CAVITY_FILL), rng,
                        pancreas=_ID["pancreas"] not in present)
        draw.placed += placed
        if placed and draw.hard is not None and rng.random() < 0.5:  # the pancreas as close to the liver
            draw.means["pancreas"] = draw.means["liver"] + float(rng.uniform(*config.hard_delta_hu))
    if rng.random() < config.lesion_p:
        draw.lesions = _extra_lesions(tissue, label_map.liver, label_map.spacing, rng)
    return tissue


def _visceral(tissue: np.ndarray, region: np.ndarray, rng: np.random.Generator, pixel_mm: tuple[float, float]) -> None:
    """The abdominal cavity outside the labelled organs: visceral fat, bowel (wall and contents) and gas,
    as the level sets of a smooth random field."""
    if not region.any():
        return
    field_ = _smooth_field(region.shape, rng, (4.0, 12.0 / pixel_mm[0], 12.0 / pixel_mm[1]))
    field_ /= field_[region].std() + 1e-6
    fat_share = rng.uniform(0.2, 0.6)
    cut = np.quantile(field_[region], fat_share)
    bowel = region & (field_ > cut)
    tissue[bowel] = _ID["bowel"]
    gas = bowel & (field_ > np.quantile(field_[region], 1 - rng.uniform(0.0, 0.08)))
    tissue[gas] = _ID["bowel_gas"]


def _paraspinal(tissue: np.ndarray, bone: np.ndarray, region: np.ndarray, pixel_mm: tuple[float, float],
                rng: np.random.Generator) -> None:
    """Muscle around the spine (erector spinae behind it, psoas beside it): body voxels within a few cm
    of the vertebrae, which are the bone near the spine's centre line (not the ribs)."""
    reach = rng.uniform(20, 40)
    h, w = tissue.shape[1:]
    rows, cols = np.nonzero(bone[:, h // 2:].any(axis=0))  # the vertebrae lie in the posterior half
    if not len(rows):
        return
    cy, cx = rows.mean() + h // 2, np.median(cols)
    yy, xx = np.ogrid[:h, :w]
    near_spine = (np.abs(xx - cx) * pixel_mm[1] < 35) & ((yy - cy) * pixel_mm[0] > -40)
    for k in range(tissue.shape[0]):
        vertebra = bone[k] & near_spine
        if vertebra.any():
            near = ndimage.distance_transform_edt(~vertebra, sampling=pixel_mm) < reach
            tissue[k][near & region[k]] = _ID["muscle"]


def _hilum(tissue: np.ndarray, label_map: LabelMap, cavity: np.ndarray, rng: np.random.Generator, *,
           pancreas: bool) -> list[str]:
    """The pancreas (``pancreas``: the map has none) and the duodenum, the soft tissue just below the liver's
    hilum that a network trained without them takes for liver; over ``cavity`` voxels only (the fat and
    bowel the synthesis drew), so the expert's labels stay. Returns what was placed.

    The extrahepatic portal venous system (the map's portal-vein voxels outside the liver: portal vein,
    confluence, splenic and upper mesenteric veins) guides both. The pancreas is a sleeve 6-14 mm thick
    around it over the 35-65 mm below a level 0-15 mm under its highest voxel; its head is the part on the
    patient's right (the image left) of the veins' median column. The duodenum is bowel wall 5-12 mm thick
    curving around the head on that side and below it."""
    veins = (label_map.labels == _ID["portal_vein"]) & ~label_map.liver
    if veins.sum() < 20:
        return []
    dz = label_map.spacing[0]
    z_mm = np.arange(tissue.shape[0], dtype=np.float32) * dz
    top = np.nonzero(veins.any(axis=(1, 2)))[0].max() * dz - rng.uniform(0, 15)
    band = (z_mm <= top) & (z_mm >= top - rng.uniform(35, 65))
    source = veins & band[:, None, None]
    if not source.any():
        return []
    at = np.argwhere(source)
    midline = float(np.median(at[:, 2]))
    reach = 45.0 / np.asarray(label_map.spacing)  # voxels: the box the distances are computed in, 45 mm about the veins
    lo = np.maximum(0, (at.min(axis=0) - reach).astype(int))
    hi = np.minimum(tissue.shape, (at.max(axis=0) + reach).astype(int) + 1)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub, free = tissue[box], cavity[box]
    xx = np.arange(lo[2], hi[2])[None, None, :]
    placed = []
    gland = sub == _ID["pancreas"]  # the map's own, or none
    if pancreas:
        near = ndimage.distance_transform_edt(~source[box], sampling=label_map.spacing) <= rng.uniform(6, 14)
        sleeve = near & free & ~veins[box]
        if sleeve.sum() >= 50:
            sub[sleeve] = _ID["pancreas"]
            gland = sleeve
            placed.append("pancreas")
    head = gland & (xx <= midline)
    if head.sum() >= 50:
        around = ndimage.distance_transform_edt(~head, sampling=label_map.spacing) <= rng.uniform(5, 12)
        centre_z = np.nonzero(head.any(axis=(1, 2)))[0].mean()
        side = (xx <= np.nonzero(head.any(axis=(0, 1)))[0].mean() + lo[2]) | (
            np.arange(sub.shape[0])[:, None, None] <= centre_z)  # lateral to the head, or below its middle
        wall = around & side & free & (sub != _ID["pancreas"])  # the head is pancreas: left out too
        if wall.sum() >= 50:
            sub[wall] = _ID["bowel"]
            placed.append("duodenum")
    return placed


#: what :func:`_visceral` fills the abdominal cavity with (the thorax replaces it above the diaphragm)
_CAVITY_FILL = (_ID["visceral_fat"], _ID["bowel"], _ID["bowel_gas"])


def _thorax(tissue: np.ndarray, label_map: LabelMap, frame: dict[str, float] | None, cavity: np.ndarray,
            rng: np.random.Generator, *, lungs: bool) -> np.ndarray | None:
    """Diaphragm, lung bases (``lungs``: the map has none) and heart over the ``cavity`` voxels above the
    liver; returns the voxels above the diaphragm's lower surface (``None`` without a frame).

    The diaphragm's lower surface is, per (y, x) column, the top of the liver in that column (the nearest
    liver column's where it has none), lowered up to 25 mm on the patient's left (image right), and never
    more than a reach below the dome: 15-35 mm in front, growing to 50-90 mm at the spine (the posterior
    recesses); smoothed over about 8 mm. A 3-8 mm muscle sheet lies on it; above are lung and heart.
    ``frame``: :func:`_frame` of the map."""
    liver = label_map.liver
    has = liver.any(axis=0)
    if frame is None or not has.any():
        return None
    dz, dy, dx = label_map.spacing
    d, h, w = liver.shape
    top = (d - 1 - np.argmax(liver[::-1], axis=0)).astype(np.float32) * dz  # mm: each column's highest liver voxel
    _, (iy, ix) = ndimage.distance_transform_edt(~has, sampling=(dy, dx), return_indices=True)
    surface = top[iy, ix]
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    surface -= rng.uniform(0, 25) * np.clip((xx - frame["spine_x"]) * dx / 60.0, 0, 1)
    depth = np.clip((yy - frame["body_top"]) / max(frame["spine_y"] - frame["body_top"], 1.0), 0, 1)
    front, back = rng.uniform(15, 35), rng.uniform(50, 90)
    surface = np.maximum(surface, top[has].max() - (front + (back - front) * depth))
    surface = ndimage.gaussian_filter(surface, (8.0 / dy, 8.0 / dx))
    sheet = rng.uniform(3, 8)
    z_mm = (np.arange(d, dtype=np.float32) * dz)[:, None, None]
    thorax = cavity & (z_mm > surface[None])
    above = thorax & (z_mm > surface[None] + sheet)
    tissue[thorax & ~above] = _ID["muscle"]
    cz_axis, cy_axis, cx_axis = rng.uniform(40, 55), rng.uniform(40, 55), rng.uniform(50, 70)  # mm
    cy = frame["body_top"] + rng.uniform(45, 80) / dy
    cx = frame["spine_x"] + rng.uniform(5, 40) / dx  # left of the midline: the image right
    iy_c, ix_c = int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))
    cz = (surface[iy_c, ix_c] + sheet + cz_axis * rng.uniform(0.5, 0.9)) / dz
    heart = above & _ellipsoid(tissue.shape, label_map.spacing, (cz, cy, cx), (cz_axis, cy_axis, cx_axis))
    tissue[heart] = _ID["heart"]
    if lungs:
        tissue[above & ~heart] = _ID["lung"]
    return thorax


def _ellipsoid(shape: tuple[int, int, int], spacing: tuple[float, float, float], centre: tuple[float, float, float],
               axes_mm: tuple[float, float, float]) -> np.ndarray:
    """The voxels of ``shape`` inside the ellipsoid at ``centre`` (voxels, z y x) with semi-axes ``axes_mm``."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    (cz, cy, cx), (dz, dy, dx) = centre, spacing
    return (((zz - cz) * dz / axes_mm[0]) ** 2 + ((yy - cy) * dy / axes_mm[1]) ** 2
            + ((xx - cx) * dx / axes_mm[2]) ** 2) <= 1.0


def _frame(label_map: LabelMap) -> dict[str, float] | None:
    """Where the anatomy lies (pixels, slices): the spine's centre, the body's extent, the liver's z range."""
    bone, body = label_map.labels == 2, label_map.labels > 0
    zs = np.nonzero(label_map.liver.any(axis=(1, 2)))[0]
    ys, xs = np.nonzero(body.any(axis=0))
    if not len(zs) or not len(ys):
        return None
    h = label_map.labels.shape[1]
    spine = bone[:, int(h * 0.5):].any(axis=0)  # the posterior half: vertebrae, not ribs in front
    sy, sx = np.nonzero(spine)
    if not len(sy):
        return None
    return {"spine_y": float(sy.mean() + int(h * 0.5)), "spine_x": float(np.median(sx)),
            "body_top": float(ys.min()), "body_left": float(xs.min()), "body_right": float(xs.max()),
            "z_lo": float(zs.min()), "z_hi": float(zs.max())}


def _place_organ(tissue: np.ndarray, organ: str, label_map: LabelMap, frame: dict[str, float] | None,
                 allowed: np.ndarray, rng: np.random.Generator) -> bool:
    """An ellipsoid for ``organ`` (semi-axes in mm drawn from adult sizes), over ``allowed`` voxels only, placed
    by ``frame`` (:func:`_frame` of the map). Patient left = image right; anterior = image top; z grows towards
    the head."""
    if frame is None:
        return False
    dz, dy, dx = label_map.spacing
    span = frame["z_hi"] - frame["z_lo"]
    f = frame
    if organ == "spleen":
        centres = [(f["z_lo"] + span * rng.uniform(0.55, 0.85), f["spine_y"] - rng.uniform(10, 40) / dy,
                    f["spine_x"] + rng.uniform(70, 110) / dx)]
        axes = (rng.uniform(40, 60), rng.uniform(45, 65), rng.uniform(25, 40))  # z, y, x (mm)
    elif organ == "kidney":
        centres = [(f["z_lo"] + span * rng.uniform(0.05, 0.35) + s * rng.uniform(5, 20) / dz,
                    f["spine_y"] - rng.uniform(0, 20) / dy, f["spine_x"] + s * rng.uniform(55, 75) / dx)
                   for s in (-1, 1)]  # the right kidney (image left) a little lower
        axes = (rng.uniform(45, 60), rng.uniform(25, 35), rng.uniform(22, 32))
    else:  # stomach: patient's left, anterior, under the dome
        centres = [(f["z_lo"] + span * rng.uniform(0.5, 0.85), f["body_top"] + rng.uniform(50, 90) / dy,
                    f["spine_x"] + rng.uniform(30, 80) / dx)]
        axes = (rng.uniform(40, 65), rng.uniform(30, 50), rng.uniform(35, 60))
    placed = False
    yy = np.arange(tissue.shape[1])[None, :, None]
    for cz, cy, cx in centres:
        region = _ellipsoid(tissue.shape, label_map.spacing, (cz, cy, cx), axes) & allowed
        if region.sum() < 50:
            continue
        tissue[region] = _ID[organ]
        if organ == "stomach" and rng.random() < 0.6:  # gas rising to the anterior wall
            top = cy - axes[1] / dy * rng.uniform(0.2, 0.7)
            tissue[region & (yy < top)] = _ID["stomach_gas"]
        placed = True
    return placed


def _extra_lesions(tissue: np.ndarray, liver: np.ndarray, spacing: tuple[float, float, float],
                   rng: np.random.Generator) -> int:
    """1-4 spheres of 4-20 mm radius centred in the liver (clipped to it)."""
    points = np.argwhere(liver)
    n = int(rng.integers(1, 5))
    dz, dy, dx = spacing
    zz, yy, xx = np.ogrid[: tissue.shape[0], : tissue.shape[1], : tissue.shape[2]]
    for _ in range(n):
        cz, cy, cx = points[rng.integers(len(points))]
        r = rng.uniform(4, 20)
        ball = ((zz - cz) * dz) ** 2 + ((yy - cy) * dy) ** 2 + ((xx - cx) * dx) ** 2 <= r * r
        tissue[ball & liver] = _ID["lesion"]
    return n


def _intensities(tissue: np.ndarray, spacing: tuple[float, float, float], rng: np.random.Generator,
                 draw: _Draw) -> np.ndarray:
    """HU per voxel: each tissue's mean, its own correlated texture, and a smooth bias field."""
    dz, dy, dx = spacing
    means = np.zeros(256, np.float32)
    spread = np.zeros(256, np.float32)
    for k, name in TISSUES.items():
        if name in THORAX and name not in draw.means:
            continue
        means[k] = draw.means.get(name, draw.means.get("muscle", 50.0))
        lo, hi = TEXTURE.get(name, (3, 8))
        spread[k] = rng.uniform(lo, hi)
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32),
                                      (0.6, 1.2 / max(dy, 0.3) * 0.8, 1.2 / max(dx, 0.3) * 0.8))
    texture /= texture.std() + 1e-6
    hu = means[tissue] + spread[tissue] * texture
    amplitude = rng.uniform(0, 15)
    if amplitude > 0:
        hu += amplitude * _smooth_field(tissue.shape, rng, (tissue.shape[0] / 3, 100.0 / dy, 100.0 / dx)) * (tissue > 0)
    return hu


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator,
                  sigma: tuple[float, float, float]) -> np.ndarray:
    """A smooth random field of unit spread with correlation lengths ``sigma`` (voxels): drawn on a grid
    coarser by about sigma / 2 and interpolated (a full-grid Gaussian of that width takes seconds)."""
    coarse = tuple(max(2, int(math.ceil(n / max(1.0, s / 2)))) for n, s in zip(shape, sigma, strict=True))
    small = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32),
                                    [min(2.0, s / max(1.0, s / 2)) for s in sigma])
    full = torch.nn.functional.interpolate(torch.from_numpy(small)[None, None], size=shape, mode="trilinear",
                                           align_corners=True)[0, 0].numpy()
    return (full - full.mean()) / (full.std() + 1e-6)  # zero mean: a bias field must not shift every tissue


def _blur_and_thicken(hu: np.ndarray, spacing: tuple[float, float, float], draw: _Draw) -> np.ndarray:
    """The scanner's in-plane blur and the slice thickness (a box average along z) on the map's grid."""
    k = max(1, int(round(draw.thickness_mm / spacing[0])))
    if k > 1:
        hu = ndimage.uniform_filter1d(hu, size=k, axis=0, mode="nearest")
    if draw.psf_px > 0:
        hu = ndimage.gaussian_filter(hu, (0, draw.psf_px, draw.psf_px))
    return hu


def _to_grid(hu: np.ndarray, liver: np.ndarray, spacing: tuple[float, float, float],
             size: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Average ``hu`` down to ``size``² in-plane (area weights); the liver is the voxels at least half liver."""
    d, h, w = hu.shape
    if (h, w) == (size, size):
        return hu, liver.copy(), spacing
    image, mask = _area(hu, (size, size)), _area(liver, (size, size)) >= 0.5
    return image, mask, (spacing[0], spacing[1] * h / size, spacing[2] * w / size)


def _area(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(D, H, W)`` (or one ``(H, W)`` slice) averaged to ``size`` in-plane with area weights, as float32."""
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))
    flat = t[:, None] if t.ndim == 3 else t[None, None]
    out = torch.nn.functional.interpolate(flat, size=tuple(size), mode="area")[:, 0].numpy()
    return out if stack.ndim == 3 else out[0]


def _add_noise(image: np.ndarray, spacing: tuple[float, float, float], draw: _Draw, config: SynthConfig,
               seed: int) -> np.ndarray:
    """Low-dose projection noise (:func:`liverrt.training.degrade.projection_noise_hu`), slice by slice."""
    cfg = DegradeConfig(noise="projection", photons=draw.photons, n_angles=config.n_angles,
                        pixel_mm=float(spacing[1]), fbp_filter="hann")
    generator = torch.Generator().manual_seed(seed)
    out = np.empty_like(image)
    for start in range(0, image.shape[0], 16):
        x = torch.from_numpy(np.ascontiguousarray(image[start:start + 16]))[:, None]
        out[start:start + 16] = (x + projection_noise_hu(x, cfg, generator))[:, 0].numpy()
    return out


# ----------------------------------------------------------------------------- a dataset


def sample_seed(seed: int, map_index: int, sample: int) -> int:
    return int(np.random.SeedSequence([seed, map_index, sample]).generate_state(1)[0])


@writes_outputs("liverrt data synth")
def synth_from_labels(src: Path, out_dir: Path, *, samples: int = 2, seed: int = 0,
                      config: SynthConfig = SynthConfig(), sheet: Path | None = None, real: list[Volume] = (),
                      on_case: Callable[[str, int, int], None] | None = None, overwrite: bool = False) -> list[Path]:
    """Write ``samples`` synthetic CT cases per label map under ``src`` into ``out_dir``.

    Each case folder ``<map>_sNNNN/`` holds ``image.nii.gz`` (int16 HU) and ``mask.nii.gz`` (the
    expert liver, uint8 0/1) on the map's field of view at ``config.size``² (the ``nifti`` layout
    every liverrt command reads); ``synth.json`` records the source maps, the config and every
    sample's draws. ``sheet`` (a PNG path outside ``out_dir``: the dataset folder holds cases only)
    shows the first synthetic cases above the ``real`` volumes given (:func:`write_sheet`). Folders
    appear whole or not at all.
    """
    if samples < 1:
        raise InputError(f"samples {samples}: expected at least 1 per label map.")
    maps = find_label_maps(src)
    out_dir = Path(out_dir)
    if sheet is not None and Path(sheet).resolve().is_relative_to(out_dir.resolve()):
        raise InputError(f"sheet {sheet}: inside the output folder {out_dir}, where it would be read as a case; "
                         "expected a PNG path outside it.")
    check_outputs([out_dir / "synth.json", *([Path(sheet)] if sheet else [])])
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, folders, total, shown = [], [], len(maps) * samples, []
    for i, folder in enumerate(maps):
        label_map = LabelMap.read(folder)
        for s in range(samples):
            volume, drawn = synth_sample(label_map, sample_seed(seed, i, s), config)
            case = out_dir / f"{label_map.case_id}_s{s:02d}"
            check_outputs([case])
            with atomic_dir(case) as tmp:
                write_nifti(volume.image, volume.affine, tmp / "image.nii.gz")
                write_nifti(volume.mask.astype(np.uint8), volume.affine, tmp / "mask.nii.gz")
            folders.append(case)
            if s == 0 and len(shown) < 4:
                shown.append(volume)
            entries.append({"case": case.name, "label_map": str(folder), "drawn": drawn})
            if on_case:
                on_case(case.name, len(folders), total)
    manifest = {"generator": GENERATOR, "version": VERSION, "seed": seed, "samples_per_map": samples,
                "config": asdict(config), "cases": entries,
                "note": "CT synthesised from label maps; the liver mask is each map's expert mask. The label "
                        "maps' licence applies to these images (3D-IRCADb: CC BY-NC-ND 4.0)."}
    if sheet is not None:
        write_sheet(sheet, shown, list(real))
    write_text_atomic(json.dumps(manifest, indent=2), out_dir / "synth.json")
    return folders


# ----------------------------------------------------------------------------- a sheet to judge them by


def write_sheet(path: Path, synthetic: list[Volume], real: list[Volume], *, slices: int = 3,
                window: tuple[float, float] = (50.0, 400.0)) -> Path:
    """A PNG with one row per volume: ``slices`` slices through its liver (at 25/50/75 % of its extent)
    with the liver mask's contour in green; synthetic rows first, then the real ones, all at the first
    volume's in-plane size, so that a person can judge whether the synthesis looks like CT."""
    rows = []
    size = (synthetic or real)[0].shape[1:]
    for volume in [*synthetic, *real]:
        zs = np.nonzero(volume.mask.any(axis=(1, 2)))[0] if volume.mask is not None else np.arange(volume.shape[0])
        picks = [int(zs[int(q * (len(zs) - 1))]) for q in np.linspace(0.25, 0.75, slices)] if len(zs) else [0] * slices
        tiles = []
        for k in picks:
            grey = _area(np.clip((volume.image[k].astype(np.float32) - (window[0] - window[1] / 2)) / window[1],
                                 0, 1), size)
            mask = None if volume.mask is None else _area(volume.mask[k], size) >= 0.5
            tiles.append(overlay(grey, gt=mask))
        rows.append(np.concatenate(tiles, axis=1))
    with atomic_path(Path(path), suffix=".png") as tmp:
        save_png(np.concatenate(rows, axis=0), tmp)
    return Path(path)
