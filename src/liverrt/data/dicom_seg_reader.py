"""Read the liver of a DICOM SEG as a mask (``liverrt eval --gt seg.dcm`` or ``--pred seg.dcm``).

A SEG is a stack of frames, each with its own plane position; it usually
omits the frames of slices without liver, so it holds no complete voxel grid
of its own. Reading therefore has two steps:

1. :func:`read_seg_frames`: the frames of the liver segment and their
   geometry (ImagePositionPatient per frame, ImageOrientationPatient and
   PixelSpacing from the functional groups), checked as the DICOM series
   reader checks slices (:mod:`liverrt.data.dicom`);
2. putting them on a :class:`Grid`: either :func:`frames_grid`, the SEG's own
   grid (frames sorted along the slice normal, slice spacing from the frame
   positions, missing frames filled in as empty slices, then reoriented by
   the DICOM series reader's own code, so a SEG of a series lands on exactly
   the voxels of that series as :func:`~liverrt.data.dicom.read_dicom_series`
   reads it); or the grid of something else, e.g. a prediction made on the
   series (:func:`frames_on_grid` refuses a grid the frames do not lie on).

The liver segment is the one labelled ``Liver`` (or typed Liver, SNOMED CT
10200004 / SRT T-62000), else the one segment whose label, description or
type mentions the liver, else the only segment; anything else is refused with
the segment labels. BINARY frames are liver where non-zero, FRACTIONAL
frames where at least half the maximum, LABELMAP frames where they hold the
segment's number.

highdicom is an optional dependency (``pip install 'liverrt[dicom]'``).
"""

from __future__ import annotations

import copy
import logging
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverrt.data.dicom import (
    PLANE_IMAGE_CLASSES,
    looks_like_dicom,
    read_dicom_file,
    series_geometry,
    series_pixel_spacing,
    short_text,
    slice_positions,
)
from liverrt.data.dicom_seg import LIVER_CODE, load_highdicom
from liverrt.data.volume import LPS_TO_RAS
from liverrt.errors import InputError

log = logging.getLogger(__name__)

SEG_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
}
LIVER_CODES = (LIVER_CODE[0], "T-62000")  # SNOMED CT, and the SNOMED RT code older SEGs (dcmqi) carry
#: a frame lies on a grid when its first pixel and its last row and column fall within this of whole voxels
ON_GRID_TOLERANCE = 0.1


def is_dicom_file(path: Path) -> bool:
    """A file with a DICOM suffix (``.dcm``, ``.dicom``, ``.ima``) or the ``DICM`` marker."""
    path = Path(path)
    return path.is_file() and looks_like_dicom(path)


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid in liverrt's convention: ``affine`` maps ``(w, h, d)`` to RAS mm, ``shape`` is
    ``(D, H, W)``, ``spacing`` ``(dz, dy, dx)`` mm (see :mod:`liverrt.data.volume`)."""

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class SegFrames:
    """The stored frames of a SEG's liver segment: a mask not yet on a voxel grid.

    ``pixels`` ``(n, Rows, Columns)`` bool; ``headers`` one per frame, the
    frame's geometry as a slice header (ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing, Rows, Columns, SpacingBetweenSlices
    and SliceThickness when the SEG has them), as the series reader takes it.
    """

    path: Path
    segment: str  # the chosen segment's label
    pixels: np.ndarray
    headers: list
    frame_of_reference: str  # FrameOfReferenceUID, "" when absent

    @property
    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(orientation (6,), positions (n, 3) LPS mm, (dy, dx) mm)`` of the frames."""
        slices = [(self.path, h) for h in self.headers]
        iop, _, _, ipp = slice_positions(slices)
        return iop, ipp, np.array(series_pixel_spacing(self.path, slices, []))


def read_seg_frames(path: Path) -> SegFrames:
    """The liver frames of the DICOM SEG ``path`` (see the module docstring for which segment).

    Raises:
        InputError: the file is not DICOM, or is DICOM but not a SEG (a CT slice, say); the SEG cannot
            be decoded; no segment or several could be the liver; a frame without a plane position.
        BackendUnavailableError: highdicom is not installed.
    """
    path = Path(path)
    hd = load_highdicom()
    ds, why = read_dicom_file(path, with_pixels=True)
    if ds is None:
        raise InputError(f"Cannot read {path} as DICOM ({why}); expected a mask: a NIfTI, NRRD or MetaImage "
                         "file, or a DICOM SEG.")
    _require_seg(ds, path)
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            pixels = np.asarray(seg.pixel_array)
    except Exception as exc:  # highdicom and pydicom's decoders raise many types
        raise InputError(f"DICOM SEG {path} cannot be decoded ({type(exc).__name__}: {short_text(exc, 120)}); expected a "
                         "valid Segmentation object.") from exc
    pixels = pixels.reshape(-1, *pixels.shape[-2:])
    number, label = _liver_segment(seg, path)
    kind = str(ds.get("SegmentationType", "BINARY"))
    if kind == "LABELMAP":
        frames, masks = list(range(len(pixels))), pixels == number
    else:
        frames = [i for i in range(len(pixels)) if _segment_of(ds, i, path) == number]
        masks = pixels[frames]
        if kind == "FRACTIONAL":
            masks = masks >= float(ds.get("MaximumFractionalValue", 255) or 255) / 2
        masks = masks > 0
    if not frames:  # an empty liver beside other segments: their frames, emptied, still carry the geometry
        frames, masks = list(range(len(pixels))), np.zeros(pixels.shape, bool)
    headers = [_frame_header(ds, i, path) for i in frames]
    return SegFrames(path, label, np.ascontiguousarray(masks, dtype=bool), headers,
                     str(ds.get("FrameOfReferenceUID", "") or ""))


def _require_seg(ds, path: Path) -> None:
    """Refuse a DICOM object that is not a segmentation, saying what it is."""
    modality = str(ds.get("Modality", "") or "")
    sop = str(ds.get("SOPClassUID", "") or "")
    if modality == "SEG" and sop in SEG_CLASSES:
        return
    what = PLANE_IMAGE_CLASSES.get(sop) or SEG_CLASSES.get(sop) or f"SOP Class {sop or 'missing'}"
    raise InputError(f"{path} is a DICOM {what} object (Modality {modality or 'missing'}), not a segmentation; "
                     "expected a DICOM SEG (Modality SEG) of the liver, or a NIfTI, NRRD or MetaImage mask.")


def _segment_texts(description) -> tuple[str, list[str], bool]:
    """``(label, texts that may name the organ, whether it is exactly the liver)`` of a segment."""
    label = str(description.segment_label or "")
    kind = description.segmented_property_type
    texts = [label, str(description.get("SegmentDescription", "") or ""), str(kind.meaning or "")]
    exact = label.strip().lower() == "liver" or str(kind.value) in LIVER_CODES
    return label, texts, exact


def _liver_segment(seg, path: Path) -> tuple[int, str]:
    """``(segment number, label)`` of the liver segment (module docstring), or a one-line refusal."""
    numbers = [int(n) for n in seg.get_segment_numbers()]
    found = {n: _segment_texts(seg.get_segment_description(n)) for n in numbers}
    exact = [n for n in numbers if found[n][2]]
    named = [n for n in numbers if any("liver" in t.lower() for t in found[n][1])]
    chosen = exact if exact else named
    if len(chosen) == 1:
        return chosen[0], found[chosen[0]][0]
    if len(numbers) == 1:
        number, label = numbers[0], found[numbers[0]][0]
        log.warning("DICOM SEG %s: its only segment %r does not name the liver; read as the liver.", path, label)
        return number, label
    listed = ", ".join(f"{n} {found[n][0]!r}" for n in numbers[:8]) + (" ..." if len(numbers) > 8 else "")
    if not chosen:
        raise InputError(f"DICOM SEG {path}: no liver segment among its {len(numbers)} segments ({listed}); "
                         "expected one whose label, description or type names the liver, or a single segment.")
    raise InputError(f"DICOM SEG {path}: {len(chosen)} segments could be the liver ({listed}); expected exactly "
                     "one labelled 'Liver'.")


def _group(ds, i: int, keyword: str):
    """The first item of functional group ``keyword`` for frame ``i``: per-frame, else shared; None if absent."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", i), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            items = seq[index].get(keyword)
            if items:
                return items[0]
    return None


def _segment_of(ds, i: int, path: Path) -> int:
    item = _group(ds, i, "SegmentIdentificationSequence")
    if item is None or "ReferencedSegmentNumber" not in item:
        raise InputError(f"DICOM SEG {path}: frame {i + 1} has no ReferencedSegmentNumber (0062,000B); expected "
                         "each frame to name its segment.")
    return int(item.ReferencedSegmentNumber)


def _frame_header(ds, i: int, path: Path):
    """Frame ``i``'s geometry as a slice header (see :class:`SegFrames`)."""
    from pydicom.dataset import Dataset  # pydicom: slow to import (see dicom._dcmread)

    position = _group(ds, i, "PlanePositionSequence")
    if position is None or "ImagePositionPatient" not in position:
        raise InputError(f"DICOM SEG {path}: frame {i + 1} has no ImagePositionPatient (0020,0032) in its Plane "
                         "Position Sequence; expected a SEG of a CT series, each frame with its plane position.")
    header = Dataset()
    header.Rows, header.Columns = ds.Rows, ds.Columns
    header.ImagePositionPatient = position.ImagePositionPatient
    orientation = _group(ds, i, "PlaneOrientationSequence")
    if orientation is not None and "ImageOrientationPatient" in orientation:
        header.ImageOrientationPatient = orientation.ImageOrientationPatient
    measures = _group(ds, i, "PixelMeasuresSequence")
    for keyword in ("PixelSpacing", "SpacingBetweenSlices", "SliceThickness"):
        if measures is not None and keyword in measures:
            setattr(header, keyword, measures[keyword].value)
    return header


# ----------------------------------------------------------------------------- grids


def frames_grid(*segs: SegFrames) -> Grid:
    """The grid the frames of ``segs`` (one SEG, or two of the same series) span, in liverrt's convention.

    Frames are sorted along the slice normal; the slice spacing is the SEG's
    SpacingBetweenSlices when every gap between frames is a whole multiple of
    it, else the smallest gap when they all are of that; the planes in the
    gaps are added (empty). The grid is then built by the DICOM series
    reader's geometry code from these planes, as if they were the series'.
    """
    first = segs[0]
    for other in segs[1:]:
        _same_space(first, other)
    iop, _, _ = first.planes
    ipp = np.concatenate([s.planes[1] for s in segs])
    normal = np.cross(iop[:3], iop[3:])
    along = ipp @ (normal / np.linalg.norm(normal))
    order = np.argsort(along, kind="stable")
    keep = [int(order[0])]
    for i in order[1:]:
        if along[i] - along[keep[-1]] >= 1e-3:  # frames of several segments or SEGs share a plane
            keep.append(int(i))
    planes = _fill_gaps(first, ipp[keep], along[keep])
    template = first.headers[0]
    slices = []
    for position in planes:
        header = copy.deepcopy(template)  # Dataset.copy() would share the elements
        header.ImagePositionPatient = [float(v) for v in position]
        slices.append((first.path, header))
    warnings: list[str] = []
    geometry = series_geometry(first.path, slices, warnings)
    for w in warnings:
        log.warning("DICOM SEG %s", w)
    native = (int(template.Columns), int(template.Rows), len(planes))  # sizes of the (c, r, k) axes
    lps = [0, 0, 0]
    for axis in range(3):
        lps[int(geometry.transform[axis, 0])] = native[axis]
    return Grid(geometry.affine, (lps[2], lps[1], lps[0]), geometry.spacing)


def _same_space(a: SegFrames, b: SegFrames) -> None:
    """Two SEGs can share a grid: one frame of reference, orientation, pixel size and frame size."""
    (iop_a, _, px_a), (iop_b, _, px_b) = a.planes, b.planes
    problems = []
    if a.frame_of_reference and b.frame_of_reference and a.frame_of_reference != b.frame_of_reference:
        problems.append(f"FrameOfReferenceUID {a.frame_of_reference} vs {b.frame_of_reference}")
    if not np.allclose(iop_a, iop_b, atol=1e-3):
        problems.append(f"ImageOrientationPatient {iop_a.round(4).tolist()} vs {iop_b.round(4).tolist()}")
    if not np.allclose(px_a, px_b, rtol=1e-3):
        problems.append(f"PixelSpacing {px_a.tolist()} vs {px_b.tolist()}")
    if a.pixels.shape[1:] != b.pixels.shape[1:]:
        problems.append(f"frames of {a.pixels.shape[1:]} vs {b.pixels.shape[1:]} pixels")
    if problems:
        raise InputError(f"DICOM SEGs {a.path} and {b.path} are not of one series ({'; '.join(problems)}); "
                         "expected two SEGs of the same series to compare.")


def _fill_gaps(seg: SegFrames, ipp: np.ndarray, along: np.ndarray) -> np.ndarray:
    """The ``(m, 3)`` plane positions from the first frame to the last, one slice spacing apart."""
    if len(ipp) == 1:
        return ipp
    gaps = np.diff(along)
    declared = [float(seg.headers[0].get("SpacingBetweenSlices") or 0)]
    for step in [s for s in declared if s > 0] + [float(gaps.min())]:
        counts = gaps / step
        if np.all(np.abs(counts - np.round(counts)) < 0.05):
            break
    else:
        raise InputError(
            f"DICOM SEG {seg.path}: gaps of {gaps.min():.4g} to {gaps.max():.4g} mm between its frames are not "
            "whole multiples of one slice spacing; expected the frames of one evenly spaced series."
        )
    planes = [ipp[0]]
    for j, n in enumerate(np.round(counts).astype(int)):
        planes += [ipp[j] + (ipp[j + 1] - ipp[j]) * t / n for t in range(1, n + 1)]
    return np.array(planes)


def frames_on_grid(seg: SegFrames, grid: Grid, what: str) -> np.ndarray:
    """The ``grid.shape`` bool mask of the frames of ``seg`` placed on ``grid`` (``what`` names it in errors).

    Every frame must lie on the grid: its pixel rows and columns along two
    voxel axes with the grid's voxel size, its first pixel on a whole voxel
    (within :data:`ON_GRID_TOLERANCE` voxel over the frame), and its liver
    pixels inside the grid.
    """
    iop, ipp, (dy, dx) = seg.planes
    rows, cols = seg.pixels.shape[1:]
    to_voxel = np.linalg.inv(np.asarray(grid.affine, float))
    col_step = to_voxel[:3, :3] @ (LPS_TO_RAS @ (iop[:3] * dx))  # voxel (w, h, d) offset per column
    row_step = to_voxel[:3, :3] @ (LPS_TO_RAS @ (iop[3:] * dy))
    origins = (to_voxel[:3, :3] @ (LPS_TO_RAS @ ipp.T)).T + to_voxel[:3, 3]
    steps = np.round([col_step, row_step])
    error = (np.abs(origins - np.round(origins)).max() + np.abs(col_step - steps[0]).max() * max(cols - 1, 1)
             + np.abs(row_step - steps[1]).max() * max(rows - 1, 1))
    along_two_axes = (np.abs(steps).sum(axis=1) == 1).all() and np.abs(steps[0]) @ np.abs(steps[1]) == 0
    if error > ON_GRID_TOLERANCE or not along_two_axes:
        far = int(np.abs(origins - np.round(origins)).max(axis=1).argmax())
        raise InputError(
            f"DICOM SEG {seg.path}: its frames do not lie on the voxel grid of {what} (the frame at "
            f"{np.round(ipp[far], 3).tolist()} mm falls at voxel {np.round(origins[far], 2).tolist()}, one pixel "
            f"step at {np.round(col_step, 3).tolist()} voxels); expected a SEG of the series {what} is on (same "
            "plane positions, pixel size and orientation)."
        )
    out = np.zeros(grid.shape, bool)
    w_size, h_size, d_size = grid.shape[2], grid.shape[1], grid.shape[0]
    for k in range(len(seg.pixels)):
        r, c = np.nonzero(seg.pixels[k])
        voxel = np.round(origins[k]).astype(int) + np.outer(r, steps[1]).astype(int) + np.outer(c, steps[0]).astype(int)
        inside = ((voxel >= 0) & (voxel < [w_size, h_size, d_size])).all(axis=1)
        if not inside.all():
            raise InputError(
                f"DICOM SEG {seg.path}: {int((~inside).sum())} liver pixels of the frame at "
                f"{np.round(ipp[k], 3).tolist()} mm fall outside the grid of {what} (shape {grid.shape}); expected "
                "a SEG of the series it is on."
            )
        out[voxel[:, 2], voxel[:, 1], voxel[:, 0]] = True
    return out


def read_dicom_seg(path: Path, *, grid: Grid | None = None) -> tuple[np.ndarray, Grid, SegFrames]:
    """``(mask (D, H, W) bool, its grid, the frames)`` of the liver of a DICOM SEG.

    On ``grid`` when given (e.g. the read series' affine, shape and spacing),
    else on the SEG's own grid (:func:`frames_grid`).
    """
    frames = read_seg_frames(path)
    grid = frames_grid(frames) if grid is None else grid
    return frames_on_grid(frames, grid, "the given grid"), grid, frames
