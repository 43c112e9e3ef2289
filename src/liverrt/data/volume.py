"""The one in-memory form every data source is read into.

Axis convention (used everywhere in liverrt):

* arrays are ``(D, H, W)``: axial slice, row, column;
* columns run toward the patient's left, rows toward posterior, slices toward
  superior (DICOM's LPS, i.e. the radiological display: patient's right on the
  image's left, anterior at the top);
* ``affine`` is a NIfTI-style 4x4 matrix mapping the voxel index
  ``(column, row, slice)`` = ``(w, h, d)`` to RAS+ world millimetres, so a
  volume is written to NIfTI as ``array.transpose(2, 1, 0)`` with this affine;
* ``spacing`` is ``(dz, dy, dx)`` in millimetres, matching the array axes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from liverrt.errors import InputError

log = logging.getLogger(__name__)

Intensity = Literal["hu", "8bit"]
#: DICOM's patient axes (LPS: x to the left, y to posterior) to NIfTI's RAS: flip x and y
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def default_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine for an LPS-ordered ``(D, H, W)`` array with the given spacing.

    Columns go to the patient's left (RAS -x), rows to posterior (RAS -y),
    slices to superior (RAS +z).
    """
    dz, dy, dx = (float(s) for s in spacing)
    return np.diag([-dx, -dy, dz, 1.0])


def finite_image(image: np.ndarray, source: str) -> np.ndarray:
    """``image`` with its non-finite voxels replaced, or an :class:`InputError` when none is finite.

    Rules (integer images are returned unchanged; they cannot hold NaN or Inf):

    * every voxel finite: the image itself, not copied;
    * no voxel finite (all NaN/Inf): refused, naming ``source``;
    * some voxels non-finite: a copy in which NaN and -Inf become the image's
      finite minimum and +Inf its finite maximum, with one warning naming
      ``source`` and the counts. (Air is the minimum of a CT, so unknown voxels
      read as background, never as liver.)

    ``source`` names where the image came from in messages (e.g. ``"NIfTI file ct.nii.gz"``).
    """
    image = np.asarray(image)
    if image.dtype.kind != "f":
        return image
    finite = np.isfinite(image)
    if finite.all():
        return image
    if not finite.any():
        raise InputError(f"{source}: all {image.size} voxels are NaN or infinite; expected finite intensities.")
    lo, hi = image[finite].min(), image[finite].max()
    nan = np.isnan(image)
    pos = np.isposinf(image)
    neg = np.isneginf(image)
    out = image.copy()
    out[nan | neg] = lo
    out[pos] = hi
    log.warning(
        "%s: %d of %d voxels are not finite (NaN %d, +Inf %d, -Inf %d); NaN and -Inf set to the finite "
        "minimum %g, +Inf to the finite maximum %g.",
        source, int(image.size - finite.sum()), image.size, int(nan.sum()), int(pos.sum()), int(neg.sum()),
        float(lo), float(hi),
    )
    return out


#: a label map has at most this many distinct values (TotalSegmentator's 117 classes fit); a CT has thousands
MAX_LABELS = 128


def label_values(array: np.ndarray) -> np.ndarray | None:
    """The distinct values of ``array`` if it looks like a label map (a mask), else None (an image).

    A label map holds whole numbers >= 0, at most :data:`MAX_LABELS` of them. A CT in HU has
    negative values (air) and thousands of levels; an 8-bit slice set has a hundred or more grey
    levels. Judged on every voxel for small arrays, else on a regular sample of about 2 million.
    """
    a = np.asarray(array)
    step = max(1, round((a.size / 2e6) ** (1 / 3))) if a.ndim == 3 else 1
    sample = a[::step, ::step, ::step] if a.ndim == 3 else a
    if sample.size == 0 or (sample.dtype.kind == "f" and not np.isfinite(sample).all()):
        return None
    if sample.min() < 0:  # a CT's air: settled without sorting every sampled voxel
        return None
    if sample.dtype.kind == "f" and not np.array_equal(sample, np.round(sample)):
        return None
    values = np.unique(sample)
    return values if values.size <= MAX_LABELS else None


def _listed(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:6].astype(float))
    return shown + (f", ... ({values.size} values)" if values.size > 6 else "")


def check_image(image: np.ndarray, source: str) -> None:
    """Refuse a label map where a CT image is expected (one line: what was found, what to give)."""
    values = label_values(image)
    if values is not None and values.size <= 16:
        raise InputError(f"{source} looks like a mask, not an image: its only values are {_listed(values)}; "
                         "expected a CT in HU (give the image file, not the segmentation).")


def check_label_map(labels: np.ndarray, source: str) -> None:
    """Refuse an image where a mask is expected."""
    if label_values(labels) is None:
        a = np.asarray(labels)
        raise InputError(f"{source} looks like an image, not a mask: values from {float(np.nanmin(a)):g} to "
                         f"{float(np.nanmax(a)):g}, not a few whole numbers >= 0; expected a label map "
                         "(0 background, > 0 liver), e.g. the segmentation file, not the CT.")


def check_finite_labels(labels: np.ndarray, source: str) -> np.ndarray:
    """``labels`` unchanged, or an :class:`InputError` if any value is NaN or infinite.

    Masks are label maps: a NaN there is no label at all, so it is refused rather
    than read as background.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        bad = int(labels.size - np.isfinite(labels).sum())
        if bad:
            raise InputError(
                f"{source}: {bad} of {labels.size} values are NaN or infinite; expected a label map of finite "
                "numbers (0 background, > 0 liver)."
            )
    return labels


def check_affine(affine: np.ndarray, source: str) -> np.ndarray:
    """``affine`` as a float 4x4 array, or an :class:`InputError` when it is non-finite or singular.

    Singular means a zero voxel size or voxel axes that do not span 3D space
    (|det| of the 3x3 part at most 1e-6 of the product of the voxel sizes):
    such a volume has no volume in mL and no valid orientation.
    """
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4):
        raise InputError(f"{source}: affine of shape {a.shape}; expected a 4x4 voxel-to-world matrix.")
    if not np.isfinite(a).all():
        raise InputError(
            f"{source}: the affine is non-finite (NaN or infinite entries in {a[:3].tolist()}); "
            "expected a finite voxel-to-world matrix."
        )
    sizes = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    det = abs(float(np.linalg.det(a[:3, :3])))
    if not (sizes > 0).all() or det <= 1e-6 * float(np.prod(sizes)):
        shown = tuple(round(float(s), 6) for s in sizes)
        raise InputError(
            f"{source}: the affine is singular (voxel sizes {shown} mm, |det| {det:.3g}); "
            "expected a non-singular affine with positive voxel sizes."
        )
    return a


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume (or a stack of 2D slices) with optional liver labels.

    Attributes:
        image: ``(D, H, W)`` intensities; Hounsfield units (any numeric dtype)
            when ``intensity == "hu"``, 0..255 values when ``intensity == "8bit"``.
        spacing: ``(dz, dy, dx)`` in mm (1.0 where the source has no geometry).
        affine: 4x4 voxel ``(w, h, d)`` -> RAS mm, see the module docstring.
        intensity: ``"hu"`` or ``"8bit"`` (already windowed/scaled images).
        mask: optional ``(D, H, W)`` bool liver mask.
        instances: optional ``(D, H, W)`` integer map of separate liver regions.
        slice_names: per-slice provenance (file stems), ``len == D``.
        case_id: a short name for reports and output files.
        source: where it was read from.
        source_affine, to_source: for NIfTI sources, the file's own affine and
            the orientation transform back to its voxel order, so results can
            be written to match the source file voxel for voxel.
    """

    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    intensity: Intensity
    mask: np.ndarray | None = None
    instances: np.ndarray | None = None
    slice_names: tuple[str, ...] = field(default_factory=tuple)
    case_id: str = "case"
    source: str = ""
    source_affine: np.ndarray | None = None
    to_source: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"Volume.image: got shape {self.image.shape}, expected (D, H, W)")
        if self.intensity not in ("hu", "8bit"):
            raise ValueError(f"Volume.intensity: got {self.intensity!r}, expected 'hu' or '8bit'")
        for name in ("mask", "instances"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != self.image.shape:
                raise ValueError(
                    f"Volume.{name}: got shape {arr.shape}, expected the image shape {self.image.shape}"
                )
        if self.slice_names and len(self.slice_names) != self.image.shape[0]:
            raise ValueError(
                f"Volume.slice_names: got {len(self.slice_names)} names for {self.image.shape[0]} slices"
            )
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"Volume.affine: got shape {np.asarray(self.affine).shape}, expected (4, 4)")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)  # type: ignore[return-value]

    @property
    def has_geometry(self) -> bool:
        """Slice geometry: a HU volume (real spacing, slices in order), unlike a set of 8-bit 2-D slices,
        whose spacing is a placeholder and whose slices may be unrelated pictures."""
        return self.intensity == "hu"

    @property
    def names(self) -> tuple[str, ...]:
        """Per-slice names; ``slice_000``... when the source had none."""
        if self.slice_names:
            return self.slice_names
        return tuple(f"slice_{i:03d}" for i in range(self.image.shape[0]))

    def with_mask(self, mask: np.ndarray | None) -> Volume:
        return replace(self, mask=None if mask is None else mask.astype(bool, copy=False))
