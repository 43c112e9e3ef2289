"""Find the cases in a source path and read them into Volumes.

Layouts understood (auto-detected; a root may hold several cases):

* the study's release: case folders of CT slices plus a CVAT KITTI 1.0 export
  (:mod:`liverrt.data.kitti`);
* LiTS (``volume-N`` + ``segmentation-N``) and MSD (``imagesTr`` + ``labelsTr``)
  NIfTI datasets (:mod:`liverrt.data.nifti_sets`);
* a DICOM series folder, CHAOS CT cases (``DICOM_anon/`` + ``Ground/``) and
  3D-IRCADb cases (``PATIENT_DICOM/`` + ``MASKS_DICOM/liver/``) (:mod:`liverrt.data.dicom`);

* a NIfTI file: one volume (``liver = label > 0`` when read as a mask);
* a case folder with ``image.nii[.gz]`` and optional ``mask.nii[.gz]``
  (what ``liverrt data synth`` writes);
* a case folder with ``images/`` and optional ``masks/`` PNG/JPG slices
  (matching stems), or a folder that directly holds PNG/JPG slices;
* a root folder whose sub-folders (natural order) or NIfTI files are cases.

One unreadable case never stops the others: it is reported in ``skipped``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liverrt.data.io import (
    IMAGE_SUFFIXES,
    is_nifti,
    list_slice_images,
    natural_key,
    read_nifti,
    read_nifti_volume,
    read_slice_folder,
    read_slice_image,
    strip_nifti_suffix,
)
from liverrt.data.volume import Volume
from liverrt.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaseRef:
    """Where one case's image and (optional) mask live."""

    case_id: str
    kind: str  # "nifti" | "slices" | "kitti" | "dicom" | "chaos" | "ircad"
    image: Path  # kitti: the case folder
    mask: Path | None  # kitti: the CVAT export folder


LAYOUTS = ("kitti", "lits", "msd", "dicom", "chaos", "ircad", "nifti", "slices")


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


@dataclass
class LoadResult:
    volumes: list[Volume] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        p = folder / name
        if p.is_file():
            return p
    return None


def _case_in_folder(folder: Path) -> CaseRef | None:
    from liverrt.data.kitti import is_kitti_case

    if is_kitti_case(folder):  # the study's release: CT slices + a CVAT KITTI 1.0 export
        return CaseRef(folder.name, "kitti", folder, folder)
    if (folder / "PATIENT_DICOM").is_dir():  # 3D-IRCADb: PATIENT_DICOM/ + MASKS_DICOM/liver/
        masks = folder / "MASKS_DICOM" / "liver"
        return CaseRef(folder.name, "ircad", folder / "PATIENT_DICOM", masks if masks.is_dir() else None)
    if (folder / "DICOM_anon").is_dir():  # CHAOS CT: DICOM_anon/ + Ground/liver_GT_NNN.png
        ground = folder / "Ground"
        return CaseRef(folder.name, "chaos", folder, ground if ground.is_dir() else None)
    image = _first_existing(folder, ("image.nii.gz", "image.nii"))
    if image is not None:
        return CaseRef(folder.name, "nifti", image, _first_existing(folder, ("mask.nii.gz", "mask.nii")))
    if (folder / "images").is_dir():
        masks = folder / "masks"
        return CaseRef(folder.name, "slices", folder / "images", masks if masks.is_dir() else None)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir() if p.is_file()):
        return CaseRef(folder.name, "slices", folder, None)
    if _holds_dicom(folder):
        return CaseRef(folder.name, "dicom", folder, None)
    return None


def _holds_dicom(folder: Path, probe: int = 16) -> bool:
    """True when one of the first ``probe`` files is DICOM (by suffix or the 'DICM' preamble)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))[:probe]
    for path in files:
        if path.suffix.lower() in (".dcm", ".dicom", ".ima"):
            return True
        try:
            with path.open("rb") as f:
                head = f.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False


def find_cases(src: Path, *, layout: str | None = None) -> list[CaseRef]:
    """The cases under ``src``; raises :class:`InputError` when there are none.

    ``layout`` (one of :data:`LAYOUTS`) keeps only cases of that layout instead
    of accepting whatever is detected.
    """
    if layout is not None and layout not in LAYOUTS:
        raise InputError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
    if layout in ("lits", "msd"):
        from liverrt.data.nifti_sets import find_lits, find_msd

        pairs = find_lits(Path(src)) if layout == "lits" else find_msd(Path(src))
        if not pairs:
            raise InputError(f"No {layout.upper()} cases in {src}; expected its file layout (see liverrt data inspect).")
        return [CaseRef(cid, "nifti", image, mask) for cid, image, mask in pairs]
    refs = _detect_cases(Path(src))
    if layout is not None:
        refs = [r for r in refs if r.kind == layout]
        if not refs:
            raise InputError(f"No {layout} cases in {src}; `liverrt data inspect {src}` shows what was found.")
    return refs


def _detect_cases(src: Path) -> list[CaseRef]:
    src = Path(src)
    if not src.exists():
        raise InputError(f"Input {src} does not exist; expected a NIfTI file, a slice folder or a folder of cases.")
    if src.is_file():
        if is_nifti(src):
            return [CaseRef(strip_nifti_suffix(src.name), "nifti", src, None)]
        raise InputError(f"Input {src} is not a NIfTI file (.nii/.nii.gz); expected a volume or a folder.")
    from liverrt.data.nifti_sets import detect_nifti_set, find_lits, find_msd

    dataset = detect_nifti_set(src)  # LiTS (volume-N/segmentation-N) or MSD (imagesTr/labelsTr)
    if dataset is not None:
        pairs = find_lits(src) if dataset == "lits" else find_msd(src)
        return [CaseRef(cid, "nifti", image, mask) for cid, image, mask in pairs]
    ref = _case_in_folder(src)
    if ref is not None:
        return [ref]
    cases: list[CaseRef] = []
    for child in sorted(src.iterdir(), key=lambda p: natural_key(p.name)):
        if child.name.startswith("."):
            continue
        if child.is_dir():
            sub = _case_in_folder(child)
            if sub is not None:
                cases.append(sub)
        elif is_nifti(child):
            cases.append(CaseRef(strip_nifti_suffix(child.name), "nifti", child, None))
    if not cases:
        raise InputError(
            f"No cases found in {src}; expected NIfTI files, image.nii.gz(+mask.nii.gz) case folders, "
            "or images/(+masks/) PNG/JPG slice folders."
        )
    return cases


def load_case(ref: CaseRef, *, with_mask: bool = True, options: ReadOptions = DEFAULT_OPTIONS) -> Volume:
    """Read one case; ``with_mask=False`` ignores its labels (inference needs none).

    A KITTI case holds only its annotated slices when read with masks (for
    training and evaluation) and every image when read without (for inference).
    """
    if ref.kind == "kitti":  # without masks: the images only, no label_colors.txt or liver label needed
        from liverrt.data.kitti import read_kitti_case

        volume, warnings = read_kitti_case(ref.image, label=options.label if with_mask else None,
                                           unannotated=options.unannotated)
        for w in warnings:
            log.warning("%s: %s", ref.case_id, w)
        return volume
    if ref.kind in ("dicom", "chaos", "ircad"):
        from liverrt.data.dicom import read_chaos_case, read_dicom_series

        if ref.kind == "chaos":
            volume, warnings = read_chaos_case(ref.image)
        else:
            volume, warnings = read_dicom_series(ref.image, case_id=ref.case_id)
            if ref.kind == "ircad" and ref.mask is not None and with_mask:
                volume = volume.with_mask(_ircad_mask(ref, volume))
        for w in warnings:
            log.warning("%s: %s", ref.case_id, w)
        return volume if with_mask else volume.with_mask(None)
    mask = ref.mask if with_mask else None
    if ref.kind == "nifti":
        return read_nifti_volume(ref.image, mask, case_id=ref.case_id)
    return read_slice_folder(ref.image, mask, case_id=ref.case_id)


def _ircad_mask(ref: CaseRef, volume: Volume) -> np.ndarray:
    """The liver mask series of a 3D-IRCADb case (non-zero = liver), checked against the CT's geometry."""
    from liverrt.data.dicom import read_dicom_series

    masks, warnings = read_dicom_series(ref.mask, case_id=ref.case_id)
    for w in warnings:
        log.warning("%s: liver mask series: %s", ref.case_id, w)
    if masks.shape != volume.shape or not np.allclose(masks.affine, volume.affine, atol=1e-3):
        raise InputError(
            f"{ref.mask}: mask series {masks.shape} does not share the geometry of {ref.image} {volume.shape}; "
            "expected the same slices."
        )
    return masks.image > 0


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
    affine: np.ndarray | None = None  # NIfTI masks: affine of the LPS-ordered array
    slice_names: tuple[str, ...] | None = None  # PNG masks: file stems in natural order


#: case layouts whose labels are not a plain mask file or folder: read them with :func:`load_case`
LABELLED_CASE_KINDS = ("kitti", "chaos", "ircad")


def _labelled_case_kind(folder: Path) -> str | None:
    """The layout of ``folder`` when it is a KITTI, CHAOS or 3D-IRCADb case (not a mask folder), else None."""
    ref = _case_in_folder(folder)
    return ref.kind if ref is not None and ref.kind in LABELLED_CASE_KINDS else None


def _mask_path(folder: Path) -> Path | None:
    if _labelled_case_kind(folder) is not None:
        return None
    for name in ("mask.nii.gz", "mask.nii"):
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
    """A liver mask from a NIfTI label map (label > 0) or a PNG/JPG mask folder.

    A NIfTI mask with any NaN/Inf value is refused (masks are label maps).
    """
    path = Path(path)
    if path.is_file():
        labels, affine, spacing = read_nifti(path, labels=True)
        return MaskVolume(case_id or strip_nifti_suffix(path.name), labels > 0, spacing, path, affine=affine)
    files = list_slice_images(path)
    if not files:
        raise InputError(f"No mask slices in {path}; expected PNG/JPG masks.")
    slices = [read_slice_image(f, as_mask=True) for f in files]
    if len({s.shape for s in slices}) != 1:
        raise InputError(f"Mask slices in {path} have different shapes; expected one shape per volume.")
    name = case_id or (path.parent.name if path.name in ("masks", "mask") else path.name)
    return MaskVolume(name, np.stack(slices), None, path, slice_names=tuple(f.stem for f in files))


def single_mask(src: Path) -> Path | None:
    """``src`` itself as one mask volume (a NIfTI file or a mask slice folder), else None.

    A KITTI, CHAOS or 3D-IRCADb case folder is never one (its labels are read with the case).
    """
    src = Path(src)
    if src.is_file():
        return src if is_nifti(src) else None
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
        if not is_nifti(src):
            raise InputError(f"{src} is not a NIfTI file; expected a .nii/.nii.gz mask.")
        return {strip_nifti_suffix(src.name): src}
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
        elif is_nifti(child):
            found[strip_nifti_suffix(child.name)] = child
    if not found:
        raise InputError(f"No masks found in {src}; expected NIfTI masks, mask.nii.gz case folders or PNG mask folders.")
    return found
