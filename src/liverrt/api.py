"""``liverrt.segment``: a liver mask from a CT in one call, with the bundled model unless told otherwise.

    import liverrt
    result = liverrt.segment("ct.nii.gz")                      # a NIfTI file, DICOM series folder, case folder
    result = liverrt.segment(hu, spacing=(2.5, 0.8, 0.8))      # or a (D, H, W) array in HU
    result.mask, result.affine, result.liver_ml
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverrt.data.sources import load_cases
from liverrt.data.volume import Volume, default_affine
from liverrt.errors import InputError
from liverrt.evaluation import check_spacing
from liverrt.models.bundled import resolve_model
from liverrt.runtime import open_engine
from liverrt.runtime.base import require_task
from liverrt.runtime.segmenter import Segmenter


@dataclass(frozen=True)
class LiverSegmentation:
    """``mask``: (D, H, W) bool in liverrt's axes (slices inferior to superior, rows anterior to posterior,
    columns patient right to left: the liver on the image left), on the input's grid; ``affine``: voxel
    (column, row, slice) -> RAS mm; ``liver_ml``: the mask's volume; ``volume``: the CT it came from
    (its ``to_source`` puts the mask back into a NIfTI file's own voxel order)."""

    mask: np.ndarray
    affine: np.ndarray
    liver_ml: float
    spacing: tuple[float, float, float]
    model: str
    volume: Volume


def segment(ct: str | Path | np.ndarray | Volume, *, spacing: tuple[float, float, float] | None = None,
            model: str | Path | None = None, engine: str = "onnxruntime", post_process: bool | None = None,
            batch_size: int = 8) -> LiverSegmentation:
    """Segment the liver in ``ct``.

    ``ct``: a path liverrt reads (NIfTI file, DICOM series folder, a case folder: one case), a
    :class:`~liverrt.data.volume.Volume`, or a ``(D, H, W)`` array in HU in liverrt's axes (as
    :func:`liverrt.data.io.read_nifti` returns it), which needs ``spacing`` ``(dz, dy, dx)`` in mm.
    ``model``: a bundled model's name, or a ``.onnx``/``.pt`` file (default: the bundled default).
    ``post_process`` (largest 3-D component, holes filled) defaults to on for bundled models, off
    for other models (as ``liverrt infer``).
    """
    path, chosen = resolve_model(model)
    bundled = chosen is not None
    volume = _volume(ct, spacing)
    post = bundled if post_process is None else bool(post_process)
    with open_engine(engine, path) as eng:
        require_task(eng.info, "segmentation", role="model")
        result = Segmenter(eng, batch_size=batch_size, keep_largest=post, fill_holes=post).segment(volume)
    return LiverSegmentation(result.mask, volume.affine, result.liver_ml(volume.spacing), volume.spacing,
                             str(path), volume)


def _volume(ct, spacing) -> Volume:
    if isinstance(ct, Volume):
        return ct
    if isinstance(ct, np.ndarray):
        if spacing is None:
            raise InputError("segment: an array needs spacing=(dz, dy, dx) in mm; expected three positive numbers.")
        if ct.ndim == 2:
            ct = ct[None]
        if ct.ndim != 3 or ct.dtype.kind not in "iuf":
            raise InputError(f"segment: got an array of shape {ct.shape} and type {ct.dtype}; expected (D, H, W) "
                             "numbers in HU.")
        sp = check_spacing(spacing)
        return Volume(image=ct, spacing=sp, affine=default_affine(sp), intensity="hu", case_id="array")
    if spacing is not None:
        raise InputError("segment: spacing is for arrays; a file carries its own.")
    loaded = load_cases(Path(ct), require_mask=False)
    if len(loaded.volumes) != 1:
        raise InputError(f"segment: {ct} holds {len(loaded.volumes)} cases; expected one (use `liverrt infer` "
                         "for a folder of cases).")
    return loaded.volumes[0]
