"""``ircad``: 3D-IRCADb cases, ``PATIENT_DICOM/`` + ``MASKS_DICOM/liver/`` (two DICOM series on one grid)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverrt.data.dicom import read_dicom_series
from liverrt.data.layouts.base import CaseRef, Layout, ReadOptions, existing_dir, log_warnings
from liverrt.data.volume import Volume
from liverrt.errors import InputError


class Ircad(Layout):
    name = "ircad"
    description = "3D-IRCADb: `PATIENT_DICOM/` + `MASKS_DICOM/liver/` (two DICOM series on one grid)"
    labels_in_case = True

    def detect(self, path: Path) -> CaseRef | None:
        if not (path / "PATIENT_DICOM").is_dir():
            return None
        return self.ref(path, path / "PATIENT_DICOM", existing_dir(path / "MASKS_DICOM" / "liver"))

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        volume, warnings = read_dicom_series(ref.image, case_id=ref.case_id)
        if ref.mask is not None and with_mask:
            volume = volume.with_mask(_liver_mask(ref, volume))
        log_warnings(ref, warnings)
        return volume if with_mask else volume.with_mask(None)


def _liver_mask(ref: CaseRef, volume: Volume) -> np.ndarray:
    """The liver mask series (non-zero = liver), checked against the CT's geometry."""
    masks, warnings = read_dicom_series(ref.mask, case_id=ref.case_id)
    log_warnings(ref, warnings, "liver mask series: ")
    if masks.shape != volume.shape or not np.allclose(masks.affine, volume.affine, atol=1e-3):
        raise InputError(
            f"{ref.mask}: mask series {masks.shape} does not share the geometry of {ref.image} {volume.shape}; "
            "expected the same slices."
        )
    return masks.image > 0
