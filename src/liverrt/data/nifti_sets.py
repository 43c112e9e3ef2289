"""Public NIfTI liver datasets: LiTS and the Medical Segmentation Decathlon's Task03_Liver.

Both label 0 background, 1 liver, 2 tumour; liverrt's liver is ``label > 0``.
These functions only find and pair the files; read each pair with
:func:`liverrt.data.io.read_nifti_volume`, which reorients by the affine (never
assume an axis order)::

    for case_id, image, mask in find_lits(root):
        volume = read_nifti_volume(image, mask, case_id=case_id)

Layouts:

* LiTS: ``volume-N.nii[.gz]`` and ``segmentation-N.nii[.gz]`` anywhere under the
  root (the release splits them into "Training Batch 1/2"); the test set's
  ``test-volume-N.nii[.gz]`` have no labels.
* MSD: ``imagesTr/liver_N.nii.gz`` + ``labelsTr/liver_N.nii.gz`` and
  ``imagesTs/liver_N.nii.gz`` (no labels), in the root or in a ``Task03_Liver``
  sub-folder. macOS ``._`` resource files shipped in the tarball are ignored.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from liverrt.data.io import is_nifti, natural_key, strip_nifti_suffix
from liverrt.errors import InputError

log = logging.getLogger(__name__)

NiftiPair = tuple[str, Path, Path | None]

_LITS_VOLUME = re.compile(r"^(test-)?volume-(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_LITS_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$", re.IGNORECASE)
_NNUNET_CHANNEL = re.compile(r"_0000$")
_MAX_DEPTH = 3


def _is_junk(path: Path) -> bool:
    """macOS resource forks (``._name``) and other hidden files."""
    return path.name.startswith(".")


def _nifti_files(root: Path, depth: int = _MAX_DEPTH) -> list[Path]:
    """NIfTI files under ``root`` down to ``depth`` folder levels, hidden files and folders skipped."""
    found: list[Path] = []
    for p in sorted(root.iterdir(), key=lambda q: natural_key(q.name)):
        if _is_junk(p):
            continue
        if p.is_dir() and depth > 0:
            found.extend(_nifti_files(p, depth - 1))
        elif is_nifti(p):
            found.append(p)
    return found


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder; expected the root folder of a LiTS or MSD dataset.")
    return root


def find_lits(root: Path) -> list[NiftiPair]:
    """``(case_id, volume, segmentation or None)`` for each LiTS volume under ``root``.

    Case ids are the file names without suffix (``volume-7``, ``test-volume-3``);
    training volumes come first in natural order, then the test volumes. A
    volume without its ``segmentation-N`` gets ``None``; a number found twice
    (``.nii`` and ``.nii.gz``) keeps the first in natural path order.
    """
    root = _check_root(root)
    volumes: dict[tuple[bool, int], Path] = {}
    segmentations: dict[int, Path] = {}
    for p in _nifti_files(root):
        if m := _LITS_VOLUME.match(p.name):
            key = (m.group(1) is not None, int(m.group(2)))
            if key in volumes:
                log.warning("LiTS: %s duplicates %s; keeping the first", p, volumes[key])
                continue
            volumes[key] = p
        elif m := _LITS_SEGMENTATION.match(p.name):
            n = int(m.group(1))
            if n in segmentations:
                log.warning("LiTS: %s duplicates %s; keeping the first", p, segmentations[n])
                continue
            segmentations[n] = p
    pairs: list[NiftiPair] = []
    for (is_test, n), image in sorted(volumes.items()):
        mask = None if is_test else segmentations.get(n)
        pairs.append((strip_nifti_suffix(image.name), image, mask))
    return pairs


def _msd_task(root: Path) -> Path | None:
    """The folder holding ``imagesTr``/``imagesTs``: ``root`` or one direct sub-folder."""
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        return root
    for child in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if child.is_dir() and not _is_junk(child) and (child / "imagesTr").is_dir():
            return child
    return None


def _msd_label(labels: Path, image: Path) -> Path | None:
    if not labels.is_dir():
        return None
    candidates = [image.name, strip_nifti_suffix(image.name) + ".nii", strip_nifti_suffix(image.name) + ".nii.gz"]
    stem = strip_nifti_suffix(image.name)
    if _NNUNET_CHANNEL.search(stem):  # nnU-Net naming: liver_001_0000.nii.gz -> liver_001.nii.gz
        base = _NNUNET_CHANNEL.sub("", stem)
        candidates += [base + ".nii.gz", base + ".nii"]
    for name in candidates:
        if (labels / name).is_file():
            return labels / name
    return None


def _msd_case_id(image: Path) -> str:
    return _NNUNET_CHANNEL.sub("", strip_nifti_suffix(image.name))


def find_msd(root: Path) -> list[NiftiPair]:
    """``(case_id, image, label or None)`` for MSD Task03_Liver under ``root``.

    Training images (``imagesTr``, labels from ``labelsTr`` by file name) come
    first in natural order, then the test images (``imagesTs``, label ``None``
    unless a ``labelsTs`` folder has one). Case ids are the file names without
    suffix (``liver_3``). ``._`` files are ignored.
    """
    root = _check_root(root)
    task = _msd_task(root)
    if task is None:
        return []
    pairs: list[NiftiPair] = []
    seen: set[str] = set()
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        folder = task / images
        if not folder.is_dir():
            continue
        for image in _nifti_files(folder, depth=0):
            case_id = _msd_case_id(image)
            if case_id in seen:
                log.warning("MSD: %s duplicates case %s; skipped", image, case_id)
                continue
            seen.add(case_id)
            pairs.append((case_id, image, _msd_label(task / labels, image)))
    return pairs


def is_msd_root(root: Path) -> bool:
    """True when ``root`` is a folder holding ``imagesTr``/``imagesTs`` itself or in one sub-folder."""
    root = Path(root)
    return root.is_dir() and _msd_task(root) is not None


def detect_nifti_set(root: Path) -> str | None:
    """``"msd"``, ``"lits"`` or ``None`` for a folder (``None`` also for a file or a missing path)."""
    root = Path(root)
    if not root.is_dir():
        return None
    if is_msd_root(root):
        return "msd"
    if any(_LITS_VOLUME.match(p.name) for p in _nifti_files(root)):
        return "lits"
    return None
