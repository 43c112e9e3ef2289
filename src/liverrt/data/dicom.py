"""Minimal DICOM geometry (the full series reader comes with the real-data readers)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from liverrt.errors import InputError


def series_spacing(folder: Path) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in mm of the one image series in ``folder``.

    Files are taken in sorted file-name order (any names, with or without
    ``.dcm``); non-DICOM files and objects without ImagePositionPatient and
    PixelSpacing (a DICOM SEG, a report) are ignored. ``dy, dx`` come from
    PixelSpacing (row, column spacing). Slices are ordered by their
    ImagePositionPatient along the slice normal (file names need not follow
    position); ``dz`` is the distance between the first and the last position
    divided by the number of gaps, and gaps that differ by more than 10 % are
    refused (missing slices). A single slice uses SpacingBetweenSlices or
    SliceThickness.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    slices = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and "PixelSpacing" in ds:
            slices.append((path, ds))
    if not slices:
        raise InputError(f"No DICOM image slices in {folder}; expected files with ImagePositionPatient and PixelSpacing.")
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in slices)
    if len(series) > 1:
        listing = ", ".join(f"{uid or '<none>'} ({n} files)" for uid, n in series.items())
        raise InputError(f"{folder} mixes {len(series)} DICOM series ({listing}); expected one series.")
    dy, dx = (float(v) for v in slices[0][1].PixelSpacing)
    if len(slices) == 1:
        ds = slices[0][1]
        dz = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 0)) or 0)
        if dz <= 0:
            raise InputError(f"{slices[0][0]}: a single slice without SliceThickness; expected a slice spacing.")
        return dz, dy, dx
    iop = np.asarray(slices[0][1].get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    positions = np.sort([float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))) for _, ds in slices])
    gaps = np.diff(positions)
    dz = float(positions[-1] - positions[0]) / (len(slices) - 1)
    if dz <= 0 or gaps.min() <= 0:
        raise InputError(f"{folder}: two slices share one position; expected a stack of distinct slices.")
    if np.abs(gaps - dz).max() > 0.1 * dz:
        raise InputError(
            f"{folder}: uneven slice gaps ({gaps.min():.3g}..{gaps.max():.3g} mm); expected evenly spaced slices "
            "(missing slices?). Give --spacing explicitly."
        )
    return dz, dy, dx
