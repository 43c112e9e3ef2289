"""Write a segmentation next to its source's geometry: NIfTI, PNG masks, overlays, a summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverrt.atomic import atomic_dir
from liverrt.data.dicom_seg import write_dicom_seg
from liverrt.data.io import write_mask_nifti, write_png_slices
from liverrt.data.preprocess import PreprocessSpec, normalize
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.runtime.segmenter import Segmentation
from liverrt.viz import ABDOMEN_WINDOW, overlay, pick_slices, save_png

FORMATS = ("nifti", "png", "dicom-seg")


def grey01(image: np.ndarray, intensity: str, window: tuple[float, float] = ABDOMEN_WINDOW) -> np.ndarray:
    """A slice or plane of a volume as [0, 1] grey values for a picture: HU through ``window``
    (centre, width), 8-bit scaled."""
    return normalize(image, intensity, PreprocessSpec(window_center=window[0], window_width=window[1]))


def case_summary(volume: Volume, seg: Segmentation) -> dict:
    """One case's line in ``summary.json``. Without slice geometry (:attr:`Volume.has_geometry`) there is no
    volume in mL and no incomplete-organ flag (``None``): the first and last slices of a set of 2-D
    pictures are not the ends of a scan."""
    geometry = volume.has_geometry
    per_slice = seg.mask.reshape(seg.mask.shape[0], -1).any(axis=1)
    touches = bool(per_slice.size) and bool(per_slice[0] or per_slice[-1])
    return {
        "id": volume.case_id,
        "source": volume.source,
        "shape": list(volume.shape),
        "spacing_mm": list(volume.spacing) if geometry else None,
        "liver_ml": round(seg.liver_ml(volume.spacing), 2) if geometry else None,
        "liver_voxels": int(seg.mask.sum()),
        "slices_with_liver": int(per_slice.sum()),
        # a liver cut by the scan range is incomplete: its volume is a lower bound
        "touches_first_or_last_slice": touches if geometry else None,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
    }


def write_case(volume: Volume, seg: Segmentation, out_dir: Path, *, formats: tuple[str, ...] = ("nifti",),
               overlays: int = 4, window: tuple[float, float] = ABDOMEN_WINDOW) -> Path:
    """Write ``out_dir/<case>/``: ``mask.nii.gz`` (source affine), ``masks/*.png`` (source stems),
    ``overlays/*.png``. The case folder is built in a temporary sibling and renamed into place; an
    existing one is replaced only if liverrt wrote it (:mod:`liverrt.atomic`), never if it holds the input."""
    final = Path(out_dir) / volume.case_id
    with atomic_dir(final, protect=(Path(volume.source),) if volume.source else ()) as tmp:
        if "nifti" in formats:  # a NIfTI source: the file's own voxel order and affine
            write_mask_nifti(volume, seg.mask, tmp / "mask.nii.gz")
        if "png" in formats:
            write_png_slices(seg.mask, tmp / "masks", volume.names)
        if "dicom-seg" in formats:  # a DICOM SEG referencing the source series' instances

            if not volume.source or not Path(volume.source).is_dir():
                raise InputError(f"{volume.case_id}: DICOM SEG output needs a DICOM series folder as input.")
            write_dicom_seg(seg.mask, Path(volume.source), tmp / "seg.dcm")
        if overlays:
            names = volume.names
            for i in pick_slices(seg.mask, overlays):
                img = grey01(volume.image[i], volume.intensity, window)
                gt = volume.mask[i] if volume.mask is not None else None
                save_png(overlay(img, seg.mask[i], gt), tmp / "overlays" / f"{names[i]}.png")
    return final
