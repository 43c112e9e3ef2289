"""Reading and writing volumes: NIfTI files and folders of PNG/JPG slices.

Everything is read into a :class:`~liverrt.data.volume.Volume` in liverrt's
axis convention (see that module). Writers are atomic: they write to a
temporary file next to the target and rename it, so an interrupted run never
leaves a half-written output behind, and they refuse to overwrite their input.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from liverrt.data.volume import Volume, default_affine
from liverrt.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
LPS = ("L", "P", "S")


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``image2`` before ``image10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_slice_images(folder: Path) -> list[Path]:
    """PNG/JPG files of a folder in natural order of their stems."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.stem))


# ----------------------------------------------------------------------------- NIfTI


@dataclass(frozen=True, eq=False)
class NiftiData:
    """A NIfTI volume in liverrt's convention plus what it takes to write results back in the source's.

    ``to_source`` is the nibabel orientation transform from the LPS-ordered
    ``(w, h, d)`` array back to the file's voxel order; ``source_affine`` is
    the file's own affine.
    """

    array: np.ndarray  # (D, H, W)
    affine: np.ndarray  # of the LPS-ordered (w, h, d) array
    spacing: tuple[float, float, float]
    source_affine: np.ndarray
    to_source: np.ndarray
    descrip: bytes = b""


def load_nifti(path: Path) -> NiftiData:
    """Read a NIfTI file, reoriented to liverrt's convention (see :mod:`liverrt.data.volume`).

    2D images become one slice; 4D images with a single volume are accepted.
    Any failure to read becomes an :class:`InputError` naming the file.
    """
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"Cannot read NIfTI file {path}: {exc}. Expected a valid .nii/.nii.gz file.") from exc
    if data.dtype.kind not in "biuf":
        raise InputError(f"NIfTI file {path}: got voxel type {data.dtype}, expected grey-scale numbers (not RGB).")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or data.size == 0:
        raise InputError(f"NIfTI file {path}: got shape {data.shape}, expected a non-empty 3D volume.")
    try:
        affine = img.affine
        current = nib.orientations.io_orientation(affine)
        target = nib.orientations.axcodes2ornt(LPS)
        transform = nib.orientations.ornt_transform(current, target)
        lps = nib.orientations.apply_orientation(data, transform)
        lps_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    except Exception as exc:
        raise InputError(f"NIfTI file {path}: unusable orientation in its affine ({exc}).") from exc
    zooms = np.sqrt((lps_affine[:3, :3] ** 2).sum(axis=0))  # column norms = voxel size per (w, h, d)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return NiftiData(
        array=np.ascontiguousarray(lps.transpose(2, 1, 0)),
        affine=lps_affine,
        spacing=spacing,
        source_affine=np.asarray(affine, dtype=float),
        to_source=nib.orientations.ornt_transform(target, current),
        descrip=bytes(np.asarray(img.header.get("descrip", b"")).tobytes()).rstrip(b"\x00")
        if hasattr(img, "header") else b"",
    )


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(array (D, H, W), affine 4x4, spacing (dz, dy, dx))`` of a NIfTI file, reoriented to LPS."""
    d = load_nifti(path)
    return d.array, d.affine, d.spacing


def nifti_spacing(path: Path) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` of a NIfTI file in liverrt's axis order, from the header alone."""
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise InputError(f"Cannot read NIfTI header of {path}: {exc}. Expected a valid .nii/.nii.gz file.") from exc
    ornt = nib.orientations.io_orientation(img.affine)
    zooms = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))  # voxel size along each stored axis
    by_axis = {int(ornt[i, 0]): float(zooms[i]) for i in range(3)}  # world axis (x, y, z) -> size
    return by_axis[2], by_axis[1], by_axis[0]


#: NIfTI ``descrip`` marker of 8-bit (already windowed) images written by liverrt
DESCRIP_8BIT = b"liverrt intensity=8bit"


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, *, protect: tuple[Path, ...] = (),
                to_source: np.ndarray | None = None, intensity: str = "hu") -> Path:
    """Write a ``(D, H, W)`` array as NIfTI (atomic).

    Without ``to_source``, ``affine`` belongs to the LPS-ordered array (a
    Volume's ``affine``). With it (a Volume's ``to_source``), the array is put
    back into the source file's voxel order and ``affine`` must be the source's
    own affine: the output then matches the source file voxel for voxel.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    data = array.transpose(2, 1, 0)
    if to_source is not None:
        data = nib.orientations.apply_orientation(data, to_source)
    img = nib.Nifti1Image(np.ascontiguousarray(data), np.asarray(affine, dtype=float))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if intensity == "8bit":
        img.header["descrip"] = DESCRIP_8BIT
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    with atomic_path(path, suffix=suffix, protect=protect) as tmp:
        nib.save(img, str(tmp))
    return path


def read_nifti_volume(image_path: Path, mask_path: Path | None = None, *, case_id: str | None = None) -> Volume:
    """A volume from a NIfTI image and an optional NIfTI label map (liver = label > 0).

    Images are HU unless liverrt wrote them as 8-bit (``descrip`` marker).
    """
    src = load_nifti(image_path)
    image, affine, spacing = src.array, src.affine, src.spacing
    mask = None
    if mask_path is not None:
        labels, mask_affine, _ = read_nifti(mask_path)
        if labels.shape != image.shape:
            raise InputError(
                f"Mask {mask_path} has shape {labels.shape} after reorientation, expected the image's "
                f"{image.shape} ({image_path})."
            )
        if not np.allclose(mask_affine, affine, atol=1e-3):
            raise InputError(f"Mask {mask_path} and image {image_path} have different affines; expected the same geometry.")
        mask = labels > 0
    return Volume(
        image=image,
        spacing=spacing,
        affine=affine,
        intensity="8bit" if src.descrip == DESCRIP_8BIT else "hu",
        mask=mask,
        case_id=case_id or strip_nifti_suffix(Path(image_path).name),
        source=str(image_path),
        source_affine=src.source_affine,
        to_source=src.to_source,
    )


# ----------------------------------------------------------------------------- PNG/JPG slices


def read_slice_image(path: Path, *, as_mask: bool = False) -> np.ndarray:
    """One 8/16-bit PNG/JPG slice as a 2D array; RGB with equal channels is accepted.

    Masks come back as bool (JPEG masks thresholded at 128, PNG masks at > 0).
    """
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:
        raise InputError(f"Cannot read image {path}: {exc}. Expected a PNG or JPG slice.") from exc
    if arr.ndim == 3:
        rgb = arr[..., :3]
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            if not as_mask and path.suffix.lower() in (".jpg", ".jpeg"):
                rgb = np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)[..., None]
            else:
                raise InputError(f"Image {path} has different colour channels; expected a grey-scale slice.")
        arr = rgb[..., 0]
    if as_mask:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            return arr >= 128
        return arr > 0
    return arr


def stack_slice_images(files: list[Path]) -> np.ndarray:
    """Grey slices of one shape as a ``(D, H, W)`` uint8 stack.

    16-bit slices are scaled to 0..255 by the stack's own maximum (kept as
    8-bit intensities); a slice of another shape raises, naming it.
    """
    slices = [read_slice_image(p) for p in files]
    shape = slices[0].shape
    for p, s in zip(files, slices, strict=True):
        if s.shape != shape:
            raise InputError(f"Slice {p} has shape {s.shape}, expected {shape} like {files[0].name}.")
    image = np.stack(slices)
    if image.dtype != np.uint8:
        hi = float(image.max()) or 1.0
        image = np.round(image.astype(np.float32) * (255.0 / hi)).astype(np.uint8)
    return image


def read_slice_folder(
    images: Path, masks: Path | None = None, *, case_id: str | None = None
) -> Volume:
    """A folder of PNG/JPG slices (natural sort order) as one 8-bit volume.

    Masks are matched by file stem; a slice without a mask raises, since a
    partly labelled folder cannot be evaluated slice by slice.
    """
    images = Path(images)
    files = list_slice_images(images) if images.is_dir() else []
    if not files:
        raise InputError(f"No PNG/JPG slices found in {images}; expected a folder of slice images.")
    image = stack_slice_images(files)
    shape = image.shape[1:]
    intensity = "8bit"
    mask = None
    if masks is not None:
        by_stem = {p.stem: p for p in list_slice_images(Path(masks))}
        missing = [p.name for p in files if p.stem not in by_stem]
        if missing:
            raise InputError(
                f"{len(missing)} slices in {images} have no mask in {masks} (first: {missing[0]}); "
                "expected one mask per image with the same file stem."
            )
        mask_slices = [read_slice_image(by_stem[p.stem], as_mask=True) for p in files]
        for p, m in zip(files, mask_slices, strict=True):
            if m.shape != shape:
                raise InputError(f"Mask for {p.name} has shape {m.shape}, expected the image's {shape}.")
        mask = np.stack(mask_slices)
    spacing = (1.0, 1.0, 1.0)
    return Volume(
        image=image,
        spacing=spacing,
        affine=default_affine(spacing),
        intensity=intensity,
        mask=mask,
        slice_names=tuple(p.stem for p in files),
        case_id=case_id or images.name,
        source=str(images),
    )


def write_png_slices(
    array: np.ndarray, folder: Path, names: tuple[str, ...], *, scale_mask: bool = True
) -> Path:
    """Write a ``(D, H, W)`` stack as one PNG per slice named by ``names``.

    Bool masks are written as 0/255 (``scale_mask``) so they are visible in any
    viewer; uint8 images are written as they are. The folder is filled in a
    temporary sibling and renamed into place, so it appears complete or not at all.
    """
    folder = Path(folder)
    if len(names) != array.shape[0]:
        raise ValueError(f"got {len(names)} names for {array.shape[0]} slices")
    with atomic_dir(folder) as tmp:
        for name, sl in zip(names, array, strict=True):
            if sl.dtype == bool:
                sl = sl.astype(np.uint8) * (255 if scale_mask else 1)
            Image.fromarray(np.ascontiguousarray(sl)).save(tmp / f"{name}.png")
    return folder


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- atomic writes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def set_default_mode(path: Path) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give outputs the usual umask-based mode."""
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


def refuse_overwriting_inputs(path: Path, inputs: tuple[Path, ...] | list[Path]) -> None:
    """Raise :class:`InputError` if ``path`` exists and is, or lies inside, one of ``inputs``."""
    path = Path(path)
    if not path.exists():
        return
    target = path.resolve()
    for p in inputs:
        p = Path(p)
        if p.exists() and (target == p.resolve() or p.resolve() in target.parents):
            raise InputError(f"Refusing to overwrite {path}: it belongs to the input {p}; choose another output path.")


@contextlib.contextmanager
def atomic_path(path: Path, *, suffix: str = "", protect: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    ``protect`` lists input files that must never be overwritten: writing onto
    one of them raises :class:`InputError` before anything is written.
    """
    path = Path(path)
    refuse_overwriting_inputs(path, protect)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp" if not suffix else suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(folder: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``folder`` in one rename.

    The folder appears complete or not at all: on any error the temporary
    folder is removed and an existing ``folder`` is left untouched.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        yield tmp
        set_default_mode(tmp)
        if folder.exists():
            _remove_tree(folder)
        os.replace(tmp, folder)
    except BaseException:
        _remove_tree(tmp)
        raise


def write_bytes_atomic(data: bytes, path: Path, *, protect: tuple[Path, ...] = ()) -> Path:
    with atomic_path(path, protect=protect) as tmp:
        tmp.write_bytes(data)
    return path


def write_text_atomic(text: str, path: Path, *, protect: tuple[Path, ...] = ()) -> Path:
    return write_bytes_atomic(text.encode("utf-8"), path, protect=protect)
