"""``liverrt.segment``: a liver mask from a CT in one call, with the bundled model unless told otherwise.

    import liverrt
    result = liverrt.segment("ct.nii.gz")                      # a NIfTI file, DICOM series folder, case folder
    result = liverrt.segment(hu, spacing=(2.5, 0.8, 0.8))      # or a (D, H, W) array in HU
    result.mask, result.affine, result.liver_ml

``liverrt.read_volume`` reads one case (image, and its mask when the case has one) as liverrt sees it.
docs/python-api.md is the worked example (run by tests/test_docs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverrt.data.io import write_mask_nifti
from liverrt.data.sources import load_cases
from liverrt.data.volume import Volume, default_affine
from liverrt.errors import InputError
from liverrt.evaluation import check_spacing
from liverrt.models.bundled import postprocess_options, resolve_model
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

    def save(self, path: str | Path) -> Path:
        """The mask as NIfTI (0/1 uint8, written atomically): for a NIfTI CT in the file's own voxel order
        and affine, so it overlays the CT in any viewer; otherwise on the volume's affine."""
        return write_mask_nifti(self.volume, self.mask, Path(path))


def segment(ct: str | Path | np.ndarray | Volume, *, spacing: tuple[float, float, float] | None = None,
            model: str | Path | None = None, engine: str = "onnxruntime", post_process: bool | None = None,
            batch_size: int = 8) -> LiverSegmentation:
    """Segment the liver in ``ct``.

    ``ct``: a path liverrt reads (NIfTI file, DICOM series folder, a case folder: one case), a
    :class:`~liverrt.data.volume.Volume`, or a ``(D, H, W)`` array in HU in liverrt's axes (as
    :func:`liverrt.data.io.read_nifti` returns it), which needs ``spacing`` ``(dz, dy, dx)`` in mm.
    ``model``: a bundled model's name, or a ``.onnx``/``.pt`` file (default: the bundled default).
    ``post_process`` defaults to on for bundled models, off for other models (as ``liverrt infer``):
    for a bundled model, what its card's figures were measured with (``liverrt models NAME``); for
    another model, holes filled and the largest 3-D component.
    """
    path, chosen = resolve_model(model)
    bundled = chosen is not None
    volume = ct if isinstance(ct, Volume) else _array_volume(ct, spacing) if isinstance(ct, np.ndarray) else None
    if volume is None:
        if spacing is not None:
            raise InputError("segment: spacing is for arrays; a file carries its own.")
        volume = read_volume(ct)
    post = bundled if post_process is None else bool(post_process)
    with open_engine(engine, path) as eng:
        require_task(eng.info, "segmentation", role="model")
        options = postprocess_options(chosen, **({} if bundled else {"fill_holes": True, "keep_largest": True}))
        result = Segmenter(eng, batch_size=batch_size, **(options if post else {})).segment(volume)
    return LiverSegmentation(result.mask, volume.affine, result.liver_ml(volume.spacing), volume.spacing,
                             str(path), volume)


def read_volume(path: str | Path) -> Volume:
    """One case as liverrt reads it: a NIfTI file, a DICOM series folder or a case folder (its image and,
    when it has one, its mask, paired by name: ``ct`` with ``liver``). ``volume.image`` is ``(D, H, W)``
    in liverrt's axes, ``volume.mask`` a bool array or ``None``; ``volume.spacing`` ``(dz, dy, dx)`` mm."""
    path = Path(path)
    loaded = load_cases(path, require_mask=False)
    if len(loaded.volumes) != 1:
        raise InputError(f"{path} holds {len(loaded.volumes)} cases; expected one (use `liverrt infer` "
                         "for a folder of cases).")
    return loaded.volumes[0]


def _array_volume(ct: np.ndarray, spacing) -> Volume:
    if spacing is None:
        raise InputError("segment: an array needs spacing=(dz, dy, dx) in mm; expected three positive numbers.")
    if ct.ndim == 2:
        ct = ct[None]
    if ct.ndim != 3 or ct.dtype.kind not in "iuf":
        raise InputError(f"segment: got an array of shape {ct.shape} and type {ct.dtype}; expected (D, H, W) "
                         "numbers in HU.")
    sp = check_spacing(spacing)
    return Volume(image=ct, spacing=sp, affine=default_affine(sp), intensity="hu", case_id="array")
