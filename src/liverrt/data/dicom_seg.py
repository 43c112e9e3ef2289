"""Write a liver mask as a DICOM SEG that references its source CT series.

The mask is in liverrt's ``(D, H, W)`` LPS order (see
:mod:`liverrt.data.volume`) for the series :func:`~liverrt.data.dicom.read_dicom_series`
reads from the same folder. It is mapped back to the stored pixel grid of
each source instance by inverting that reader's reordering and
reorientation (the same geometry computed again from the folder), so frame
``i`` of the SEG lies on source instance ``i`` pixel for pixel, whatever the
file names, the slice order or the in-plane orientation of the series.

highdicom is an optional dependency (``pip install 'liverrt[dicom]'``); it is
imported only when a SEG is written (or read: :mod:`liverrt.data.dicom_seg_reader`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

import liverrt
from liverrt.atomic import atomic_path
from liverrt.data.dicom import SeriesGeometry, read_series
from liverrt.errors import BackendUnavailableError, InputError

#: SNOMED CT "Tissue" (segmented property category, CID 7150) and "Liver" (type, CID 7151).
TISSUE_CODE = ("85756007", "SCT", "Tissue")
LIVER_CODE = ("10200004", "SCT", "Liver")
SEG_SERIES_NUMBER = 9901


def load_highdicom():
    """The highdicom module, or a one-line :class:`BackendUnavailableError` saying how to install it."""
    try:
        import highdicom  # optional (liverrt[dicom]); only reading or writing a SEG needs it
    except ImportError as exc:
        raise BackendUnavailableError("Reading or writing a DICOM SEG needs highdicom, which is not installed: "
                                      "pip install 'liverrt[dicom]'") from exc
    return highdicom


def _from_lps(mask: np.ndarray, geometry: SeriesGeometry) -> np.ndarray:
    """Inverse of :func:`liverrt.data.dicom._to_lps`: a ``(D, H, W)`` LPS array -> the ``(k, r, c)`` stack.

    ``k`` indexes ``geometry.order`` (source instances in ascending position),
    ``r, c`` are the stored rows and columns of those instances.
    """
    transform = geometry.transform  # native axis i -> LPS axis transform[i, 0], flipped if transform[i, 1] < 0
    inverse = np.empty_like(transform)
    for axis in range(3):
        inverse[int(transform[axis, 0])] = (axis, transform[axis, 1])
    native = nib.orientations.apply_orientation(mask.transpose(2, 1, 0), inverse)  # (c, r, k)
    return np.ascontiguousarray(native.transpose(2, 1, 0))


def _clean_charset(ds):
    """Repair an empty SpecificCharacterSet (seen in GE exports), which highdicom refuses; in memory only.

    An empty value means the default repertoire: a lone empty value is dropped,
    an empty first value of several becomes its explicit name ``ISO 2022 IR 6``.
    """
    if "SpecificCharacterSet" not in ds:
        return ds
    value = ds.SpecificCharacterSet
    values = [str(v).strip() for v in ([value] if isinstance(value, str) else list(value))]
    if not any(values):
        del ds.SpecificCharacterSet
    elif not all(values):
        ds.SpecificCharacterSet = [v or "ISO 2022 IR 6" for v in values]
    return ds


def write_dicom_seg(
    mask: np.ndarray,
    series_folder: Path,
    out_path: Path,
    *,
    label: str = "Liver",
    algorithm: str = "liverrt U-Net",
    version: str = liverrt.__version__,
) -> Path:
    """Write ``mask`` as a binary DICOM SEG of the CT series in ``series_folder``; return ``out_path``.

    ``mask`` is ``(D, H, W)`` in the order of ``read_dicom_series(series_folder)``.
    The SEG references every source instance that volume was built from (a
    duplicate-position slice the reader dropped is not referenced), has one
    segment (category Tissue, type Liver, SNOMED CT), algorithm type
    AUTOMATIC with ``algorithm``/``version`` as its identification (family
    Artificial Intelligence), a new series and SOP instance UID, and omits
    empty frames. The file is written atomically next to ``out_path``; a source
    file is never overwritten.

    Raises:
        InputError: no CT series in the folder, a mask shape that is not the
            series' volume shape, or ``out_path`` naming a source file.
        BackendUnavailableError: highdicom is not installed.
    """
    series_folder, out_path = Path(series_folder), Path(out_path)
    hd = load_highdicom()
    series = read_series(series_folder, None, [])
    mask = np.asarray(mask)
    if mask.shape != series.volume.shape:
        raise InputError(
            f"DICOM SEG: mask of shape {mask.shape} for the series in {series_folder}; expected the series' "
            f"volume shape {series.volume.shape} (D, H, W as read_dicom_series returns it)."
        )
    order = [int(i) for i in series.geometry.order]
    sources = [series.files[i] for i in order]
    native = _from_lps(mask.astype(bool), series.geometry)  # frame k <-> sources[k]
    source_images = _source_images(sources, series_folder)
    description = _segment_description(hd, label, algorithm, version)
    seg = _segmentation(hd, source_images, native, description, series_folder,
                        label=label, algorithm=algorithm, version=version)
    with atomic_path(out_path, suffix=".dcm", protect=tuple(series.files)) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out_path


def _source_images(sources: list[Path], series_folder: Path) -> list:
    """The source instances as datasets, refused unless each has the UIDs a SEG must reference."""
    import pydicom  # slow to import (~0.3 s): loaded only when a SEG is written, not with every reader

    source_images = [_clean_charset(pydicom.dcmread(p)) for p in sources]
    missing = [a for a in ("StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID")
               if any(a not in ds for ds in source_images)]
    if missing:
        raise InputError(
            f"DICOM SEG: the series in {series_folder} lacks {', '.join(missing)}; expected complete CT image "
            "objects to reference."
        )
    return source_images


def _segment_description(hd, label: str, algorithm: str, version: str):
    """The one segment: category Tissue, type Liver (SNOMED CT), made by ``algorithm`` automatically."""
    from pydicom.sr.coding import Code  # slow to import, as above

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=Code(*TISSUE_CODE),
        segmented_property_type=Code(*LIVER_CODE),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm,
            family=Code("123110", "DCM", "Artificial Intelligence"),
            version=version,
        ),
    )


def _segmentation(hd, source_images: list, native: np.ndarray, description, series_folder: Path, *,
                  label: str, algorithm: str, version: str):
    """The SEG object: new series and SOP instance UIDs, empty frames omitted.

    highdicom's refusals of the source series become :class:`InputError`.
    """
    content_label = re.sub(r"[^A-Z0-9_]+", "_", label.upper()).strip("_")[:16] or "SEGMENTATION"  # a CS value
    try:
        with warnings.catch_warnings():
            # highdicom warns about source PatientNames such as "JANCT000"; they are copied as stored
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            return hd.seg.Segmentation(
                source_images=source_images,
                pixel_array=native,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description],
                series_instance_uid=hd.UID(),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="liverrt",
                manufacturer_model_name=algorithm[:64],
                software_versions=version[:64],
                device_serial_number="0",
                content_description=f"{label} segmentation by {algorithm} {version}"[:64],
                content_label=content_label,
                series_description=f"{label} ({algorithm})"[:64],
                omit_empty_frames=True,
            )
    except (ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"DICOM SEG: highdicom refused the series in {series_folder}: {exc}") from exc
