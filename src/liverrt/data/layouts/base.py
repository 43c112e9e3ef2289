"""What a layout is: how it recognises a case (or a dataset root) and reads it into a :class:`Volume`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from liverrt.data.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseRef:
    """Where one case's image and (optional) mask live; ``kind`` is the name of the layout that found it."""

    case_id: str
    kind: str  # a registered layout's name: "kitti", "lits", "msd", "nifti", ...
    image: Path  # kitti: the case folder
    mask: Path | None  # kitti: the CVAT export folder


@dataclass(frozen=True)
class ReadOptions:
    """How labelled sources are read.

    ``label``: the label name that is liver in a KITTI ``label_colors.txt``;
    ``unannotated``: KITTI images without a mask are left out (``exclude``) or
    kept as liver-free slices (``negative``).
    """

    label: str = "liver"
    unannotated: str = "exclude"


DEFAULT_OPTIONS = ReadOptions()


@dataclass(frozen=True)
class Annotations:
    """Which images of a case carry a mask (what ``liverrt data inspect`` reports)."""

    n_images: int
    annotated: list[str]  # image names in slice order
    unannotated: list[str]
    orphan_masks: list[str]  # masks without an image


class Layout:
    """One dataset layout. Subclasses set the class attributes and override ``detect`` or ``find``, and ``load``.

    A case layout recognises one case (a folder, or a file) in :meth:`detect`; a
    dataset layout (``dataset = True``) recognises a whole root of cases in
    :meth:`find`, and ``--layout NAME`` searches that root for its files
    whatever else it holds.
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line: what the layout looks like (data inspect, the table in docs/data.md)
    dataset: ClassVar[bool] = False  # True: found only as a whole root (LiTS, MSD), never as one case folder
    mask_is_label_map: ClassVar[bool] = False  # the mask is one NIfTI label map (liver = label > 0)
    labels_in_case: ClassVar[bool] = False  # labels in the layout's own format: read them with load, not as masks
    masks_select_slices: ClassVar[bool] = False  # read with masks, a case keeps only its annotated slices

    def detect(self, path: Path) -> CaseRef | None:
        """``path`` (a folder, or a file) as one case of this layout, else None."""
        return None

    def find(self, src: Path) -> list[CaseRef] | None:
        """Every case when ``src`` as a whole is of this layout (one case or a dataset root), else None."""
        ref = self.detect(src)
        return None if ref is None else [ref]

    def load(self, ref: CaseRef, *, with_mask: bool, options: ReadOptions) -> Volume:
        """Read one case found by this layout; ``with_mask=False`` leaves its labels out."""
        raise NotImplementedError

    def annotations(self, ref: CaseRef, volume: Volume) -> Annotations:
        """Which images are annotated; by default a read mask covers every slice."""
        names = list(volume.names) if volume.mask is not None else []
        return Annotations(volume.shape[0], names, [], [])

    def ref(self, path: Path, image: Path, mask: Path | None, case_id: str | None = None) -> CaseRef:
        """A case of this layout named after ``path`` (or ``case_id``)."""
        return CaseRef(case_id or path.name, self.name, image, mask)


def log_warnings(ref: CaseRef, warnings: list[str], what: str = "") -> None:
    """A reader's warnings, each on the log under the case's id (``data inspect`` collects them)."""
    for w in warnings:
        log.warning("%s: %s%s", ref.case_id, what, w)


def existing_dir(path: Path) -> Path | None:
    return path if path.is_dir() else None


def first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that is a file in ``folder``."""
    return next((folder / n for n in names if (folder / n).is_file()), None)
