"""``chaos``: CHAOS CT cases, ``<id>/DICOM_anon/`` + ``<id>/Ground/liver_GT_NNN.png``."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.dicom import read_chaos_case
from liverrt.data.layouts.base import CaseRef, Layout, ReadOptions, existing_dir, log_warnings
from liverrt.data.volume import Volume


class Chaos(Layout):
    name = "chaos"
    description = (
        "CHAOS CT: `<id>/DICOM_anon/` + `<id>/Ground/liver_GT_NNN.png` (i-th mask = i-th DICOM file by name)"
    )
    labels_in_case = True

    def detect(self, path: Path) -> CaseRef | None:
        if not (path / "DICOM_anon").is_dir():
            return None
        return self.ref(path, path, existing_dir(path / "Ground"))

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        volume, warnings = read_chaos_case(ref.image)
        log_warnings(ref, warnings)
        return volume if with_mask else volume.with_mask(None)
