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

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

Intensity = Literal["hu", "8bit"]


def default_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Affine for an LPS-ordered ``(D, H, W)`` array with the given spacing.

    Columns go to the patient's left (RAS -x), rows to posterior (RAS -y),
    slices to superior (RAS +z).
    """
    dz, dy, dx = (float(s) for s in spacing)
    return np.diag([-dx, -dy, dz, 1.0])


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
    def names(self) -> tuple[str, ...]:
        """Per-slice names; ``slice_000``... when the source had none."""
        if self.slice_names:
            return self.slice_names
        return tuple(f"slice_{i:03d}" for i in range(self.image.shape[0]))

    def with_mask(self, mask: np.ndarray | None) -> Volume:
        return replace(self, mask=None if mask is None else mask.astype(bool, copy=False))
