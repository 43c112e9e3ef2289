"""``nifti``: a NIfTI file, or a case folder with ``image.nii[.gz]`` (+ ``mask.nii[.gz]``); and the base of the
NIfTI datasets (``lits``, ``msd``) whose cases are image/label-map pairs under one root."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.io import is_nifti, read_nifti_volume, strip_nifti_suffix
from liverrt.data.layouts.base import CaseRef, Layout, ReadOptions, first_file
from liverrt.data.nifti_sets import NiftiPair
from liverrt.data.volume import Volume


class _NiftiCase(Layout):
    """A NIfTI image with an optional NIfTI label map (liver = label > 0)."""

    mask_is_label_map = True

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        return read_nifti_volume(ref.image, ref.mask if with_mask else None, case_id=ref.case_id)


class Nifti(_NiftiCase):
    name = "nifti"
    description = "a NIfTI file, or case folders with `image.nii.gz` (+ `mask.nii.gz`)"

    def detect(self, path: Path) -> CaseRef | None:
        if path.is_file():
            return self.ref(path, path, None, strip_nifti_suffix(path.name)) if is_nifti(path) else None
        image = first_file(path, ("image.nii.gz", "image.nii"))
        if image is None:
            return None
        return self.ref(path, image, first_file(path, ("mask.nii.gz", "mask.nii")))


class NiftiDataset(_NiftiCase):
    """A public dataset's root of NIfTI image/label pairs; subclasses say how to pair them."""

    dataset = True

    def pairs(self, root: Path) -> list[NiftiPair] | None:
        """``(case_id, image, label or None)`` when the folder ``root`` is this dataset's root, else None."""
        raise NotImplementedError

    def find(self, src: Path) -> list[CaseRef] | None:
        pairs = self.pairs(src) if src.is_dir() else None
        return None if pairs is None else [CaseRef(cid, self.name, image, mask) for cid, image, mask in pairs]
