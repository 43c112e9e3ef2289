"""Tiny inputs for the corpus (32-48 px, 4-8 slices), intact and damaged; nothing binary is shipped.

Every builder writes under the folder it is given and returns what it wrote. Completeness checks of the
outputs liverrt must write whole (``*_complete``) raise AssertionError naming what is missing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from liverrt_test_helpers import make_volume, write_ct_series
from PIL import Image

from liverrt.data.io import write_nifti, write_png_slices

SHAPE = (4, 32, 32)  # (D, H, W) of the small CT volumes


# ----------------------------------------------------------------------------- NIfTI


def ct_volume(case_id: str = "ct", shape=SHAPE, seed: int = 0):
    return make_volume(shape=shape, seed=seed, case_id=case_id)


def nifti_file(path: Path, shape=SHAPE, seed: int = 0, *, dtype=None, with_mask: Path | None = None) -> Path:
    """A small HU volume (and optionally its liver mask) as NIfTI."""
    vol = ct_volume(shape=shape, seed=seed)
    image = vol.image if dtype is None else vol.image.astype(dtype)
    write_nifti(image, vol.affine, path)
    if with_mask is not None:
        write_nifti(vol.mask, vol.affine, with_mask)
    return Path(path)


def nifti_case(root: Path, name: str, shape=SHAPE, seed: int = 0, *, mask: bool = False) -> Path:
    """``root/name/image.nii.gz`` (+ ``mask.nii.gz``): one case folder."""
    folder = Path(root) / name
    nifti_file(folder / "image.nii.gz", shape, seed, with_mask=folder / "mask.nii.gz" if mask else None)
    return folder


def raw_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    """A NIfTI written by nibabel directly (any array, any affine: for damaged headers and voxels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, np.eye(4) if affine is None else np.asarray(affine, float))
    nib.save(img, str(path))
    return path


def patch_nifti_header(path: Path, **fields) -> Path:
    """Set raw header fields of a (gzipped) NIfTI-1 file in place, bypassing nibabel's checks
    (``srow_z=[0, 0, 0, 0]``, ``qform_code=0``: a singular affine that nibabel would not write)."""
    import gzip
    import io

    path = Path(path)
    gz = path.name.endswith(".gz")
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw))
    for key, value in fields.items():
        header[key] = value
    raw = header.binaryblock + raw[len(header.binaryblock):]
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def float_ct(shape=SHAPE) -> np.ndarray:
    """A float32 HU array in NIfTI's (x, y, z) order."""
    return ct_volume(shape=shape).image.astype(np.float32).transpose(2, 1, 0).copy()


# ----------------------------------------------------------------------------- PNG/JPG


def grey_slices(n: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    img = ct_volume(shape=(n, size, size), seed=seed).image
    return np.clip((img.astype(np.float32) + 160) * (255 / 400), 0, 255).astype(np.uint8)


def png_folder(folder: Path, n: int = 4, size: int = 32, seed: int = 0, prefix: str = "slice") -> list[str]:
    names = tuple(f"{prefix}{k + 1}" for k in range(n))
    write_png_slices(grey_slices(n, size, seed), Path(folder), names)
    return list(names)


def mask_pngs(folder: Path, masks: np.ndarray, names) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in zip(names, masks, strict=True):
        Image.fromarray(np.where(m, 255, 0).astype(np.uint8)).save(folder / f"{name}.png")


# ----------------------------------------------------------------------------- DICOM


def dicom_series(folder: Path, n: int = 6, shape=(32, 32), *, prefix: str = "s", z0: float = 0.0,
                 dz: float = 2.5, description: str = "") -> list[Path]:
    """One CT series ``s000.dcm``.. in ``folder`` (axial, 0.8 mm pixels, ``dz`` mm apart)."""
    names = [f"{prefix}{k:03d}.dcm" for k in range(n)]
    write_ct_series(Path(folder), [(0.0, 0.0, z0 + dz * k) for k in range(n)], names, shape=shape,
                    spacing=(0.8, 0.8), description=description)
    return [Path(folder) / name for name in names]


def edit_dicom(path: Path, edit) -> Path:
    """Re-save one DICOM file after ``edit(dataset)``."""
    import pydicom

    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    return Path(path)


#: SNOMED CT codes of the segment labels :func:`dicom_seg` knows (others are typed "Tissue")
ORGAN_CODES = {"liver": ("10200004", "SCT", "Liver"), "spleen": ("78961009", "SCT", "Spleen"),
               "kidney": ("64033007", "SCT", "Kidney")}


def dicom_seg(folder: Path, out: Path, segments: dict[str, np.ndarray], *, kind: str = "BINARY") -> Path:
    """A DICOM SEG of the series in ``folder``, one segment per ``label: mask`` (``(D, H, W)`` in the order
    ``read_dicom_series(folder)`` reads), written with highdicom directly. ``kind``: ``BINARY`` (empty frames
    omitted), ``FRACTIONAL`` (0.9 in the mask, 0.1 elsewhere) or ``LABELMAP`` (masks must not overlap)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.coding import Code

    from liverrt.data.dicom import read_series
    from liverrt.data.dicom_seg import _from_lps

    series = read_series(Path(folder), None, [])
    sources = [pydicom.dcmread(series.files[int(i)]) for i in series.geometry.order]
    stack = np.stack([_from_lps(np.asarray(m, bool), series.geometry) for m in segments.values()], axis=-1)
    if kind == "FRACTIONAL":
        stack = np.where(stack, 0.9, 0.1).astype(np.float32)
    elif kind == "LABELMAP":
        stack = (stack * np.arange(1, stack.shape[-1] + 1)).sum(axis=-1)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=label, segmented_property_category=Code("85756007", "SCT", "Tissue"),
            segmented_property_type=Code(*ORGAN_CODES.get(label.lower(), ("85756007", "SCT", "Tissue"))),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for n, label in enumerate(segments, 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=stack if kind == "FRACTIONAL" else stack.astype(np.uint8),
        segmentation_type=getattr(hd.seg.SegmentationTypeValues, kind), segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test", manufacturer_model_name="test", software_versions="0", device_serial_number="0",
        omit_empty_frames=kind == "BINARY")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out, enforce_file_format=True)
    return Path(out)


def truncate(path: Path, keep: int) -> Path:
    """Cut a file to its first ``keep`` bytes (a negative ``keep`` drops that many from the end)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])
    return Path(path)


# ----------------------------------------------------------------------------- KITTI, CHAOS, LiTS, MSD, IRCADb

KITTI_LABELS = "0 0 0 background\n12 200 3 kidney\n250 50 83 liver\n"


def kitti_case(folder: Path, *, n: int = 6, size: int = 32, annotated=range(1, 5), label_colors: bool = True):
    """A CVAT KITTI 1.0 case: ``images/image1..n.png`` + ``masks/{label_colors.txt, default/semantic/}``.

    Returns ``(volume, stems)``: the liver masks of the phantom and the image stems.
    """
    vol = ct_volume(shape=(n, size, size))
    images, export = Path(folder) / "images", Path(folder) / "masks"
    sem = export / "default" / "semantic"
    images.mkdir(parents=True)
    sem.mkdir(parents=True)
    if label_colors:
        (export / "label_colors.txt").write_text(KITTI_LABELS)
    img8 = grey_slices(n, size)
    stems = [f"image{k + 1}" for k in range(n)]
    for k, stem in enumerate(stems):
        Image.fromarray(img8[k]).save(images / f"{stem}.png")
        if k in annotated:
            Image.fromarray(np.where(vol.mask[k], 2, 0).astype(np.uint8)).save(sem / f"{stem}.png")
    return vol, stems


def chaos_case(folder: Path, *, n: int = 6, masks: int | None = None, size: int = 32) -> Path:
    """A CHAOS CT case: ``DICOM_anon/`` + ``Ground/liver_GT_NNN.png`` (``masks`` of them; default ``n``)."""
    dicom_series(Path(folder) / "DICOM_anon", n, (size, size), prefix="i")
    vol = ct_volume(shape=(n, size, size))
    names = [f"liver_GT_{k:03d}" for k in range(masks if masks is not None else n)]
    mask_pngs(Path(folder) / "Ground", np.resize(vol.mask, (len(names), size, size)), names)
    return Path(folder)


def ircad_case(folder: Path, *, n: int = 6, mask_slices: int = 5) -> Path:
    """3D-IRCADb: ``PATIENT_DICOM/`` + ``MASKS_DICOM/liver/`` (``mask_slices`` of them: another grid)."""
    dicom_series(Path(folder) / "PATIENT_DICOM", n, prefix="image_")
    dicom_series(Path(folder) / "MASKS_DICOM" / "liver", mask_slices, prefix="image_")
    return Path(folder)


# ----------------------------------------------------------------------------- artifacts


def copy(src: Path, dst: Path) -> Path:
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if Path(src).is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)
    return dst


def forged_checkpoint(path: Path, base: Path | None = None, *, drop=(), **changes) -> Path:
    """A checkpoint dict (from ``base``, or a liverrt marker with nothing else) with keys changed/dropped."""
    import torch

    ckpt = torch.load(base, map_location="cpu", weights_only=True) if base else {
        "format": "liverrt.checkpoint", "format_version": 1}
    for key in drop:
        ckpt.pop(key, None)
    for key, value in changes.items():
        ckpt[key] = value
    torch.save(ckpt, path)
    return Path(path)


def onnx_with_metadata(src: Path, dst: Path, *, drop=(), **changes: str) -> Path:
    """A copy of an ONNX file with ``metadata_props`` changed (``liverrt_model`` -> ``liverrt.model``)."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    for key in drop:
        props.pop(key, None)
    for key, value in changes.items():
        props[key.replace("_", ".", 1)] = value
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return Path(dst)


def onnx_meta(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


class _Trap:
    """Unpickling this would create ``self.path``: the file's existence proves code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(path: Path, trap: Path, *, torch_format: bool = True) -> Path:
    """A checkpoint (torch zip, or a bare pickle) whose unpickling would create ``trap``."""
    import pickle

    payload = {"format": "liverrt.checkpoint", "format_version": 1, "kind": "unet", "evil": _Trap(str(trap))}
    if torch_format:
        import torch

        torch.save(payload, path)
    else:
        Path(path).write_bytes(pickle.dumps(payload, protocol=2))
    assert not Path(trap).exists()
    return Path(path)


def random_bytes(path: Path, n: int = 4096, seed: int = 0) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return Path(path)


# ----------------------------------------------------------------------------- output completeness


def infer_case_complete(out: Path, case: str, *, shape=None, png: list[str] | None = None):
    """A check that ``out/case`` is a whole inference result: mask.nii.gz (of ``shape``, 0/1) or one PNG
    mask per stem in ``png``, and no hidden entries."""

    def check() -> None:
        folder = Path(out) / case
        assert folder.is_dir(), f"{folder} was not written"
        hidden = [p.name for p in folder.rglob("*") if p.name.startswith(".") and p.name != ".liverrt-output.json"]
        assert not hidden, f"{folder} holds hidden entries {hidden}"
        if png is None:
            img = nib.load(str(folder / "mask.nii.gz"))
            data = np.asanyarray(img.dataobj)
            assert np.isfinite(data).all() and set(np.unique(data)) <= {0, 1}, f"{folder}/mask.nii.gz is not 0/1"
            if shape is not None:
                assert data.shape == tuple(shape), f"{folder}/mask.nii.gz has shape {data.shape}, expected {shape}"
        else:
            got = sorted(p.stem for p in (folder / "masks").glob("*.png"))
            assert got == sorted(png), f"{folder}/masks holds {got}, expected {sorted(png)}"
            for p in (folder / "masks").glob("*.png"):
                with Image.open(p) as im:
                    im.load()

    return check


def converted_case_complete(out: Path, case: str, *, shape=None, mask: bool | None = None):
    """A check that ``out/case/image.nii.gz`` (and ``mask.nii.gz`` if ``mask``) were written whole."""

    def check() -> None:
        folder = Path(out) / case
        assert (folder / "image.nii.gz").is_file(), f"{folder}/image.nii.gz was not written"
        data = np.asanyarray(nib.load(str(folder / "image.nii.gz")).dataobj)
        if shape is not None:
            assert data.shape == tuple(shape), f"{folder}/image.nii.gz has shape {data.shape}, expected {shape}"
        if mask:
            assert (folder / "mask.nii.gz").is_file(), f"{folder}/mask.nii.gz was not written"

    return check


def json_file(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*"))


def nifti_array(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


__all__ = [name for name in dir() if not name.startswith("_") and name not in ("annotations", "os")]
