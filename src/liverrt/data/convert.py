"""``liverrt data convert``: any readable layout to liverrt's NIfTI or PNG case folders.

NIfTI output (``DIR/<case>/image.nii.gz``, ``mask.nii.gz``, ``instances.nii.gz``)
keeps the array, the geometry and the intensity kind (8-bit images carry a
header marker), so NIfTI -> Volume -> NIfTI loses nothing. PNG output
(``DIR/<case>/images/``, ``masks/``) keeps 8-bit images exactly; HU volumes are
windowed to 8 bits (lossy, reported) with the given window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from liverrt.atomic import (
    atomic_dir,
    writes_outputs,
)
from liverrt.data.io import write_nifti, write_png_slices
from liverrt.data.phantom import window_to_uint8
from liverrt.data.sources import (
    DEFAULT_OPTIONS,
    ReadOptions,
    check_case_outputs,
    find_cases,
    load_case,
)
from liverrt.data.volume import Volume
from liverrt.errors import InputError, skipped_case

log = logging.getLogger(__name__)
TARGETS = ("nifti", "png")


def write_volume(volume: Volume, folder: Path, *, to: str, window: tuple[float, float] = (50.0, 400.0)) -> list[str]:
    """Write one volume as a case folder (built in a temporary sibling, renamed into place)."""
    notes: list[str] = []
    with atomic_dir(Path(folder), protect=(Path(volume.source),) if volume.source else ()) as tmp:
        if to == "nifti":
            write_nifti(volume.image, volume.affine, tmp / "image.nii.gz", intensity=volume.intensity)
            if volume.mask is not None:
                write_nifti(volume.mask, volume.affine, tmp / "mask.nii.gz")
            if volume.instances is not None:
                write_nifti(volume.instances, volume.affine, tmp / "instances.nii.gz")
        else:
            image = volume.image
            if volume.intensity == "hu":
                image = window_to_uint8(image, *window)
                notes.append(f"{volume.case_id}: HU windowed to 8-bit PNG (centre {window[0]:g}, width {window[1]:g})")
            write_png_slices(image, tmp / "images", volume.names)
            if volume.mask is not None:
                write_png_slices(volume.mask, tmp / "masks", volume.names)
    return notes


@writes_outputs("liverrt data convert")
def convert(src: Path, out: Path, *, to: str, layout: str | None = None, options: ReadOptions = DEFAULT_OPTIONS,
            on_case: Callable[[str, int, int], None] | None = None, overwrite: bool = False) -> dict:
    """Convert every case under ``src``; returns ``{"cases": [...], "skipped": [...], "notes": [...]}``.

    ``overwrite``: replace case folders liverrt did not write (never an input); see :mod:`liverrt.atomic`.
    """
    if to not in TARGETS:
        raise InputError(f"--to {to!r}: expected one of {TARGETS}.")
    refs = find_cases(src, layout=layout)
    out = Path(out)
    check_case_outputs(src, out, refs)  # before any work: only liverrt's own conversions are replaced
    report: dict = {"cases": [], "skipped": [], "notes": []}
    for i, ref in enumerate(refs):
        if on_case:
            on_case(ref.case_id, i, len(refs))
        try:
            volume = load_case(ref, with_mask=ref.mask is not None, options=options)
            report["notes"] += write_volume(volume, out / ref.case_id, to=to)
        except Exception as exc:  # one case never stops the others; the reason is reported
            report["skipped"].append(skipped := skipped_case(ref.case_id, ref.image, exc))
            log.warning("skipped %s: %s", ref.image, skipped["reason"])
            continue
        report["cases"].append({"id": ref.case_id, "layout": ref.kind, "shape": list(volume.shape),
                                "mask": volume.mask is not None, "instances": volume.instances is not None})
    return report
