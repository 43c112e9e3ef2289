"""Reading and writing volumes: NIfTI, NRRD and MetaImage files, and folders of PNG/JPG slices.

Everything is read into a :class:`~liverrt.data.volume.Volume` in liverrt's
axis convention (see that module). NRRD (``.nrrd``, ``.nhdr``) and MetaImage
(``.mha``, ``.mhd``) files are read with SimpleITK and given the affine a
NIfTI of the same data would have (ITK's LPS origin, direction and spacing,
turned into NIfTI's RAS affine as ITK's own NIfTI writer does); from there
they go through the same reorientation, checks and readers as NIfTI (the
``*_nifti`` readers below take all six suffixes). Writers are atomic and
replace only what liverrt wrote (:mod:`liverrt.atomic`): an interrupted run
never leaves a half-written output behind, and no input or user file is
overwritten.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from liverrt.atomic import atomic_dir, atomic_path
from liverrt.data.volume import (
    LPS_TO_RAS,
    Volume,
    check_affine,
    check_finite_labels,
    check_label_map,
    default_affine,
    finite_image,
)
from liverrt.errors import InputError

_log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")  # NRRD and MetaImage, read with SimpleITK
VOLUME_SUFFIXES = (".nii.gz", ".nii", *ITK_SUFFIXES)  # in the order a case folder's files are looked for
LPS = ("L", "P", "S")


def natural_key(text: str) -> list[object]:
    """Sort key that orders ``image2`` before ``image10``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def is_volume_file(path: Path) -> bool:
    """A NIfTI, NRRD or MetaImage file (by suffix): what the ``*_nifti`` readers take."""
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _strip(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in sorted(suffixes, key=len, reverse=True):  # .nii.gz before .nii
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def strip_nifti_suffix(name: str) -> str:
    return _strip(name, NIFTI_SUFFIXES)


def strip_volume_suffix(name: str) -> str:
    """``ct.nii.gz``, ``ct.nrrd``, ``ct.mha``... -> ``ct``."""
    return _strip(name, VOLUME_SUFFIXES)


def _format_name(path: Path) -> str:
    """``NIfTI``, ``NRRD`` or ``MetaImage``, by suffix (for messages)."""
    name = Path(path).name.lower()
    if name.endswith((".nrrd", ".nhdr")):
        return "NRRD"
    return "MetaImage" if name.endswith((".mha", ".mhd")) else "NIfTI"


def list_slice_images(folder: Path) -> list[Path]:
    """PNG/JPG files of a folder in natural order of their stems."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.stem))


# ----------------------------------------------------------------------------- NIfTI, NRRD, MetaImage


@dataclass(frozen=True, eq=False)
class NiftiData:
    """A volume file in liverrt's convention plus what it takes to write results back in the source's.

    ``to_source`` is the nibabel orientation transform from the LPS-ordered
    ``(w, h, d)`` array back to the file's voxel order; ``source_affine`` is
    the file's own affine (for NRRD and MetaImage: the NIfTI affine of its
    voxel order, so a NIfTI written with it matches the file voxel for voxel).
    """

    array: np.ndarray  # (D, H, W)
    affine: np.ndarray  # of the LPS-ordered (w, h, d) array
    spacing: tuple[float, float, float]
    source_affine: np.ndarray
    to_source: np.ndarray
    descrip: bytes = b""


def load_nifti(path: Path) -> NiftiData:
    """Read a NIfTI, NRRD or MetaImage file, reoriented to liverrt's convention (see :mod:`liverrt.data.volume`).

    2D images become one slice; 4D images with a single volume are accepted.
    Any failure to read becomes an :class:`InputError` naming the file, and so
    does an affine that is non-finite or singular (zero voxel size). The voxel
    values are returned as stored: :func:`read_nifti_volume` handles NaN/Inf.
    """
    path = Path(path)
    if path.name.lower().endswith(ITK_SUFFIXES):
        data, affine, descrip = *_read_itk(path), b""
    else:
        data, affine, descrip = _read_nib(path)
    what = f"{_format_name(path)} file {path}"
    if data.dtype.kind not in "biuf":
        raise InputError(f"{what}: got voxel type {data.dtype}, expected grey-scale numbers (not RGB).")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3 or data.size == 0:
        raise InputError(f"{what}: got shape {data.shape}, expected a non-empty 3D volume.")
    affine = check_affine(affine, what)
    try:
        current = nib.orientations.io_orientation(affine)
        target = nib.orientations.axcodes2ornt(LPS)
        transform = nib.orientations.ornt_transform(current, target)
        lps = nib.orientations.apply_orientation(data, transform)
        lps_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    except Exception as exc:
        raise InputError(
            f"{what}: unusable orientation in its affine ({_one_line(exc)}); expected a valid voxel-to-world "
            "matrix."
        ) from exc
    zooms = np.sqrt((lps_affine[:3, :3] ** 2).sum(axis=0))  # column norms = voxel size per (w, h, d)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return NiftiData(
        array=np.ascontiguousarray(lps.transpose(2, 1, 0)),
        affine=lps_affine,
        spacing=spacing,
        source_affine=np.asarray(affine, dtype=float),
        to_source=nib.orientations.ornt_transform(target, current),
        descrip=descrip,
    )


def _read_nib(path: Path) -> tuple[np.ndarray, np.ndarray, bytes]:
    """A NIfTI file's voxels in stored order, its affine and its ``descrip``."""
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(f"Cannot read NIfTI file {path}: {_one_line(exc)}. Expected a valid .nii/.nii.gz file.") from exc
    descrip = bytes(np.asarray(img.header.get("descrip", b"")).tobytes()).rstrip(b"\x00") \
        if hasattr(img, "header") else b""
    return data, img.affine, descrip


def _sitk():
    import SimpleITK  # ~0.5 s to import: loaded only when an NRRD or MetaImage file is read

    return SimpleITK


def _itk_error(exc: BaseException) -> str:
    """SimpleITK's message on one line: what follows ``ERROR:`` (not the C++ source location), without the
    reader's object address, its first line and its last (the innermost cause of a chain such as NRRD's)."""
    text = str(exc).rsplit("ERROR:", 1)[-1]
    lines = [re.sub(r"^\w+\(0x[0-9a-f]+\):\s*|^\[\w+\]\s*", "", line.strip()) for line in text.splitlines()]
    lines = [line for line in lines if line] or [str(exc)]
    text = _one_line(" ".join(dict.fromkeys((lines[0], lines[-1]))))
    return text if len(text) <= 240 else text[:237] + "..."


def _itk_read(path: Path, header_only: bool):
    """SimpleITK's reader after ``Execute`` (whole image) or ``ReadImageInformation`` (header only).

    ITK's own warnings (printed by C++ to the terminal) are silenced while it reads:
    what matters comes back as an :class:`InputError`.
    """
    sitk = _sitk()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        image = reader.ReadImageInformation() if header_only else reader.Execute()
    except Exception as exc:  # SimpleITK raises RuntimeError with ITK's multi-line text
        suffixes = ".nrrd/.nhdr" if _format_name(path) == "NRRD" else ".mha/.mhd"
        raise InputError(f"Cannot read {_format_name(path)} file {path}: {_itk_error(exc)}. Expected a valid "
                         f"{suffixes} file.") from exc
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)
    return reader if header_only else image


def _itk_affine(dimension: int, spacing, origin, direction) -> np.ndarray:
    """The NIfTI (RAS) affine of an ITK image's voxel grid ``(i, j, k)``, from its LPS spacing, origin and direction.

    A 2D image gets a third axis of 1 mm along z; a 4D image keeps its first three axes.
    """
    n = min(dimension, 3)
    rotation, size, shift = np.eye(3), np.ones(3), np.zeros(3)
    rotation[:n, :n] = np.reshape(np.asarray(direction, float), (dimension, dimension))[:n, :n]
    size[:n] = np.asarray(spacing, float)[:n]
    shift[:n] = np.asarray(origin, float)[:n]
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ rotation @ np.diag(size)
    affine[:3, 3] = LPS_TO_RAS @ shift
    return affine


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An NRRD or MetaImage file's voxels in ITK index order ``(i, j, k)`` and their NIfTI affine."""
    sitk = _sitk()
    image = _itk_read(path, header_only=False)
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise InputError(f"{_format_name(path)} file {path}: got {components} values per voxel "
                         f"({image.GetPixelIDTypeAsString()}), expected grey-scale numbers (not RGB).")
    data = sitk.GetArrayFromImage(image)  # ITK index order reversed: (k, j, i)
    data = data.transpose(tuple(range(data.ndim))[::-1])
    return data, _itk_affine(image.GetDimension(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def _header_affine(path: Path) -> np.ndarray:
    """A volume file's affine from its header alone (NIfTI: nibabel's; NRRD/MetaImage: as :func:`_read_itk`)."""
    if path.name.lower().endswith(ITK_SUFFIXES):
        reader = _itk_read(path, header_only=True)
        return _itk_affine(reader.GetDimension(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    try:
        return nib.load(str(path)).affine
    except Exception as exc:
        raise InputError(f"Cannot read NIfTI header of {path}: {_one_line(exc)}. Expected a valid .nii/.nii.gz file.") from exc


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line (nibabel's messages may span several)."""
    return " ".join(str(exc).split())


def read_nifti(path: Path, *, labels: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """``(array (D, H, W), affine 4x4, spacing (dz, dy, dx))`` of a NIfTI, NRRD or MetaImage file, reoriented to LPS.

    ``labels=True`` reads a label map (a mask): any NaN/Inf value is refused,
    and so is an image (see :func:`~liverrt.data.volume.check_label_map`).
    The values are otherwise returned as stored.
    """
    d = load_nifti(path)
    if labels:
        what = f"{_format_name(path)} mask {path}"
        check_finite_labels(d.array, what)
        check_label_map(d.array, what)
    return d.array, d.affine, d.spacing


def nifti_spacing(path: Path) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` of a NIfTI, NRRD or MetaImage file in liverrt's axis order, from the header alone."""
    path = Path(path)
    affine = check_affine(_header_affine(path), f"{_format_name(path)} file {path}")
    ornt = nib.orientations.io_orientation(affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # voxel size along each stored axis
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


def write_mask_nifti(volume: Volume, mask: np.ndarray, path: Path) -> Path:
    """A ``(D, H, W)`` mask of ``volume`` as NIfTI: for a NIfTI source in the file's own voxel order and
    affine (it overlays the CT voxel for voxel), otherwise on the volume's affine."""
    if volume.to_source is not None:
        return write_nifti(mask, volume.source_affine, path, to_source=volume.to_source)
    return write_nifti(mask, volume.affine, path)


def read_nifti_volume(image_path: Path, mask_path: Path | None = None, *, case_id: str | None = None) -> Volume:
    """A volume from a NIfTI (or NRRD, MetaImage) image and an optional label map (liver = label > 0).

    Images are HU unless liverrt wrote them as 8-bit (NIfTI ``descrip`` marker).
    Non-finite voxels follow :func:`~liverrt.data.volume.finite_image`: an image
    with no finite voxel is refused; otherwise NaN and -Inf become the image's
    finite minimum and +Inf its finite maximum, with a warning naming the file.
    A mask with any NaN/Inf value is refused. A non-finite or singular affine
    is refused (see :func:`load_nifti`).
    """
    src = load_nifti(image_path)
    image = finite_image(src.array, f"{_format_name(image_path)} file {image_path}")
    affine, spacing = src.affine, src.spacing
    mask = None
    if mask_path is not None:
        labels, mask_affine, _ = read_nifti(mask_path, labels=True)
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
        case_id=case_id or strip_volume_suffix(Path(image_path).name),
        source=str(image_path),
        source_affine=src.source_affine,
        to_source=src.to_source,
    )


# ----------------------------------------------------------------------------- PNG/JPG slices


def read_slice_image(path: Path, *, as_mask: bool = False) -> np.ndarray:
    """One 8/16-bit PNG/JPG slice as a 2D array.

    Conversions, by PIL image mode (anything else raises :class:`InputError` naming the file):

    * ``L``, ``I;16``, ``I``: grey, as stored;
    * ``1`` (1-bit): 0 and 255;
    * ``P``/``PA`` (palette): converted through the palette to RGB (RGBA if the
      palette has transparency), never read as palette indices; then the RGB rules;
    * ``LA``/``RGBA``: the alpha channel is dropped when every pixel is fully
      opaque; any transparent pixel refuses the file;
    * ``RGB``: equal channels are grey; unequal channels are refused, except for
      JPEG images (not masks), which become the channel mean (JPEG compression
      makes the channels of a grey slice differ slightly);
    * ``CMYK`` (JPEG): converted to RGB by PIL, then to grey by the RGB rules,
      with a warning naming the file.

    Masks come back as bool (JPEG masks thresholded at 128, PNG masks at > 0).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("P", "PA"):
                im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
            elif mode == "CMYK":
                im = im.convert("RGB")
            elif mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as exc:
        raise InputError(f"Cannot read image {path}: {_one_line(exc)}. Expected a PNG or JPG slice.") from exc
    if mode == "CMYK":
        _log.warning("Image %s is CMYK: converted to RGB, then to grey (mean of the channels where they differ).",
                     path)
    if arr.ndim == 2 and arr.dtype.kind in "biu":
        pass
    elif arr.ndim == 3 and arr.shape[2] in (2, 4) and arr.dtype == np.uint8:  # grey or colour + alpha
        alpha = arr[..., -1]
        if not (alpha == 255).all():
            raise InputError(
                f"Image {path} ({mode}) has {int((alpha < 255).sum())} transparent pixels; expected an opaque "
                "slice (no alpha channel, or alpha 255 everywhere)."
            )
        arr = arr[..., :-1]
    elif not (arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8):
        raise InputError(
            f"Image {path} has PIL mode {mode!r} (array {arr.shape} {arr.dtype}); expected a grey, RGB(A), "
            "palette or CMYK slice."
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3:
        rgb = arr
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            if not as_mask and path.suffix.lower() in (".jpg", ".jpeg"):
                rgb = np.round(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8)[..., None]
            else:
                what = "palette colours" if mode in ("P", "PA") else "colour channels"
                raise InputError(
                    f"{'Mask' if as_mask else 'Image'} {path} ({mode}) has different {what} in "
                    f"{int((rgb != rgb[..., :1]).any(axis=2).sum())} pixels; expected a grey-scale "
                    f"{'mask (0 background, > 0 liver)' if as_mask else 'slice'}."
                )
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
