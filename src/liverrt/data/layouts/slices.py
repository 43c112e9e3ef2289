"""``slices``: PNG/JPG slice folders, ``images/`` (+ ``masks/``) or a folder of slices itself."""

from __future__ import annotations

from pathlib import Path

from liverrt.data.io import IMAGE_SUFFIXES, read_slice_folder
from liverrt.data.layouts.base import CaseRef, Layout, ReadOptions, existing_dir
from liverrt.data.volume import Volume


class Slices(Layout):
    name = "slices"
    description = (
        "a folder of PNG/JPG slices, or `images/` + `masks/` with matching stems "
        "(0/1 or 0/255; JPEG masks thresholded at 128)"
    )

    def detect(self, path: Path) -> CaseRef | None:
        if not path.is_dir():
            return None
        if (path / "images").is_dir():
            return self.ref(path, path / "images", existing_dir(path / "masks"))
        if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file()):
            return self.ref(path, path, None)
        return None

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        return read_slice_folder(ref.image, ref.mask if with_mask else None, case_id=ref.case_id)
