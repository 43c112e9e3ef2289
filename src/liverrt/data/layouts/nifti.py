"""``nifti``: a NIfTI (or NRRD, MetaImage) file, or a case folder with an image and a mask by common names
(``image``/``ct``/... with ``mask``/``liver``/...: :data:`IMAGE_NAMES`, :data:`MASK_NAMES`); and the base
of the NIfTI datasets (``lits``, ``msd``) whose cases are image/label-map pairs under one root."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.io import VOLUME_SUFFIXES, is_volume_file, read_nifti_volume, strip_volume_suffix
from liverrt.data.layouts.base import CaseRef, Layout, ReadOptions, first_file
from liverrt.data.nifti_sets import NiftiPair
from liverrt.data.volume import Volume


class _NiftiCase(Layout):
    """A NIfTI (NRRD, MetaImage) image with an optional label map (liver = label > 0)."""

    mask_is_label_map = True

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        return read_nifti_volume(ref.image, ref.mask if with_mask else None, case_id=ref.case_id)


# a case folder pairs its image with its mask by these common names, in this order of preference
IMAGE_NAMES = ("image", "ct", "volume", "img", "scan")
MASK_NAMES = ("mask", "liver", "segmentation", "seg", "label", "labels")


def _named(folder: Path, stems: tuple[str, ...]) -> Path | None:
    return first_file(folder, tuple(f"{stem}{ext}" for stem in stems for ext in VOLUME_SUFFIXES))


class Nifti(_NiftiCase):
    name = "nifti"
    description = (f"a NIfTI, NRRD or MetaImage file (.nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd), or case folders "
                   f"with an image named {'/'.join(IMAGE_NAMES)} (+ a mask named {'/'.join(MASK_NAMES)})")

    def detect(self, path: Path) -> CaseRef | None:
        if path.is_file():
            return self.ref(path, path, None, strip_volume_suffix(path.name)) if is_volume_file(path) else None
        image = _named(path, IMAGE_NAMES)
        if image is None:
            return None
        return self.ref(path, image, _named(path, MASK_NAMES))


class NiftiDataset(_NiftiCase):
    """A public dataset's root of NIfTI image/label pairs; subclasses say how to pair them."""

    dataset = True

    def pairs(self, root: Path) -> list[NiftiPair] | None:
        """``(case_id, image, label or None)`` when the folder ``root`` is this dataset's root, else None."""
        raise NotImplementedError

    def find(self, src: Path) -> list[CaseRef] | None:
        pairs = self.pairs(src) if src.is_dir() else None
        return None if pairs is None else [CaseRef(cid, self.name, image, mask) for cid, image, mask in pairs]
