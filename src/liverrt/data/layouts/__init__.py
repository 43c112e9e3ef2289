"""The dataset layouts liverrt reads, one class per module, tried in the order of :data:`REGISTRY`.

The order decides what a folder is when it would fit several layouts: a dataset
root (MSD before LiTS) before anything else, then the case layouts from the most
specific (a KITTI export, the CHAOS and 3D-IRCADb sub-folders) to the least (any
slice image, any DICOM file). To add a layout, write one module with a
:class:`~liverrt.data.layouts.base.Layout` subclass and put an instance here.
"""

from __future__ import annotations

from liverrt.data.layouts.base import DEFAULT_OPTIONS, Annotations, CaseRef, Layout, ReadOptions
from liverrt.data.layouts.chaos import Chaos
from liverrt.data.layouts.dicom import Dicom
from liverrt.data.layouts.ircad import Ircad
from liverrt.data.layouts.kitti import Kitti
from liverrt.data.layouts.lits import Lits
from liverrt.data.layouts.msd import Msd
from liverrt.data.layouts.nifti import Nifti
from liverrt.data.layouts.slices import Slices
from liverrt.errors import InputError

REGISTRY: tuple[Layout, ...] = (Msd(), Lits(), Kitti(), Ircad(), Chaos(), Nifti(), Slices(), Dicom())

#: the registered layout names, in detection order (the choices of ``--layout``)
LAYOUTS: tuple[str, ...] = tuple(layout.name for layout in REGISTRY)

_BY_NAME = {layout.name: layout for layout in REGISTRY}


def layout_named(name: str) -> Layout:
    """The registered layout called ``name``; raises :class:`InputError` for any other name."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise InputError(f"Unknown layout {name!r}; expected one of {LAYOUTS}.") from None


def layout_of(ref: CaseRef) -> Layout:
    """The layout that found ``ref``."""
    return layout_named(ref.kind)


def markdown_table() -> str:
    """docs/data.md's layout table: one row per registered layout, in detection order."""
    rows = [f"| `{layout.name}` | {layout.description} |" for layout in REGISTRY]
    return "\n".join(["| layout | what it looks like |", "|---|---|", *rows])


__all__ = [
    "DEFAULT_OPTIONS", "LAYOUTS", "REGISTRY", "Annotations", "CaseRef", "Layout", "ReadOptions",
    "layout_named", "layout_of", "markdown_table",
]
