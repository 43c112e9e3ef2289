"""``dicom``: a folder holding one DICOM series (any file names), no labels."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.dicom import holds_dicom, read_dicom_series
from liverrt.data.layouts.base import CaseRef, Layout, ReadOptions, log_warnings
from liverrt.data.volume import Volume


class Dicom(Layout):
    name = "dicom"
    description = (
        "a DICOM series folder (any file names): one series, sorted by position along the slice normal, "
        "HU from RescaleSlope/Intercept; tilt, gaps, duplicates reported"
    )

    def detect(self, path: Path) -> CaseRef | None:
        return self.ref(path, path, None) if path.is_dir() and holds_dicom(path) else None

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        volume, warnings = read_dicom_series(ref.image, case_id=ref.case_id)
        log_warnings(ref, warnings)
        return volume
