"""Find the cases in a source path and read them into Volumes.

Each layout is one class in :mod:`liverrt.data.layouts`, tried in the order of
its registry (``liverrt data inspect`` and docs/data.md list them):

* dataset roots: MSD (``imagesTr`` + ``labelsTr``) and LiTS (``volume-N`` +
  ``segmentation-N``) NIfTI datasets (:mod:`liverrt.data.nifti_sets`);
* case folders: the study's release (CT slices plus a CVAT KITTI 1.0 export,
  :mod:`liverrt.data.kitti`), 3D-IRCADb (``PATIENT_DICOM/`` + ``MASKS_DICOM/liver/``)
  and CHAOS CT (``DICOM_anon/`` + ``Ground/``) cases (:mod:`liverrt.data.dicom`),
  ``image.nii[.gz]`` (+ ``mask.nii[.gz]``) folders (what ``liverrt data synth``
  writes), ``images/`` (+ ``masks/``) PNG/JPG slice folders or a folder that
  directly holds slices, and DICOM series folders;
* a NIfTI, NRRD or MetaImage file: one volume (``liver = label > 0`` when read as a mask);
* a root folder whose sub-folders (natural order) or volume files are cases.

Masks (for ``liverrt eval``) are read by :func:`read_mask`: label maps in those
formats, PNG/JPG mask folders, and DICOM SEG files, whose frames are put on a
voxel grid when they are paired (:func:`on_one_grid`).

A case's ``kind`` is the name of the layout that found it; nothing else asks which.
One unreadable case never stops the others: it is reported in ``skipped``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from liverrt.atomic import check_outputs, refuse_output_in_input, refuse_overwriting_inputs
from liverrt.data.dicom import dicom_stem
from liverrt.data.dicom_seg_reader import (
    Grid,
    SegFrames,
    frames_grid,
    frames_on_grid,
    is_dicom_file,
    read_seg_frames,
)
from liverrt.data.io import (
    VOLUME_SUFFIXES,
    is_volume_file,
    list_slice_images,
    natural_key,
    read_nifti,
    read_slice_image,
    strip_volume_suffix,
)
from liverrt.data.layouts import (
    DEFAULT_OPTIONS,
    LAYOUTS,
    REGISTRY,
    CaseRef,
    ReadOptions,
    layout_named,
    layout_of,
)
from liverrt.data.volume import Volume
from liverrt.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OPTIONS", "LABELLED_CASE_KINDS", "LAYOUTS", "CaseRef", "LoadResult", "MaskVolume", "ReadOptions",
    "find_cases", "find_masks", "load_case", "load_cases", "on_one_grid", "read_mask", "single_mask",
]


@dataclass
class LoadResult:
    volumes: list[Volume] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


def find_cases(src: Path, *, layout: str | None = None) -> list[CaseRef]:
    """The cases under ``src``; raises :class:`InputError` when there are none.

    ``layout`` (one of :data:`LAYOUTS`) keeps only cases of that layout instead
    of accepting whatever is detected; a dataset layout (LiTS, MSD) is looked
    for in ``src`` whatever else it holds.
    """
    if layout is None:
        return _checked_ids(_detect_cases(Path(src)))
    chosen = layout_named(layout)
    refs = chosen.find(Path(src)) if chosen.dataset else [r for r in _detect_cases(Path(src)) if r.kind == layout]
    if not refs:
        raise InputError(f"No {layout} cases in {src}; expected {chosen.description} "
                         f"(`liverrt data inspect {src}` shows what was found).")
    return _checked_ids(refs)


def check_case_outputs(src: Path, out: Path, refs: list[CaseRef], *, also: tuple[Path, ...] = ()) -> None:
    """Before any work: ``out`` outside the input, and every ``out/<case>`` folder (and ``also``) replaceable.

    A case folder may replace only one liverrt wrote with the same command (a dataset's own case of
    the same name is refused: :mod:`liverrt.atomic`), and never one that holds its input.
    """
    refuse_output_in_input(out, [src, *(ref.image for ref in refs)])
    for ref in refs:
        refuse_overwriting_inputs(out / ref.case_id, (ref.image,))
    check_outputs([*(out / ref.case_id for ref in refs), *also])


def _checked_ids(refs: list[CaseRef]) -> list[CaseRef]:
    """Case ids name output folders (``OUT/<case>/``): each must be a plain, unique folder name."""
    seen: dict[str, CaseRef] = {}
    for ref in refs:
        cid = ref.case_id
        if not cid or cid.startswith(".") or any(c in cid for c in "/\\\0"):  # "", ".", "..": OUT itself
            raise InputError(f"{ref.image}: its case id {cid!r} cannot name an output folder; expected a file or "
                             "folder name that does not start with '.' (rename it).")
        if cid in seen:
            raise InputError(f"{seen[cid].image} and {ref.image} are both case {cid!r}; expected one case per id "
                             "(their outputs would replace each other): rename one.")
        seen[cid] = ref
    return refs


def _case_at(path: Path) -> CaseRef | None:
    """``path`` (a folder, or a file) as one case of the first layout that recognises it, else None."""
    return next((ref for layout in REGISTRY if (ref := layout.detect(path)) is not None), None)


def _detect_cases(src: Path) -> list[CaseRef]:
    if not src.exists():
        raise InputError(f"Input {src} does not exist; expected a NIfTI file, a slice folder or a folder of cases.")
    for layout in REGISTRY:  # src as a whole: a dataset root or one case
        refs = layout.find(src)
        if refs is not None:
            return refs
    if src.is_file():
        raise InputError(f"Input {src} is not a volume file ({', '.join(VOLUME_SUFFIXES)}); expected a volume "
                         "or a folder.")
    children = sorted((c for c in src.iterdir() if not c.name.startswith(".")), key=lambda p: natural_key(p.name))
    cases = [ref for ref in map(_case_at, children) if ref is not None]
    if not cases:
        raise InputError(
            f"No cases found in {src}; expected NIfTI (NRRD, MetaImage) files, image.nii.gz(+mask.nii.gz) case "
            "folders, or images/(+masks/) PNG/JPG slice folders."
        )
    return cases


def load_case(ref: CaseRef, *, with_mask: bool = True, options: ReadOptions = DEFAULT_OPTIONS) -> Volume:
    """Read one case with the layout that found it; ``with_mask=False`` ignores its labels (inference needs none).

    A KITTI case holds only its annotated slices when read with masks (for
    training and evaluation) and every image when read without (for inference).
    """
    return layout_of(ref).load(ref, with_mask=with_mask, options=options)


def load_cases(src: Path, *, require_mask: bool = False, layout: str | None = None,
               options: ReadOptions = DEFAULT_OPTIONS) -> LoadResult:
    """Read every case under ``src``; unreadable or unlabelled cases are skipped with a reason."""
    result = LoadResult()
    for ref in find_cases(src, layout=layout):
        if require_mask and ref.mask is None:
            result.skipped.append((str(ref.image), "no liver mask (expected mask.nii.gz or masks/)"))
            continue
        try:
            result.volumes.append(load_case(ref, options=options))
        except InputError as exc:
            log.warning("skipping %s: %s", ref.image, exc)
            result.skipped.append((str(ref.image), str(exc)))
    if not result.volumes:
        reasons = "; ".join(f"{s}: {r}" for s, r in result.skipped[:3])
        raise InputError(f"No readable cases in {src} ({reasons}).")
    return result


# ----------------------------------------------------------------------------- masks (for eval)


@dataclass(frozen=True)
class MaskVolume:
    case_id: str
    mask: np.ndarray  # (D, H, W) bool
    spacing: tuple[float, float, float] | None  # None: the source has no geometry (PNG)
    source: Path
    affine: np.ndarray | None = None  # NIfTI (NRRD, MetaImage, DICOM SEG) masks: affine of the LPS-ordered array
    slice_names: tuple[str, ...] | None = None  # PNG masks: file stems in natural order
    frames: SegFrames | None = None  # DICOM SEG: its frames, which :func:`on_one_grid` may put on another grid


#: case layouts whose labels are not a plain mask file or folder: read them with :func:`load_case`
LABELLED_CASE_KINDS = tuple(layout.name for layout in REGISTRY if layout.labels_in_case)


def _labelled_case_kind(folder: Path) -> str | None:
    """The layout of ``folder`` when it is a KITTI, CHAOS or 3D-IRCADb case (not a mask folder), else None."""
    ref = _case_at(folder)
    return ref.kind if ref is not None and layout_of(ref).labels_in_case else None


def _mask_path(folder: Path) -> Path | None:
    if _labelled_case_kind(folder) is not None:
        return None
    for name in (*(f"mask{ext}" for ext in VOLUME_SUFFIXES), "seg.dcm"):  # seg.dcm: infer --format dicom-seg
        if (folder / name).is_file():
            return folder / name
    for name in ("masks", "mask"):
        sub = folder / name
        if sub.is_dir() and list_slice_images(sub):
            return sub
    if list_slice_images(folder):
        return folder
    return None


def read_mask(path: Path, case_id: str | None = None) -> MaskVolume:
    """A liver mask from a NIfTI, NRRD or MetaImage label map (label > 0), a DICOM SEG or a PNG/JPG mask folder.

    A label map with any NaN/Inf value is refused, and so is an image (masks are
    label maps). A DICOM SEG is read on its own grid (:func:`frames_grid`); its
    frames travel along for :func:`on_one_grid`.
    """
    path = Path(path)
    if path.is_file() and not is_volume_file(path):
        frames = read_seg_frames(path)  # refuses anything but a DICOM SEG, saying what the file is
        grid = frames_grid(frames)
        return MaskVolume(case_id or dicom_stem(path), frames_on_grid(frames, grid, "its own frames"), grid.spacing,
                          path, affine=grid.affine, frames=frames)
    if path.is_file():
        labels, affine, spacing = read_nifti(path, labels=True)
        return MaskVolume(case_id or strip_volume_suffix(path.name), labels > 0, spacing, path, affine=affine)
    files = list_slice_images(path)
    if not files:
        raise InputError(f"No mask slices in {path}; expected PNG/JPG masks.")
    slices = [read_slice_image(f, as_mask=True) for f in files]
    if len({s.shape for s in slices}) != 1:
        raise InputError(f"Mask slices in {path} have different shapes; expected one shape per volume.")
    name = case_id or (path.parent.name if path.name in ("masks", "mask") else path.name)
    return MaskVolume(name, np.stack(slices), None, path, slice_names=tuple(f.stem for f in files))


def on_one_grid(pred: MaskVolume, truth: MaskVolume) -> tuple[MaskVolume, MaskVolume]:
    """``pred`` and ``truth``, a DICOM SEG on either side put on the other side's voxel grid.

    A SEG holds frames, not a whole grid (it omits the slices without liver): against a
    mask with an affine (NIfTI, NRRD, MetaImage, a DICOM case) its frames are placed on
    that mask's grid, and refused when they do not lie on it; two SEGs share the grid
    their frames span together (one frame of reference); against PNG masks (no geometry)
    a SEG keeps its own grid.
    """
    if pred.frames is None and truth.frames is None:
        return pred, truth
    if pred.frames is not None and truth.frames is not None:
        grid = frames_grid(pred.frames, truth.frames)
        return _placed(pred, grid, "both SEGs' frames"), _placed(truth, grid, "both SEGs' frames")
    seg, other = (pred, truth) if pred.frames is not None else (truth, pred)
    if other.affine is None:
        return pred, truth
    grid = Grid(other.affine, other.mask.shape, other.spacing or seg.spacing)
    placed = _placed(seg, grid, str(other.source))
    return (placed, truth) if seg is pred else (pred, placed)


def _placed(mask: MaskVolume, grid: Grid, what: str) -> MaskVolume:
    return replace(mask, mask=frames_on_grid(mask.frames, grid, what), spacing=grid.spacing, affine=grid.affine)


def _mask_file_id(path: Path) -> str | None:
    """The case id of a mask file (a volume file or a DICOM file, read as a SEG), else None."""
    if is_volume_file(path):
        return strip_volume_suffix(path.name)
    return dicom_stem(path) if is_dicom_file(path) else None


def single_mask(src: Path) -> Path | None:
    """``src`` itself as one mask volume (a NIfTI, NRRD, MetaImage or DICOM SEG file, or a mask slice folder),
    else None.

    A KITTI, CHAOS or 3D-IRCADb case folder is never one (its labels are read with the case).
    """
    src = Path(src)
    if src.is_file():
        return src if _mask_file_id(src) is not None else None
    if not src.is_dir() or _labelled_case_kind(src) is not None:
        return None
    return src if list_slice_images(src) else None


def find_masks(src: Path) -> dict[str, Path]:
    """Map case id -> mask path for a mask file, a case folder or a root of cases.

    KITTI, CHAOS and 3D-IRCADb case folders hold images with labels of their own
    format, not masks: ``src`` being one raises :class:`InputError`, and such
    sub-folders of a root are left out (read them with :func:`find_cases`/:func:`load_case`).
    """
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src} does not exist; expected a NIfTI mask, a PNG mask folder or a folder of cases.")
    if src.is_file():
        cid = _mask_file_id(src)
        if cid is None:
            raise InputError(f"{src} is not a mask file; expected a label map ({', '.join(VOLUME_SUFFIXES)}) or a "
                             "DICOM SEG (.dcm).")
        return {cid: src}
    kind = _labelled_case_kind(src)
    if kind is not None:
        raise InputError(
            f"{src} is a {kind} case folder (images with their labels), not a mask file or folder; expected "
            "NIfTI masks, mask.nii.gz case folders or PNG mask folders."
        )
    own = _mask_path(src)
    if own is not None:
        return {src.parent.name if own is src and src.name in ("masks", "mask") else src.name: own}
    found: dict[str, Path] = {}
    for child in sorted(src.iterdir(), key=lambda p: natural_key(p.name)):
        if child.is_dir():
            p = _mask_path(child)
            if p is not None:
                found[child.name] = p
        elif is_volume_file(child):  # DICOM files of a folder are a series, not SEGs: give a SEG by name
            found[strip_volume_suffix(child.name)] = child
    if not found:
        raise InputError(f"No masks found in {src}; expected NIfTI (NRRD, MetaImage) masks, mask.nii.gz case folders "
                         "or PNG mask folders.")
    return found
