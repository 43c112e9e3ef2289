"""Helpers shared by the tests: small HU volumes and a tiny U-Net (imported, not fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from liverrt.data.volume import Volume, default_affine
from liverrt.models.unet import UNet

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_volume(shape=(6, 48, 40), *, seed: int = 0, case_id: str = "vol", spacing=(2.5, 0.8, 0.8)) -> Volume:
    """A HU volume: air, a soft-tissue body and a brighter ellipse 'liver' on the image left."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.45 * w)) ** 2 <= 1
    image = np.full(shape, -1000, np.int16)
    mask = np.zeros(shape, bool)
    for k in range(d):
        r = 0.18 + 0.06 * np.sin(k / max(d - 1, 1) * np.pi)
        liver = ((yy - 0.45 * h) / (r * h)) ** 2 + ((xx - 0.35 * w) / (r * w * 1.2)) ** 2 <= 1
        sl = np.where(body, 30, -1000) + np.where(liver, 80, 0) + rng.normal(0, 5, (h, w))
        image[k] = np.clip(np.round(sl), -1024, 3071).astype(np.int16)
        mask[k] = liver & body
    return Volume(image=image, spacing=spacing, affine=default_affine(spacing), intensity="hu", mask=mask,
                  case_id=case_id, source="")


def tiny_unet(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(widths=(4, 8, 16), dropout=(0.0,) * 5).eval()


AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stored_pixels(k: int, rows: int, cols: int) -> np.ndarray:
    """Stored pixel values that identify slice k, row r and column c."""
    r, c = np.mgrid[0:rows, 0:cols]
    return (100 * k + 10 * r + c).astype(np.uint16)


def write_ct_slice(path: Path, pixels: np.ndarray, ipp, *, iop=AXIAL, spacing=(0.8, 0.7), series_uid: str,
                   study_uid: str | None = None, frame_uid: str | None = None, number: int = 1,
                   description: str = "", slope: float = 2.0, intercept: float = -1024.0) -> None:
    """One synthetic CT DICOM file (enough of the CT image and patient modules for readers and highdicom)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_uid or generate_uid()
    ds.SeriesDescription = description
    ds.PatientID = "synthetic"
    ds.PatientName = "Synthetic^Phantom"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Modality = "CT"
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 1.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_ct_series(folder: Path, ipps, names, *, iop=AXIAL, spacing=(0.8, 0.7), shape=(5, 6), description="",
                    slope: float = 2.0, intercept: float = -1024.0, pixels=None) -> str:
    """One file per position (one study, frame of reference and series); ``pixels[i]`` (default: values
    coding i, row and column) goes to ``names[i]``. Returns the SeriesInstanceUID."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    for i, (ipp, name) in enumerate(zip(ipps, names, strict=True)):
        px = stored_pixels(i, *shape) if pixels is None else pixels[i]
        write_ct_slice(folder / name, px, ipp, iop=iop, spacing=spacing, series_uid=series_uid, study_uid=study_uid,
                       frame_uid=frame_uid, number=i + 1, description=description, slope=slope, intercept=intercept)
    return series_uid


class Clock:
    """A clock for progress and ETA tests: time moves only when a test sets ``t``."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t
