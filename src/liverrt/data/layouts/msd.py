"""``msd``: the Medical Segmentation Decathlon's Task03_Liver, ``imagesTr/`` + ``labelsTr/``."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.layouts.nifti import NiftiDataset
from liverrt.data.nifti_sets import NiftiPair, find_msd, is_msd_root


class Msd(NiftiDataset):
    name = "msd"
    description = (
        "MSD Task03_Liver: `imagesTr/` + `labelsTr/` (and `imagesTs/`), in the root or one sub-folder; "
        "liver = label > 0"
    )

    def pairs(self, root: Path) -> list[NiftiPair] | None:
        return find_msd(root) if is_msd_root(root) else None
