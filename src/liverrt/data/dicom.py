"""DICOM CT series (one folder, one series) and the CHAOS CT case layout.

A series is read into a :class:`~liverrt.data.volume.Volume` in liverrt's axis
convention (see that module): whatever the stored orientation, the array ends
up with columns toward the patient's left, rows toward posterior and slices
toward superior, and ``affine`` maps ``(w, h, d)`` to RAS+ millimetres exactly
as a NIfTI converter would. The reorientation is nibabel's (the same code
path as :func:`liverrt.data.io.load_nifti`), applied to the series' native
voxel grid: pixel ``(r, c)`` of a slice lies at
``ImagePositionPatient + c * dx * IOP[:3] + r * dy * IOP[3:]`` (LPS).

Readers return ``(volume, warnings)``: geometry problems that still leave a
usable volume (missing slices, duplicates, gantry tilt) become warning
strings for the caller to log or show; problems that do not (mixed series,
unequal slice sizes, undecodable pixels) raise :class:`InputError`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from liverrt.data.io import natural_key, read_slice_image
from liverrt.data.volume import Volume
from liverrt.errors import InputError

LPS = ("L", "P", "S")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
GAP_TOLERANCE = 0.1  # a gap differing by more than 10 % from the median is reported
TILT_TOLERANCE_DEG = 0.1
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def dicom_stem(path: Path) -> str:
    """File name without a DICOM suffix (``IM1.dcm`` -> ``IM1``); UID-like names (``1.2.3``) stay whole."""
    name = path.name
    for suffix in DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ----------------------------------------------------------------------------- scanning


def _dcmread(path: Path, *, with_pixels: bool) -> object | None:
    """The dataset of ``path``, or None for a non-DICOM (or unreadable) file.

    Files without the 128-byte preamble and ``DICM`` prefix (old exports) are
    retried with ``force=True`` and kept only if they parse as an image.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not with_pixels)
    except InvalidDicomError:
        pass
    except Exception:  # damaged files raise many types; they are reported as gaps if they were slices
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=not with_pixels, force=True)
        return ds if "ImagePositionPatient" in ds and "Rows" in ds else None
    except Exception:
        return None


def _scan_folder(folder: Path, *, with_pixels: bool) -> tuple[list[tuple[Path, object]], int]:
    """DICOM image objects of ``folder`` in natural file-name order, and how many DICOM objects were not images.

    Non-DICOM files are skipped silently. An image object has
    ImagePositionPatient and (``with_pixels``) PixelData; a SEG, a report or an
    enhanced multi-frame object has no top-level position and is not one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist; expected a folder with one DICOM series.")
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: natural_key(p.name))
    images: list[tuple[Path, object]] = []
    others = 0
    for path in files:
        ds = _dcmread(path, with_pixels=with_pixels)
        if ds is None:
            continue
        has_pixels = "PixelData" in ds if with_pixels else True
        if "ImagePositionPatient" in ds and has_pixels:
            images.append((path, ds))
        else:
            others += 1
    return images, others


def _require_one_series(folder: Path, slices: list[tuple[Path, object]]) -> None:
    series = Counter(str(ds.get("SeriesInstanceUID", "")) for _, ds in slices)
    if len(series) <= 1:
        return
    desc = {}
    for _, ds in slices:
        desc.setdefault(str(ds.get("SeriesInstanceUID", "")), str(ds.get("SeriesDescription", "") or ""))
    listing = ", ".join(
        f"{uid or '<no UID>'} {desc[uid]!r} ({n} files)" for uid, n in series.most_common()
    )
    raise InputError(
        f"{folder} mixes {len(series)} DICOM series ({listing}); expected one series per folder "
        "(mixed series: move each series into its own folder)."
    )


def _orientation(ds: object, path: Path) -> np.ndarray:
    """ImageOrientationPatient as a (6,) array of two unit vectors."""
    iop = np.asarray(ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)  # type: ignore[attr-defined]
    if iop.shape != (6,) or np.linalg.norm(iop[:3]) < 1e-6 or np.linalg.norm(iop[3:]) < 1e-6:
        raise InputError(f"{path}: ImageOrientationPatient {list(iop)} is not two direction vectors; expected 6 numbers.")
    return np.concatenate([iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])])


def _slice_positions(slices: list[tuple[Path, object]]) -> tuple[np.ndarray, np.ndarray]:
    """Unit slice normal (LPS) and each slice's ImagePositionPatient projected on it."""
    iop = _orientation(slices[0][1], slices[0][0])
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    positions = np.array([float(normal @ np.asarray(ds.ImagePositionPatient, dtype=float)) for _, ds in slices])
    return normal, positions


def series_spacing(folder: Path) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in mm of the one image series in ``folder``.

    Files are taken in sorted file-name order (any names, with or without
    ``.dcm``); non-DICOM files and objects without ImagePositionPatient and
    PixelSpacing (a DICOM SEG, a report) are ignored. ``dy, dx`` come from
    PixelSpacing (row, column spacing). Slices are ordered by their
    ImagePositionPatient along the slice normal (file names need not follow
    position); ``dz`` is the distance between the first and the last position
    divided by the number of gaps, and gaps that differ by more than 10 % are
    refused (missing slices). A single slice uses SpacingBetweenSlices or
    SliceThickness. Reads headers only.
    """
    folder = Path(folder)
    found, _ = _scan_folder(folder, with_pixels=False) if folder.is_dir() else ([], 0)
    slices = [(p, ds) for p, ds in found if "PixelSpacing" in ds]
    if not slices:
        raise InputError(f"No DICOM image slices in {folder}; expected files with ImagePositionPatient and PixelSpacing.")
    _require_one_series(folder, slices)
    dy, dx = (float(v) for v in slices[0][1].PixelSpacing)
    if len(slices) == 1:
        ds = slices[0][1]
        dz = float(ds.get("SpacingBetweenSlices", ds.get("SliceThickness", 0)) or 0)
        if dz <= 0:
            raise InputError(f"{slices[0][0]}: a single slice without SliceThickness; expected a slice spacing.")
        return dz, dy, dx
    _, positions = _slice_positions(slices)
    positions = np.sort(positions)
    gaps = np.diff(positions)
    dz = float(positions[-1] - positions[0]) / (len(slices) - 1)
    if dz <= 0 or gaps.min() <= 0:
        raise InputError(f"{folder}: two slices share one position; expected a stack of distinct slices.")
    if np.abs(gaps - dz).max() > GAP_TOLERANCE * dz:
        raise InputError(
            f"{folder}: uneven slice gaps ({gaps.min():.3g}..{gaps.max():.3g} mm); expected evenly spaced slices "
            "(missing slices?). Give --spacing explicitly."
        )
    return dz, dy, dx


# ----------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    """How the name-ordered slices become an LPS volume.

    ``order``: indices into the name-ordered slices, ascending along the slice
    normal (duplicates dropped); ``transform``: nibabel orientation transform
    from the native ``(c, r, k)`` grid to LPS; ``affine``: of the LPS array;
    ``spacing``: ``(dz, dy, dx)`` of the LPS array.
    """

    order: np.ndarray
    transform: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    slice_axis_is_d: bool
    slice_flipped: bool


def _series_geometry(folder: Path, slices: list[tuple[Path, object]], warnings: list[str]) -> _Geometry:
    names = [p.name for p, _ in slices]
    first_path, first = slices[0]
    iop = _orientation(first, first_path)
    for path, ds in slices[1:]:
        if not np.allclose(_orientation(ds, path), iop, atol=1e-3):
            raise InputError(
                f"{path}: ImageOrientationPatient differs from {first_path.name}'s; expected one orientation per series."
            )
    if "PixelSpacing" in first:
        dy, dx = (float(v) for v in first.PixelSpacing)
    else:
        dy = dx = 1.0
        warnings.append(f"{folder}: no PixelSpacing in {first_path.name}; assumed 1.0 mm pixels.")
    for path, ds in slices[1:]:
        if "PixelSpacing" in ds and not np.allclose([float(v) for v in ds.PixelSpacing], [dy, dx], rtol=1e-3):
            raise InputError(f"{path}: PixelSpacing {list(ds.PixelSpacing)} differs from {first_path.name}'s {[dy, dx]}; "
                             "expected one pixel size per series.")
    normal, positions = _slice_positions(slices)
    ipp = np.array([np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds in slices])

    order = np.argsort(positions, kind="stable")  # ties keep file-name order
    keep = [int(order[0])]
    for i in order[1:]:
        i = int(i)
        if abs(positions[i] - positions[keep[-1]]) < 1e-3:
            warnings.append(
                f"{folder}: duplicate slice position {positions[i]:.3f} mm in {names[i]} and {names[keep[-1]]}; "
                f"kept {names[keep[-1]]}."
            )
            continue
        keep.append(i)
    order = np.asarray(keep, dtype=int)
    pos = positions[order]

    if len(order) == 1:
        dz = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 0)) or 0)
        if dz <= 0:
            dz = 1.0
            warnings.append(f"{folder}: a single slice without SliceThickness; assumed 1.0 mm.")
        step = normal * dz
    else:
        gaps = np.diff(pos)
        median = float(np.median(gaps))
        uneven = np.flatnonzero(np.abs(gaps - median) > GAP_TOLERANCE * median)
        if uneven.size:
            shown = ", ".join(
                f"{gaps[j]:.3g} mm between {names[order[j]]} and {names[order[j + 1]]}" for j in uneven[:3]
            )
            more = f" and {uneven.size - 3} more" if uneven.size > 3 else ""
            warnings.append(
                f"{folder}: uneven slice gaps ({shown}{more}); expected {median:.3g} mm (the median). "
                "Missing slices? The volume uses the median spacing, so positions past a gap are approximate."
            )
            dz = median
        else:
            dz = float(pos[-1] - pos[0]) / (len(order) - 1)
        travel = ipp[order[-1]] - ipp[order[0]]
        direction = travel / np.linalg.norm(travel)
        tilt = float(np.degrees(np.arccos(np.clip(abs(direction @ normal), 0.0, 1.0))))
        if tilt > TILT_TOLERANCE_DEG:
            warnings.append(
                f"{folder}: gantry tilt of {tilt:.2f} degrees (slice positions do not move along the slice normal); "
                "the affine keeps the sheared geometry, distances along slices are approximate."
            )
        step = direction * dz / abs(direction @ normal)  # moves dz along the normal per slice

    native = np.eye(4)  # voxel (c, r, k) -> RAS
    native[:3, 0] = _LPS_TO_RAS @ (iop[:3] * dx)
    native[:3, 1] = _LPS_TO_RAS @ (iop[3:] * dy)
    native[:3, 2] = _LPS_TO_RAS @ step
    native[:3, 3] = _LPS_TO_RAS @ ipp[order[0]]
    current = nib.orientations.io_orientation(native)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(LPS))
    rows, cols = int(first.Rows), int(first.Columns)
    affine = native @ nib.orientations.inv_ornt_aff(transform, (cols, rows, len(order)))
    native_spacing = (dx, dy, dz)  # per native axis (c, r, k)
    out = [0.0, 0.0, 0.0]
    for axis in range(3):
        out[int(transform[axis, 0])] = native_spacing[axis]
    return _Geometry(
        order=order,
        transform=transform,
        affine=affine,
        spacing=(out[2], out[1], out[0]),
        slice_axis_is_d=int(transform[2, 0]) == 2,
        slice_flipped=bool(transform[2, 1] < 0),
    )


def _to_lps(stack: np.ndarray, geometry: _Geometry) -> np.ndarray:
    """A ``(k, r, c)`` stack in geometric order -> the ``(D, H, W)`` LPS array."""
    lps = nib.orientations.apply_orientation(stack.transpose(2, 1, 0), geometry.transform)
    return np.ascontiguousarray(lps.transpose(2, 1, 0))


def _hu_slice(path: Path, ds: object) -> np.ndarray:
    try:
        pixels = ds.pixel_array  # type: ignore[attr-defined]
    except Exception as exc:  # missing decoder plugins raise several types
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(
            f"Cannot decode the pixels of {path} (transfer syntax {syntax}): {exc}. Expected uncompressed DICOM, "
            "or install a decoder (pip install pylibjpeg pylibjpeg-libjpeg)."
        ) from exc
    if pixels.ndim != 2:
        raise InputError(f"{path}: pixel data of shape {pixels.shape}; expected one grey-scale 2D slice.")
    slope = float(ds.get("RescaleSlope", 1) or 1)  # type: ignore[attr-defined]
    intercept = float(ds.get("RescaleIntercept", 0) or 0)  # type: ignore[attr-defined]
    return pixels.astype(np.float64) * slope + intercept


def _hu_stack(slices: list[tuple[Path, object]], order: np.ndarray) -> np.ndarray:
    """HU slices in ``order`` as one ``(k, r, c)`` array: int16 when every value is an integer in range, else float32.

    Filled slice by slice, so memory stays at the size of the result.
    """
    first = slices[int(order[0])][1]
    out = np.empty((len(order), int(first.Rows), int(first.Columns)), np.int16)  # type: ignore[attr-defined]
    for k, i in enumerate(order):
        hu = _hu_slice(*slices[int(i)])
        if out.dtype == np.int16 and not (
            np.all(hu == np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767
        ):
            out = out.astype(np.float32)
        out[k] = hu
    return out


@dataclass(frozen=True)
class _Series:
    volume: Volume
    geometry: _Geometry
    files: list[Path]  # name-ordered image files the geometry indexes
    slice_shape: tuple[int, int]  # (Rows, Columns) as stored


def _read_series(folder: Path, case_id: str | None, warnings: list[str]) -> _Series:
    folder = Path(folder)
    slices, others = _scan_folder(folder, with_pixels=True)
    if not slices:
        extra = f" ({others} DICOM objects without a slice position, e.g. SEG or multi-frame, were ignored)" if others else ""
        raise InputError(
            f"No DICOM image slices in {folder}{extra}; expected single-frame DICOM files with ImagePositionPatient "
            "and PixelData."
        )
    _require_one_series(folder, slices)
    first_path, first = slices[0]
    for path, ds in slices[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise InputError(
                f"{path}: {ds.Rows}x{ds.Columns} pixels, expected {first.Rows}x{first.Columns} like {first_path.name}."
            )
    modality = str(first.get("Modality", "CT") or "CT")
    if modality != "CT":
        warnings.append(f"{folder}: Modality is {modality}, not CT; values are rescaled as if they were HU.")
    geometry = _series_geometry(folder, slices, warnings)
    if str(first.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        warnings.append(f"{folder}: MONOCHROME1 pixels (white = low); values kept as stored after rescaling.")
    image = _to_lps(_hu_stack(slices, geometry.order), geometry)
    stems = [dicom_stem(slices[i][0]) for i in geometry.order]
    if geometry.slice_axis_is_d:
        names = tuple(reversed(stems)) if geometry.slice_flipped else tuple(stems)
    else:
        names = ()
        warnings.append(f"{folder}: the series is not axial; it was reoriented to axial slices (no per-file slice names).")
    volume = Volume(
        image=image,
        spacing=geometry.spacing,
        affine=geometry.affine,
        intensity="hu",
        slice_names=names,
        case_id=case_id or folder.name,
        source=str(folder),
    )
    return _Series(
        volume=volume,
        geometry=geometry,
        files=[p for p, _ in slices],
        slice_shape=(int(first.Rows), int(first.Columns)),
    )


def read_dicom_series(folder: Path, *, case_id: str | None = None) -> tuple[Volume, list[str]]:
    """The one DICOM CT series in ``folder`` as a HU volume, and warnings about its geometry.

    Any file names are accepted (with or without ``.dcm``); non-DICOM files
    and non-image objects (a DICOM SEG, a report) are ignored. Slices are
    ordered by ImagePositionPatient along the slice normal, not by file name.
    HU = stored value * RescaleSlope + RescaleIntercept, kept as int16 when
    integral, else float32. ``slice_names`` are the file names without a
    DICOM suffix, in the volume's (inferior to superior) order.

    Raises:
        InputError: no image slices, more than one series, slices of
            different sizes/orientations, or pixels that cannot be decoded.
    """
    warnings: list[str] = []
    series = _read_series(Path(folder), case_id, warnings)
    return series.volume, warnings


# ----------------------------------------------------------------------------- CHAOS


def read_chaos_case(case_dir: Path) -> tuple[Volume, list[str]]:
    """A CHAOS CT case: ``<id>/DICOM_anon/*.dcm`` plus ``<id>/Ground/liver_GT_NNN.png``.

    CHAOS pairs the i-th mask (sorted by name) with the i-th DICOM file in
    sorted file-name order, not in position order; the masks are therefore
    stacked in name order and then put through the same reordering and
    reorientation as the slices. A case without ``Ground/`` (the CHAOS test
    set) is read without a mask, with a warning.

    Raises:
        InputError: the DICOM folder is missing, or the masks do not match the
            slices in number or size.
    """
    case_dir = Path(case_dir)
    dicom_dir = case_dir / "DICOM_anon"
    if not dicom_dir.is_dir():
        raise InputError(f"CHAOS case {case_dir}: no DICOM_anon folder; expected <id>/DICOM_anon/*.dcm and <id>/Ground/*.png.")
    warnings: list[str] = []
    series = _read_series(dicom_dir, case_dir.name, warnings)
    volume = series.volume
    ground = case_dir / "Ground"
    mask_files = sorted(
        (p for p in ground.iterdir() if p.is_file() and p.suffix.lower() == ".png"), key=lambda p: natural_key(p.name)
    ) if ground.is_dir() else []
    if not mask_files:
        warnings.append(f"CHAOS case {case_dir}: no Ground/*.png masks; read without a liver mask.")
        return volume, warnings
    if len(mask_files) != len(series.files):
        raise InputError(
            f"CHAOS case {case_dir}: {len(mask_files)} masks in {ground} but {len(series.files)} DICOM slices in "
            f"{dicom_dir}; expected one liver_GT_NNN.png per DICOM file."
        )
    masks = [read_slice_image(p, as_mask=True) for p in mask_files]
    for path, m in zip(mask_files, masks, strict=True):
        if m.shape != series.slice_shape:
            raise InputError(f"CHAOS mask {path} has shape {m.shape}, expected the DICOM slice shape {series.slice_shape}.")
    stack = np.stack([masks[i] for i in series.geometry.order])
    return volume.with_mask(_to_lps(stack, series.geometry)), warnings

