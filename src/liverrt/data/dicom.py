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
unequal slice sizes, undecodable pixels, a malformed header element) raise
:class:`InputError` with a one-line message naming the file and the DICOM tag,
the value found and what was expected.

Which files of a series folder are read (sub-folders are not looked into):

- Ignored without a word: hidden files (``.DS_Store``, ``._IM1``), ``DICOMDIR``
  (an index of the media, not a slice), ``Thumbs.db``/``desktop.ini``, and
  files whose suffix names another format (:data:`SIDECAR_SUFFIXES`: notes
  such as ``.txt``/``.md``/``.json``/``.xml``, other image and volume formats
  such as ``.png``/``.nrrd``/``.nii.gz``) unless they carry the ``DICM``
  marker.
- A file that looks like DICOM (suffix ``.dcm``/``.dicom``/``.ima``, or
  ``DICM`` at byte 128) must be readable: a damaged or truncated one is an
  :class:`InputError` naming it, never a silently missing slice.
- Any other file (no suffix or an unknown one: DICOM files are often named
  ``IM0001`` or by UID) is read as DICOM without the preamble; if it does not
  parse, it is skipped with a warning that names it.
- DICOM objects without a slice position (a SEG, a report, a multi-frame
  object) belong to no slice and are skipped; an object with a position but
  no pixel data, or a CT/MR/PET image object without a position, is an error.
"""

from __future__ import annotations

import warnings as _warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from liverrt.data.io import natural_key, read_slice_image
from liverrt.data.volume import LPS_TO_RAS, Volume
from liverrt.errors import InputError

LPS = ("L", "P", "S")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
SIDECAR_SUFFIXES = (
    ".txt", ".md", ".json", ".xml", ".csv", ".html", ".htm", ".pdf", ".log", ".ini", ".yaml", ".yml",
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff",
    ".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".zip",
)
SIDECAR_NAMES = ("dicomdir", "thumbs.db", "desktop.ini")
PLANE_IMAGE_CLASSES = {  # SOP classes whose objects must have an ImagePositionPatient
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.128": "PET Image Storage",
}
GAP_TOLERANCE = 0.1  # a gap differing by more than 10 % from the median is reported
TILT_TOLERANCE_DEG = 0.1
_AXIAL_IOP = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])


def dicom_stem(path: Path) -> str:
    """File name without a DICOM suffix (``IM1.dcm`` -> ``IM1``); UID-like names (``1.2.3``) stay whole."""
    name = path.name
    for suffix in DICOM_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ----------------------------------------------------------------------------- header elements


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def short_text(text: object, limit: int = 60) -> str:
    text = _one_line(str(text))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tag(keyword: str) -> str:
    """``Rows (0028,0010)``."""
    from pydicom.datadict import tag_for_keyword  # pydicom: slow to import, see read_dicom_file

    tag = tag_for_keyword(keyword)
    return keyword if tag is None else f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _shown(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return repr(short_text(value))
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return short_text("[" + ", ".join(str(v) for v in value) + "]")  # type: ignore[union-attr]
    return short_text(value)


def _bad(path: Path, keyword: str, found: object, expected: str, *, shown: str | None = None) -> InputError:
    """The one-line error for a header element: file, tag, value found, what was expected."""
    return InputError(_one_line(f"{path}: {_tag(keyword)} is {shown or _shown(found)}; expected {expected}."))


def _value(ds: object, keyword: str, path: Path) -> object:
    """The value of ``keyword`` in ``ds``, None when absent or empty; an undecodable element is an InputError."""
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # pydicom warns about invalid values; the validators say more
            value = ds.get(keyword)  # type: ignore[attr-defined]
    except Exception as exc:  # pydicom raises several types for undecodable values
        raise InputError(_one_line(f"{path}: {_tag(keyword)} cannot be decoded ({short_text(exc)}); "
                                   "expected a valid DICOM value.")) from exc
    if value is None or (hasattr(value, "__len__") and len(value) == 0):  # type: ignore[arg-type]
        return None
    return value


def _numbers(ds: object, keyword: str, path: Path, count: int, expected: str) -> np.ndarray | None:
    """``count`` finite numbers from ``keyword``, None when absent or empty."""
    value = _value(ds, keyword, path)
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    try:
        numbers = np.array([float(v) for v in items], dtype=float)
    except (TypeError, ValueError):
        raise _bad(path, keyword, value, expected) from None
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise _bad(path, keyword, value, expected)
    return numbers


def _size_of(ds: object, path: Path) -> tuple[int, int]:
    """``(Rows, Columns)``: positive whole numbers."""
    size = []
    for keyword in ("Rows", "Columns"):
        value = _value(ds, keyword, path)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _bad(path, keyword, value, "a positive number of pixels")
        size.append(int(value))
    return size[0], size[1]


def _position_of(ds: object, path: Path) -> np.ndarray:
    """ImagePositionPatient: 3 finite numbers (LPS mm)."""
    expected = "3 numbers (x, y, z of the first pixel in mm)"
    ipp = _numbers(ds, "ImagePositionPatient", path, 3, expected)
    if ipp is None:
        raise _bad(path, "ImagePositionPatient", None, expected)
    return ipp


def _orientation(ds: object, path: Path) -> np.ndarray:
    """ImageOrientationPatient as a (6,) array of two unit vectors; axial when the element is absent."""
    expected = "6 numbers: two non-zero, perpendicular direction vectors"
    iop = _numbers(ds, "ImageOrientationPatient", path, 6, expected)
    if iop is None:
        return _AXIAL_IOP.copy()
    row, col = iop[:3], iop[3:]
    n_row, n_col = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    if n_row < 1e-6 or n_col < 1e-6 or abs(float(row @ col)) > 0.01 * n_row * n_col:
        raise _bad(path, "ImageOrientationPatient", iop, expected)
    return np.concatenate([row / n_row, col / n_col])


def _pixel_spacing_of(ds: object, path: Path) -> tuple[float, float] | None:
    """PixelSpacing ``(dy, dx)``: two positive numbers; None when absent."""
    expected = "2 positive numbers (row, column spacing in mm)"
    spacing = _numbers(ds, "PixelSpacing", path, 2, expected)
    if spacing is None:
        return None
    if np.any(spacing <= 0):
        raise _bad(path, "PixelSpacing", spacing, expected)
    return float(spacing[0]), float(spacing[1])


def _slice_step_of(ds: object, path: Path) -> float | None:
    """SpacingBetweenSlices, else SliceThickness (for a single slice); None when neither is positive."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        step = _numbers(ds, keyword, path, 1, "a number of mm")
        if step is not None and step[0] > 0:
            return float(step[0])
    return None


def _rescale_of(ds: object, path: Path) -> tuple[float, float]:
    """``(RescaleSlope, RescaleIntercept)``; 1 and 0 when absent."""
    slope = _numbers(ds, "RescaleSlope", path, 1, "one non-zero number")
    intercept = _numbers(ds, "RescaleIntercept", path, 1, "one number")
    if slope is not None and slope[0] == 0:
        raise _bad(path, "RescaleSlope", slope[0], "one non-zero number")
    return (1.0 if slope is None else float(slope[0])), (0.0 if intercept is None else float(intercept[0]))


def _pixel_layout_of(ds: object, path: Path, rows: int, cols: int) -> None:
    """One grey-scale frame of 8, 16 or 32 bits whose PixelData (when not compressed) has the size it should."""
    bits = _value(ds, "BitsAllocated", path)
    if bits not in (8, 16, 32):
        raise _bad(path, "BitsAllocated", bits, "8, 16 or 32")
    samples = _value(ds, "SamplesPerPixel", path)
    if samples not in (None, 1):
        raise _bad(path, "SamplesPerPixel", samples, "1 (grey-scale)")
    frames = _numbers(ds, "NumberOfFrames", path, 1, "1 (one slice per file)")
    if frames is not None and frames[0] != 1:
        raise _bad(path, "NumberOfFrames", frames[0], "1 (one slice per file)")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is not None and syntax.is_encapsulated:
        return  # compressed: the decoder checks the size
    data = _value(ds, "PixelData", path)
    size = len(data) if isinstance(data, bytes | bytearray) else 0
    expected = rows * cols * int(bits) // 8  # type: ignore[call-overload]
    if size not in (expected, expected + expected % 2):
        want = f"{expected} bytes ({rows}x{cols} pixels of {bits} bits, as Rows, Columns and BitsAllocated say)"
        raise _bad(path, "PixelData", size, want, shown=f"{size} bytes")


# ----------------------------------------------------------------------------- scanning


def _is_sidecar(path: Path) -> bool:
    """A file the folder scan ignores without a warning unless it carries the DICM marker (module docstring)."""
    name = path.name.lower()
    return name.endswith(SIDECAR_SUFFIXES)


def looks_like_dicom(path: Path) -> bool:
    """A DICOM suffix or the ``DICM`` marker at byte 128 (a file that cannot even be opened counts as DICOM)."""
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return True  # reading it again reports why it cannot be read


def holds_dicom(folder: Path, probe: int = 16) -> bool:
    """True when one of the first ``probe`` visible files of ``folder`` is DICOM (by suffix or the DICM marker).

    A quick test for finding series folders; unlike the scan, a file that cannot be opened does not count.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))[:probe]
    for path in files:
        if path.suffix.lower() in DICOM_SUFFIXES:
            return True
        try:
            with path.open("rb") as f:
                head = f.read(132)
        except OSError:
            continue
        if head[128:132] == b"DICM":
            return True
    return False


def _damage(ds: object) -> str | None:
    """Why a parsed dataset is not a whole DICOM object (pydicom stops quietly at the end of a cut file), or None."""
    from pydicom.datadict import keyword_for_tag  # pydicom: slow to import, see read_dicom_file
    from pydicom.dataelem import RawDataElement
    from pydicom.uid import UID

    if len(ds) == 0:  # type: ignore[arg-type]
        return "no data elements"
    last = max(ds.keys())  # type: ignore[attr-defined]
    elem = ds.get_item(last)  # type: ignore[attr-defined]
    if (isinstance(elem, RawDataElement) and isinstance(elem.value, bytes) and elem.length != 0xFFFFFFFF
            and len(elem.value) < elem.length):
        name = keyword_for_tag(last) or "element"
        return (f"the file ends inside {name} ({last.group:04X},{last.element:04X}) "
                f"after {len(elem.value)} of {elem.length} bytes")
    if "ImagePositionPatient" in ds:  # type: ignore[operator]
        return None
    meta = getattr(ds, "file_meta", {})
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # pydicom warns about an invalid UID
        try:
            sop = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or "")  # type: ignore[attr-defined]
            valid = UID(sop).is_valid
        except Exception:  # undecodable UID
            sop, valid = "", False
    if not valid:
        return "no ImagePositionPatient (0020,0032) and no valid SOP Class UID (0008,0016)"
    if sop in PLANE_IMAGE_CLASSES:
        return f"a {PLANE_IMAGE_CLASSES[sop]} object without ImagePositionPatient (0020,0032): truncated or incomplete"
    return None


def read_dicom_file(path: Path, *, with_pixels: bool) -> tuple[object | None, str]:
    """``(dataset, "")``, or ``(None, why)`` when ``path`` does not parse as a whole DICOM object.

    Files without the 128-byte preamble and ``DICM`` prefix (old exports) are
    retried with ``force=True``.
    """
    # pydicom takes ~0.3 s to import; every data source imports this module, few read DICOM
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=not with_pixels)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, stop_before_pixels=not with_pixels, force=True)
    except Exception as exc:  # damaged files raise many types
        return None, f"{type(exc).__name__}: {short_text(exc, 100)}"
    why = _damage(ds)
    return (None, why) if why else (ds, "")


@dataclass
class _Scan:
    images: list[tuple[Path, object]]  # DICOM image objects in natural file-name order
    others: int  # DICOM objects without a slice position (SEG, report, multi-frame)
    strays: list[str]  # names of non-DICOM files skipped with a warning


def _scan_folder(folder: Path, *, with_pixels: bool, warnings: list[str]) -> _Scan:
    """The DICOM image objects of ``folder`` (see the module docstring for which files are read).

    An image object has ImagePositionPatient (and, ``with_pixels``, PixelData).
    A file that looks like DICOM but does not read, and (``with_pixels``) an
    image object without pixel data, are :class:`InputError`; other non-DICOM
    files are skipped with a warning in ``warnings``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"DICOM folder {folder} does not exist; expected a folder with one DICOM series.")
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: natural_key(p.name))
    scan = _Scan([], 0, [])
    no_pixels: list[Path] = []
    for path in files:
        if path.name.startswith(".") or path.name.lower() in SIDECAR_NAMES:
            continue
        dicom_like = looks_like_dicom(path)
        if not dicom_like and _is_sidecar(path):
            continue
        ds, why = read_dicom_file(path, with_pixels=with_pixels)
        if ds is None:
            if dicom_like:
                raise InputError(_one_line(
                    f"{path} cannot be read as DICOM ({why}); expected every DICOM file of the series folder to be "
                    "readable: remove or replace it."
                ))
            scan.strays.append(path.name)
            warnings.append(f"{folder}: skipped {path.name}: not DICOM (no DICM marker, no DICOM suffix, does not parse).")
            continue
        if "ImagePositionPatient" not in ds:  # type: ignore[operator]
            scan.others += 1
        elif with_pixels and "PixelData" not in ds:  # type: ignore[operator]
            no_pixels.append(path)
        else:
            scan.images.append((path, ds))
    if no_pixels:
        raise InputError(_one_line(
            f"{no_pixels[0]}: PixelData (7FE0,0010) is missing ({len(no_pixels)} of "
            f"{len(no_pixels) + len(scan.images)} DICOM files with a slice position in {folder.name} have no pixel "
            "data); expected every slice file to hold its pixels."
        ))
    return scan


def _no_slices(folder: Path, scan: _Scan, expected: str) -> InputError:
    notes = []
    if scan.others:
        notes.append(f"{scan.others} DICOM objects without a slice position, e.g. SEG or multi-frame, were ignored")
    if scan.strays:
        notes.append(f"{len(scan.strays)} non-DICOM files were skipped, e.g. {scan.strays[0]}")
    extra = f" ({'; '.join(notes)})" if notes else ""
    return InputError(f"No DICOM image slices in {folder}{extra}; expected {expected}.")


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


def _series_orientation(slices: list[tuple[Path, object]]) -> np.ndarray:
    """The one ImageOrientationPatient of the series (every slice checked)."""
    first_path, first = slices[0]
    iop = _orientation(first, first_path)
    for path, ds in slices[1:]:
        if not np.allclose(_orientation(ds, path), iop, atol=1e-3):
            raise InputError(
                f"{path}: ImageOrientationPatient differs from {first_path.name}'s; expected one orientation per series."
            )
    return iop


def slice_positions(slices: list[tuple[Path, object]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ImageOrientationPatient, unit slice normal (LPS), each slice's ImagePositionPatient projected on it, and
    the ``(n, 3)`` positions."""
    iop = _series_orientation(slices)
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    ipp = np.array([_position_of(ds, path) for path, ds in slices])
    return iop, normal, ipp @ normal, ipp


def series_spacing(folder: Path) -> tuple[float, float, float]:
    """``(dz, dy, dx)`` in mm of the one image series in ``folder``.

    Files are taken in sorted file-name order (any names, with or without
    ``.dcm``); non-DICOM files and objects without ImagePositionPatient and
    PixelSpacing (a DICOM SEG, a report) are ignored (non-DICOM files without a
    warning: this reads headers only and has no warnings to return; a damaged
    DICOM file is still an :class:`InputError`). ``dy, dx`` come from
    PixelSpacing (row, column spacing). Slices are ordered by their
    ImagePositionPatient along the slice normal (file names need not follow
    position); ``dz`` is the distance between the first and the last position
    divided by the number of gaps, and gaps that differ by more than 10 % are
    refused (missing slices). A single slice uses SpacingBetweenSlices or
    SliceThickness. Reads headers only.
    """
    folder = Path(folder)
    if folder.is_dir():
        scan = _scan_folder(folder, with_pixels=False, warnings=[])
    else:
        scan = _Scan([], 0, [])
    spacings = [(p, ds, _pixel_spacing_of(ds, p)) for p, ds in scan.images]
    slices = [(p, ds) for p, ds, s in spacings if s is not None]
    if not slices:
        raise _no_slices(folder, scan, "files with ImagePositionPatient and PixelSpacing")
    _require_one_series(folder, slices)
    dy, dx = next(s for _, _, s in spacings if s is not None)
    if len(slices) == 1:
        dz = _slice_step_of(slices[0][1], slices[0][0])
        if dz is None:
            raise InputError(f"{slices[0][0]}: a single slice without SliceThickness; expected a slice spacing.")
        return dz, dy, dx
    _, _, positions, _ = slice_positions(slices)
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
class SeriesGeometry:
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


def series_geometry(folder: Path, slices: list[tuple[Path, object]], warnings: list[str]) -> SeriesGeometry:
    """Order, spacing and orientation of the name-ordered ``slices``; problems that leave a usable volume are warned."""
    names = [p.name for p, _ in slices]
    first_path, first = slices[0]
    iop, normal, positions, ipp = slice_positions(slices)
    dy, dx = series_pixel_spacing(folder, slices, warnings)
    order = _distinct_positions(folder, names, positions, warnings)
    if len(order) == 1:
        dz = _slice_step_of(first, first_path)
        if dz is None:
            dz = 1.0
            warnings.append(f"{folder}: a single slice without SliceThickness; assumed 1.0 mm.")
        step = normal * dz
    else:
        dz = _stack_spacing(folder, names, order, positions[order], warnings)
        step = _slice_step(folder, ipp[order[0]], ipp[order[-1]], normal, dz, warnings)

    native = np.eye(4)  # voxel (c, r, k) -> RAS
    native[:3, 0] = LPS_TO_RAS @ (iop[:3] * dx)
    native[:3, 1] = LPS_TO_RAS @ (iop[3:] * dy)
    native[:3, 2] = LPS_TO_RAS @ step
    native[:3, 3] = LPS_TO_RAS @ ipp[order[0]]
    current = nib.orientations.io_orientation(native)
    transform = nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(LPS))
    rows, cols = _size_of(first, first_path)
    affine = native @ nib.orientations.inv_ornt_aff(transform, (cols, rows, len(order)))
    native_spacing = (dx, dy, dz)  # per native axis (c, r, k)
    out = [0.0, 0.0, 0.0]
    for axis in range(3):
        out[int(transform[axis, 0])] = native_spacing[axis]
    return SeriesGeometry(
        order=order,
        transform=transform,
        affine=affine,
        spacing=(out[2], out[1], out[0]),
        slice_axis_is_d=int(transform[2, 0]) == 2,
        slice_flipped=bool(transform[2, 1] < 0),
    )


def series_pixel_spacing(folder: Path, slices: list[tuple[Path, object]], warnings: list[str]) -> tuple[float, float]:
    """``(dy, dx)``: the first slice's PixelSpacing (1 mm if absent), which every other slice must repeat."""
    first_path, first = slices[0]
    first_spacing = _pixel_spacing_of(first, first_path)
    if first_spacing is None:
        dy = dx = 1.0
        warnings.append(f"{folder}: no PixelSpacing in {first_path.name}; assumed 1.0 mm pixels.")
    else:
        dy, dx = first_spacing
    for path, ds in slices[1:]:
        spacing = _pixel_spacing_of(ds, path)
        if spacing is not None and not np.allclose(spacing, [dy, dx], rtol=1e-3):
            raise _bad(path, "PixelSpacing", spacing, f"{[dy, dx]} like {first_path.name} (one pixel size per series)")
    return dy, dx


def _distinct_positions(folder: Path, names: list[str], positions: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Slice indices in ascending position, a duplicate position keeping its first file (warned)."""
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
    return np.asarray(keep, dtype=int)


def _stack_spacing(folder: Path, names: list[str], order: np.ndarray, pos: np.ndarray, warnings: list[str]) -> float:
    """Slice spacing ``dz`` of two or more ordered slices at ``pos``: the median gap when gaps are uneven (warned)."""
    gaps = np.diff(pos)
    median = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - median) > GAP_TOLERANCE * median)
    if not uneven.size:
        return float(pos[-1] - pos[0]) / (len(order) - 1)
    shown = ", ".join(
        f"{gaps[j]:.3g} mm between {names[order[j]]} and {names[order[j + 1]]}" for j in uneven[:3]
    )
    more = f" and {uneven.size - 3} more" if uneven.size > 3 else ""
    warnings.append(
        f"{folder}: uneven slice gaps ({shown}{more}); expected {median:.3g} mm (the median). "
        "Missing slices? The volume uses the median spacing, so positions past a gap are approximate."
    )
    return median


def _slice_step(folder: Path, first: np.ndarray, last: np.ndarray, normal: np.ndarray, dz: float,
                warnings: list[str]) -> np.ndarray:
    """LPS offset from one slice to the next, moving ``dz`` along the normal.

    It follows the line from the first position to the last, so gantry tilt (warned) keeps its shear.
    """
    travel = last - first
    direction = travel / np.linalg.norm(travel)
    tilt = float(np.degrees(np.arccos(np.clip(abs(direction @ normal), 0.0, 1.0))))
    if tilt > TILT_TOLERANCE_DEG:
        warnings.append(
            f"{folder}: gantry tilt of {tilt:.2f} degrees (slice positions do not move along the slice normal); "
            "the affine keeps the sheared geometry, distances along slices are approximate."
        )
    return direction * dz / abs(direction @ normal)  # moves dz along the normal per slice


def _to_lps(stack: np.ndarray, geometry: SeriesGeometry) -> np.ndarray:
    """A ``(k, r, c)`` stack in geometric order -> the ``(D, H, W)`` LPS array."""
    lps = nib.orientations.apply_orientation(stack.transpose(2, 1, 0), geometry.transform)
    return np.ascontiguousarray(lps.transpose(2, 1, 0))


def _hu_slice(path: Path, ds: object) -> np.ndarray:
    try:
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            pixels = ds.pixel_array  # type: ignore[attr-defined]
    except Exception as exc:  # missing decoder plugins raise several types
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise InputError(_one_line(
            f"{path}: PixelData (7FE0,0010) cannot be decoded (transfer syntax {syntax}: {short_text(exc, 100)}); "
            "expected uncompressed DICOM, or install a decoder (pip install pylibjpeg pylibjpeg-libjpeg)."
        )) from exc
    if pixels.ndim != 2:
        raise _bad(path, "PixelData", None, "one grey-scale 2D slice", shown=f"of shape {pixels.shape}")
    slope, intercept = _rescale_of(ds, path)
    return pixels.astype(np.float64) * slope + intercept


def _hu_stack(slices: list[tuple[Path, object]], order: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HU slices in ``order`` as one ``(k, r, c)`` array: int16 when every value is an integer in range, else float32.

    Filled slice by slice, so memory stays at the size of the result.
    """
    out = np.empty((len(order), *shape), np.int16)
    for k, i in enumerate(order):
        hu = _hu_slice(*slices[int(i)])
        if out.dtype == np.int16 and not (
            np.all(hu == np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767
        ):
            out = out.astype(np.float32)
        out[k] = hu
    return out


@dataclass(frozen=True)
class SeriesData:
    """A read series: its volume, the geometry that ordered it, and its files (DICOM SEG references them)."""

    volume: Volume
    geometry: SeriesGeometry
    files: list[Path]  # name-ordered image files the geometry indexes
    slice_shape: tuple[int, int]  # (Rows, Columns) as stored


def read_series(folder: Path, case_id: str | None, warnings: list[str]) -> SeriesData:
    """Read the one CT series in ``folder`` (see the module docstring); warnings are appended to ``warnings``."""
    folder = Path(folder)
    scan = _scan_folder(folder, with_pixels=True, warnings=warnings)
    slices = scan.images
    if not slices:
        raise _no_slices(folder, scan, "single-frame DICOM files with ImagePositionPatient and PixelData")
    _require_one_series(folder, slices)
    first_path, first = slices[0]
    shape = _size_of(first, first_path)
    for path, ds in slices:
        size = _size_of(ds, path)
        if size != shape:
            raise InputError(f"{path}: Rows x Columns (0028,0010/0011) is {size[0]}x{size[1]}; expected "
                             f"{shape[0]}x{shape[1]} like {first_path.name}.")
        _pixel_layout_of(ds, path, *shape)
        _rescale_of(ds, path)
    modality = str(first.get("Modality", "CT") or "CT")
    if modality != "CT":
        warnings.append(f"{folder}: Modality is {modality}, not CT; values are rescaled as if they were HU.")
    geometry = series_geometry(folder, slices, warnings)
    if str(first.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
        warnings.append(f"{folder}: MONOCHROME1 pixels (white = low); values kept as stored after rescaling.")
    image = _to_lps(_hu_stack(slices, geometry.order, shape), geometry)
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
    return SeriesData(
        volume=volume,
        geometry=geometry,
        files=[p for p, _ in slices],
        slice_shape=shape,
    )


def read_dicom_series(folder: Path, *, case_id: str | None = None) -> tuple[Volume, list[str]]:
    """The one DICOM CT series in ``folder`` as a HU volume, and warnings about its geometry.

    Any file names are accepted (with or without ``.dcm``); non-image objects
    (a DICOM SEG, a report) are ignored, and so are non-DICOM files (with a
    warning naming them unless their suffix names another format; see the
    module docstring). Slices are
    ordered by ImagePositionPatient along the slice normal, not by file name.
    HU = stored value * RescaleSlope + RescaleIntercept, kept as int16 when
    integral, else float32. ``slice_names`` are the file names without a
    DICOM suffix, in the volume's (inferior to superior) order.

    Raises:
        InputError: no image slices, more than one series, slices of
            different sizes/orientations, a DICOM file that cannot be read, a
            malformed header element, or pixels that cannot be decoded.
    """
    warnings: list[str] = []
    series = read_series(Path(folder), case_id, warnings)
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
        InputError: the DICOM folder is missing or unreadable (as for
            :func:`read_dicom_series`), or the masks do not match the slices in
            number or size.
    """
    case_dir = Path(case_dir)
    dicom_dir = case_dir / "DICOM_anon"
    if not dicom_dir.is_dir():
        raise InputError(f"CHAOS case {case_dir}: no DICOM_anon folder; expected <id>/DICOM_anon/*.dcm and <id>/Ground/*.png.")
    warnings: list[str] = []
    series = read_series(dicom_dir, case_dir.name, warnings)
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

