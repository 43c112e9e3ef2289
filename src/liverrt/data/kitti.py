"""The study's release: case folders of CT slices plus a CVAT "KITTI 1.0" mask export.

A case folder holds one folder of 8-bit CT slice images (``images/``, or any
sub-folder with PNG/JPG files that is not the export) and a CVAT KITTI 1.0
export, either in the case folder itself or in one of its sub-folders::

    case1/
        images/image1.png ... image60.png
        masks/                       # the export (any name)
            label_colors.txt         # "R G B name" per line; line index = label id
            default/semantic/image8.png      # uint8 label ids, background 0
            default/instance/image8.png      # uint16: label id << 8 | instance id
            default/semantic_rgb/image8.png  # colours (not read)
            default/image_2/                 # optional copy of the images

Only slices inside the annotated range have masks. Images and masks are paired
by file stem and ordered naturally (``image2`` before ``image10``). Nothing here
assumes the liver's label id: it is looked up by name in ``label_colors.txt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from liverrt.data.io import (
    IMAGE_SUFFIXES,
    list_slice_images,
    natural_key,
    stack_slice_images,
)
from liverrt.data.volume import Volume, default_affine
from liverrt.errors import InputError
from liverrt.metrics import label_by_area

log = logging.getLogger(__name__)

LABEL_COLORS = "label_colors.txt"
SEMANTIC = ("default", "semantic")
INSTANCE = ("default", "instance")
EXPORT_IMAGES = ("default", "image_2")
UNANNOTATED_MODES = ("exclude", "negative")


@dataclass(frozen=True)
class KittiCase:
    """What a KITTI case folder holds, found before any pixel is read.

    Attributes:
        case_id: the case folder's name.
        images: CT slice images in natural order of their stems.
        masks: stem -> ``default/semantic/<stem>.png`` for the images that have one.
        instances: stem -> ``default/instance/<stem>.png`` for the images that have one.
        label_names: names from ``label_colors.txt``; the index is the label id.
        unannotated: stems of images without a semantic mask (natural order).
        orphan_masks: stems of semantic masks without an image (natural order).
    """

    case_id: str
    images: list[Path]
    masks: dict[str, Path]
    instances: dict[str, Path]
    label_names: list[str]
    unannotated: list[str]
    orphan_masks: list[str]

    @property
    def annotated(self) -> list[str]:
        """Stems of the images that have a mask, in natural order."""
        return [p.stem for p in self.images if p.stem in self.masks]


# ----------------------------------------------------------------------------- finding


def _is_export(folder: Path) -> bool:
    return (folder / LABEL_COLORS).is_file() or folder.joinpath(*SEMANTIC).is_dir()


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: natural_key(p.name),
    )


def _has_images(folder: Path) -> bool:
    return any(
        p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        for p in folder.iterdir()
    )


def _is_pure_export(folder: Path) -> bool:
    """An export with no CT images of its own: not a whole case that keeps its export inline."""
    if not _is_export(folder) or _has_images(folder):
        return False
    return not any(_has_images(sub) for sub in _visible_dirs(folder) if sub.name != "default")


def _find_export(folder: Path) -> Path | None:
    """The export folder: ``folder`` itself or one direct sub-folder (first in natural order).

    A sub-folder counts only as a pure export (no CT images beside ``default/``),
    so a root of cases that each keep ``label_colors.txt`` inline is not a case.
    """
    if _is_export(folder):
        return folder
    for child in _visible_dirs(folder):
        if _is_pure_export(child):
            return child
    return None


def is_kitti_case(folder: Path) -> bool:
    """True when ``folder`` (or one direct sub-folder) holds a CVAT KITTI export.

    The export is recognised by ``label_colors.txt`` or ``default/semantic/``.
    """
    folder = Path(folder)
    return folder.is_dir() and _find_export(folder) is not None


def find_kitti_cases(root: Path) -> list[Path]:
    """KITTI case folders under ``root`` in natural order, or ``[root]`` if it is a case itself.

    Returns an empty list when there are none; raises :class:`InputError` when
    ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; expected a KITTI case folder or a folder of them.")
    if is_kitti_case(root):
        return [root]
    return [child for child in _visible_dirs(root) if is_kitti_case(child)]


def read_label_names(path: Path) -> list[str]:
    """Label names of a ``label_colors.txt`` (lines ``R G B name``); the index is the label id."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {path}: {exc}. Expected CVAT's label_colors.txt.") from exc
    names: list[str] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=3)
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            raise InputError(f"{path}, line {n}: got {line!r}, expected 'R G B name'.")
        names.append(parts[3].strip())
    if not names:
        raise InputError(f"{path} lists no labels; expected lines 'R G B name' (e.g. '0 0 0 background').")
    return names


def _image_folder(folder: Path, export: Path) -> Path:
    """The folder of CT slices: ``images/``, else the only non-export folder with images."""
    candidates = []
    if folder != export and _has_images(folder):
        candidates.append(folder)
    for child in _visible_dirs(folder):
        if child == export or child == export / "default":
            continue
        if _has_images(child):
            candidates.append(child)
    named = [c for c in candidates if c.name.lower() == "images"]
    if named:
        return named[0]
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        names = ", ".join(str(c) for c in candidates)
        raise InputError(
            f"KITTI case {folder}: several image folders ({names}); expected one, ideally named images/."
        )
    fallback = export.joinpath(*EXPORT_IMAGES)
    if fallback.is_dir() and _has_images(fallback):
        return fallback
    raise InputError(
        f"KITTI case {folder}: no CT slice images found; expected an images/ folder of PNG/JPG "
        f"slices next to the export {export}."
    )


def _png_by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.stem: p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() == ".png" and not p.name.startswith(".")
    }


def scan_kitti_case(folder: Path, *, labels: bool = True) -> KittiCase:
    """Find a case's images, masks and labels and pair them by file stem (no pixels read).

    ``labels=False`` (for inference, which reads no labels) neither needs nor
    reads ``label_colors.txt``: ``label_names`` is then empty.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; expected a KITTI case folder.")
    export = _find_export(folder)
    if export is None:
        raise InputError(
            f"{folder} holds no CVAT KITTI export; expected label_colors.txt and default/semantic/ "
            "in the case folder or one of its sub-folders."
        )
    colors = export / LABEL_COLORS
    label_names: list[str] = []
    if labels:
        if not colors.is_file():
            raise InputError(f"KITTI export {export} has no {LABEL_COLORS}; expected CVAT's KITTI 1.0 export.")
        label_names = read_label_names(colors)
    images = list_slice_images(_image_folder(folder, export))
    images = [p for p in images if not p.name.startswith(".")]
    stems = [p.stem for p in images]
    dupes = sorted({s for s in stems if stems.count(s) > 1}, key=natural_key)
    if dupes:
        raise InputError(
            f"KITTI case {folder}: several images share the stem {dupes[0]!r}; expected one file per slice."
        )
    semantic = _png_by_stem(export.joinpath(*SEMANTIC))
    instance = _png_by_stem(export.joinpath(*INSTANCE))
    image_stems = set(stems)
    return KittiCase(
        case_id=folder.name,
        images=images,
        masks={s: semantic[s] for s in stems if s in semantic},
        instances={s: instance[s] for s in stems if s in instance},
        label_names=label_names,
        unannotated=[s for s in stems if s not in semantic],
        orphan_masks=sorted((s for s in semantic if s not in image_stems), key=natural_key),
    )


# ----------------------------------------------------------------------------- reading


def label_id(label_names: list[str], label: str) -> int:
    """Index of ``label`` (case-insensitive) in ``label_names``; InputError listing the names if absent."""
    wanted = label.strip().lower()
    for i, name in enumerate(label_names):
        if name.lower() == wanted:
            return i
    raise InputError(
        f"Label {label!r} is not in label_colors.txt; expected one of: {', '.join(label_names)}."
    )


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        raise InputError(f"Cannot read mask {path}: {exc}. Expected a PNG from a CVAT KITTI export.") from exc
    if arr.ndim != 2:
        raise InputError(f"Mask {path} has shape {arr.shape}; expected a single-channel label PNG.")
    return arr


def _instance_slice(path: Path, mask: np.ndarray, lid: int) -> np.ndarray | None:
    """Instance ids of ``lid`` from a KITTI instance PNG; None if they do not cover ``mask`` exactly."""
    raw = _read_png(path).astype(np.int64)
    if raw.shape != mask.shape:
        raise InputError(f"Instance mask {path} has shape {raw.shape}, expected the image's {mask.shape}.")
    ids = np.where((raw >> 8) == lid, raw & 0xFF, 0).astype(np.uint16)
    return ids if np.array_equal(ids > 0, mask) else None


def read_kitti_case(
    folder: Path, *, label: str | None = "liver", unannotated: str = "exclude"
) -> tuple[Volume, list[str]]:
    """Read one KITTI case into an 8-bit Volume with a liver mask and instance map.

    Args:
        folder: the case folder (see the module docstring).
        label: the label name (case-insensitive) in ``label_colors.txt`` that is liver.
            ``None`` reads the images only (for inference): every image, no mask,
            no instances, and neither ``label_colors.txt`` nor any mask PNG is
            needed or read (``unannotated`` is then ignored).
        unannotated: ``"exclude"`` keeps only the images with a mask; ``"negative"``
            keeps all images, the unannotated ones with an empty mask.

    Returns:
        ``(volume, warnings)``: ``volume.image`` uint8 ``(D, H, W)``, ``mask`` bool,
        ``instances`` uint16 (label id's instance ids from ``default/instance``,
        or 8-connected regions, largest first, where an instance PNG is missing),
        ``slice_names`` the file stems; ``warnings`` counts unannotated images and
        orphan masks and names the annotated range.
    """
    if unannotated not in UNANNOTATED_MODES:
        raise ValueError(f"read_kitti_case: got unannotated={unannotated!r}, expected one of {UNANNOTATED_MODES}")
    if label is None:
        return _read_kitti_images(folder), []
    case = scan_kitti_case(folder)
    lid = label_id(case.label_names, label)
    warnings = _coverage_warnings(case, unannotated)
    files = case.images if unannotated == "negative" else [p for p in case.images if p.stem in case.masks]
    if not files:
        raise InputError(
            f"KITTI case {folder}: no image has a mask in default/semantic/; expected at least one "
            "annotated slice (or unannotated='negative')."
        )
    image = stack_slice_images(files)
    labels = _read_labels(case, files, lid, image.shape)
    warnings += labels.warnings()
    for w in warnings:
        log.debug("%s: %s", case.case_id, w)
    spacing = (1.0, 1.0, 1.0)
    volume = Volume(
        image=image,
        spacing=spacing,
        affine=default_affine(spacing),
        intensity="8bit",
        mask=labels.mask,
        instances=labels.instances,
        slice_names=tuple(p.stem for p in files),
        case_id=case.case_id,
        source=str(folder),
    )
    return volume, warnings


def _coverage_warnings(case: KittiCase, unannotated: str) -> list[str]:
    """What the annotation covers: its range and gaps, images without a mask, masks without an image."""
    warnings: list[str] = []
    annotated = case.annotated
    if annotated:
        first, last = annotated[0], annotated[-1]
        stems = [p.stem for p in case.images]
        span = stems[stems.index(first): stems.index(last) + 1]
        gaps = [s for s in span if s not in case.masks]
        msg = f"annotated range {first}..{last} ({len(annotated)} of {len(case.images)} images)"
        if gaps:
            msg += f"; {len(gaps)} images inside it have no mask (first: {gaps[0]})"
        warnings.append(msg)
    if case.unannotated:
        what = "excluded" if unannotated == "exclude" else "kept with an empty mask"
        warnings.append(f"{len(case.unannotated)} images have no mask: {what}")
    if case.orphan_masks:
        warnings.append(
            f"{len(case.orphan_masks)} masks have no image (first: {case.orphan_masks[0]}): skipped"
        )
    return warnings


@dataclass
class _Labels:
    """A case's liver mask and instance map, and the stems whose instances fell back to regions."""

    mask: np.ndarray  # bool (D, H, W)
    instances: np.ndarray  # uint16 (D, H, W)
    missing: list[str]  # annotated images without an instance PNG
    mismatched: list[str]  # instance PNGs that disagree with the semantic mask

    def warnings(self) -> list[str]:
        out = []
        if self.missing:
            out.append(
                f"{len(self.missing)} annotated images have no instance PNG (first: {self.missing[0]}): "
                "instances are the mask's 8-connected regions"
            )
        if self.mismatched:
            out.append(
                f"{len(self.mismatched)} instance PNGs disagree with the semantic mask "
                f"(first: {self.mismatched[0]}): instances are the mask's 8-connected regions"
            )
        return out


def _read_labels(case: KittiCase, files: list[Path], lid: int, shape: tuple[int, ...]) -> _Labels:
    """Mask and instances of label ``lid`` for ``files`` (``shape`` is their ``(D, H, W)`` stack).

    Images without a semantic mask stay empty. Instances come from
    ``default/instance``, or are the mask's 8-connected regions (largest first)
    where that PNG is missing or does not cover the mask exactly.
    """
    labels = _Labels(np.zeros(shape, dtype=bool), np.zeros(shape, dtype=np.uint16), [], [])
    for d, p in enumerate(files):
        sem_path = case.masks.get(p.stem)
        if sem_path is None:
            continue
        sem = _read_png(sem_path)
        if sem.shape != shape[1:]:
            raise InputError(f"Mask {sem_path} has shape {sem.shape}, expected the image's {shape[1:]} ({p.name}).")
        labels.mask[d] = sem == lid
        inst_path = case.instances.get(p.stem)
        ids = None if inst_path is None else _instance_slice(inst_path, labels.mask[d], lid)
        if ids is None:
            ids = label_by_area(labels.mask[d])
            (labels.missing if inst_path is None else labels.mismatched).append(p.stem)
        labels.instances[d] = ids
    return labels


def _read_kitti_images(folder: Path) -> Volume:
    """Every CT image of a KITTI case (natural order), without labels: what inference segments."""
    case = scan_kitti_case(folder, labels=False)
    if not case.images:
        raise InputError(f"KITTI case {folder}: no CT slice images found; expected an images/ folder of PNG/JPG slices.")
    spacing = (1.0, 1.0, 1.0)
    return Volume(
        image=stack_slice_images(case.images),
        spacing=spacing,
        affine=default_affine(spacing),
        intensity="8bit",
        slice_names=tuple(p.stem for p in case.images),
        case_id=case.case_id,
        source=str(folder),
    )
