"""Write a segmentation next to its source's geometry: NIfTI, PNG masks, overlays, a summary."""

from __future__ import annotations

from pathlib import Path

from liverrt.atomic import atomic_dir
from liverrt.data.dicom_seg import write_dicom_seg
from liverrt.data.io import write_nifti, write_png_slices
from liverrt.data.preprocess import PreprocessSpec, normalize
from liverrt.data.volume import Volume
from liverrt.errors import InputError
from liverrt.runtime.segmenter import Segmentation
from liverrt.viz import overlay, pick_slices, save_png

FORMATS = ("nifti", "png", "dicom-seg")


def case_summary(volume: Volume, seg: Segmentation) -> dict:
    has_geometry = volume.intensity == "hu"
    per_slice = seg.mask.reshape(seg.mask.shape[0], -1).any(axis=1)
    return {
        "id": volume.case_id,
        "source": volume.source,
        "shape": list(volume.shape),
        "spacing_mm": list(volume.spacing) if has_geometry else None,
        "liver_ml": round(seg.liver_ml(volume.spacing), 2) if has_geometry else None,
        "liver_voxels": int(seg.mask.sum()),
        "slices_with_liver": int(per_slice.sum()),
        # a liver cut by the scan range is incomplete: its volume is a lower bound
        "touches_first_or_last_slice": bool(per_slice[0] or per_slice[-1]) if per_slice.size else False,
        "timings_s": {k: round(v, 4) for k, v in seg.timings.items()},
    }


def write_case(volume: Volume, seg: Segmentation, out_dir: Path, *, formats: tuple[str, ...] = ("nifti",),
               overlays: int = 4, window: tuple[float, float] = (50.0, 400.0)) -> Path:
    """Write ``out_dir/<case>/``: ``mask.nii.gz`` (source affine), ``masks/*.png`` (source stems),
    ``overlays/*.png``. The case folder is built in a temporary sibling and renamed into place; an
    existing one is replaced only if liverrt wrote it (:mod:`liverrt.atomic`), never if it holds the input."""
    final = Path(out_dir) / volume.case_id
    with atomic_dir(final, protect=(Path(volume.source),) if volume.source else ()) as tmp:
        if "nifti" in formats:
            if volume.to_source is not None:  # NIfTI source: same voxel order and affine as the file
                write_nifti(seg.mask, volume.source_affine, tmp / "mask.nii.gz", to_source=volume.to_source)
            else:
                write_nifti(seg.mask, volume.affine, tmp / "mask.nii.gz")
        if "png" in formats:
            write_png_slices(seg.mask, tmp / "masks", volume.names)
        if "dicom-seg" in formats:  # a DICOM SEG referencing the source series' instances

            if not volume.source or not Path(volume.source).is_dir():
                raise InputError(f"{volume.case_id}: DICOM SEG output needs a DICOM series folder as input.")
            write_dicom_seg(seg.mask, Path(volume.source), tmp / "seg.dcm")
        if overlays:
            view = PreprocessSpec(window_center=window[0], window_width=window[1])
            names = volume.names
            for i in pick_slices(seg.mask, overlays):
                img = normalize(volume.image[i], volume.intensity, view)
                gt = volume.mask[i] if volume.mask is not None else None
                save_png(overlay(img, seg.mask[i], gt), tmp / "overlays" / f"{names[i]}.png")
    return final
