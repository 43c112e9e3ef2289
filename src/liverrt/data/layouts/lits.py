"""``lits``: the LiTS challenge's ``volume-N`` + ``segmentation-N`` NIfTI files."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.layouts.nifti import NiftiDataset
from liverrt.data.nifti_sets import NiftiPair, find_lits


class Lits(NiftiDataset):
    name = "lits"
    description = (
        "LiTS: `volume-N` + `segmentation-N` NIfTI files anywhere under the root (`test-volume-N` unlabelled); "
        "liver = label > 0"
    )

    def pairs(self, root: Path) -> list[NiftiPair] | None:
        return find_lits(root) or None
